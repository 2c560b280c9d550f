//! [`Tensor`]: a named, shaped, typed buffer.
//!
//! Every datatype is held the way it travels in binary form: fixed-size elements as little-endian,
//! row-major bytes; BYTES elements as a 4-byte little-endian length followed by the bytes. One
//! representation means binary HTTP bodies and gRPC `raw_*_contents` are sliced (`Bytes`), never
//! converted, and batching is a concatenation.
//!
//! Between the steps of an ensemble that run on the same GPU, a tensor may instead live in device
//! memory ([`Tensor::device`], same bytes, same layout): the producing step leaves it there and
//! the consuming step reads it there. Such a tensor never leaves the server: anything that needs
//! the bytes on the host calls [`Tensor::into_host`].

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DataType, Error, Result};

#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// The elements, on the host. Empty while the tensor is on a device.
    pub data: Bytes,
    /// The elements in device memory instead of `data`.
    pub device: Option<Arc<dyn DeviceData>>,
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.datatype == other.datatype
            && self.shape == other.shape
            && self.data == other.data
            && match (&self.device, &other.device) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// A tensor's bytes in accelerator memory, in the host layout. Implemented by the GPU backend;
/// the scheduler only slices, concatenates and downloads them.
pub trait DeviceData: Send + Sync + fmt::Debug {
    /// The CUDA device ordinal the memory is on.
    fn ordinal(&self) -> usize;
    /// Length in bytes.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes `range` of this memory (no copy).
    fn slice(&self, range: Range<usize>) -> Arc<dyn DeviceData>;
    /// `self` followed by `rest` (all on this device), in new device memory.
    fn concat(&self, rest: &[Arc<dyn DeviceData>]) -> Result<Arc<dyn DeviceData>>;
    /// A host copy.
    fn to_host(&self) -> Result<Bytes>;
    /// For the backend that made it, to reach its own type.
    fn as_any(&self) -> &dyn Any;
}

/// Number of elements of `shape`, refusing negative dimensions and overflow.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize> {
    let mut count: usize = 1;
    for &dim in shape {
        let dim = usize::try_from(dim).map_err(|_| {
            Error::invalid_arg(format!(
                "invalid shape for input '{name}': dimension {dim} is negative"
            ))
        })?;
        count = count.checked_mul(dim).filter(|c| *c <= i64::MAX as usize).ok_or_else(|| {
            Error::invalid_arg(format!(
                "invalid shape for input '{name}': shape {} causes total element count to exceed maximum size of {}",
                shape_string(shape),
                i64::MAX
            ))
        })?;
    }
    Ok(count)
}

/// `[1,16]`, the way Triton prints shapes in messages.
pub fn shape_string(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// Iterates the elements of a length-prefixed BYTES buffer; yields an error on a truncated one.
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = Result<&[u8], ()>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 4 {
            rest = &[];
            return Some(Err(()));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() - 4 < len {
            rest = &[];
            return Some(Err(()));
        }
        let element = &rest[4..4 + len];
        rest = &rest[4 + len..];
        Some(Ok(element))
    })
}

/// Counts the elements of a BYTES buffer, `None` if it is malformed.
pub fn count_bytes_elements(data: &[u8]) -> Option<usize> {
    let mut count = 0;
    for element in bytes_elements(data) {
        element.ok()?;
        count += 1;
    }
    Some(count)
}

/// Serialises strings into the length-prefixed BYTES layout.
pub fn encode_bytes_elements<I, B>(elements: I) -> Bytes
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let mut out = BytesMut::new();
    for element in elements {
        let element = element.as_ref();
        out.put_u32_le(element.len() as u32);
        out.put_slice(element);
    }
    out.freeze()
}

impl Tensor {
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>, data: Bytes) -> Self {
        Tensor {
            name: name.into(),
            datatype,
            shape,
            data,
            device: None,
        }
    }

    /// A tensor whose elements are in device memory.
    pub fn on_device(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<i64>,
        device: Arc<dyn DeviceData>,
    ) -> Self {
        Tensor {
            name: name.into(),
            datatype,
            shape,
            data: Bytes::new(),
            device: Some(device),
        }
    }

    /// Size of the elements in bytes, wherever they are.
    pub fn byte_len(&self) -> usize {
        match &self.device {
            Some(d) => d.len(),
            None => self.data.len(),
        }
    }

    /// The tensor with its elements on the host (a download when on a device).
    pub fn into_host(mut self) -> Result<Self> {
        if let Some(device) = self.device.take() {
            self.data = device.to_host()?;
        }
        Ok(self)
    }

    /// An FP32 tensor from values (little-endian on every supported target).
    pub fn from_f32(name: impl Into<String>, shape: Vec<i64>, values: &[f32]) -> Self {
        Self::new(
            name,
            DataType::Fp32,
            shape,
            Bytes::copy_from_slice(bytemuck::cast_slice(values)),
        )
    }

    /// Elements implied by the shape.
    pub fn element_count(&self) -> Result<usize> {
        element_count(&self.name, &self.shape)
    }

    /// Bytes the shape implies for a fixed-size datatype (`None` for BYTES), refusing overflow.
    pub fn expected_byte_size(&self, model: &str) -> Result<Option<usize>> {
        let count = self.element_count()?;
        let Some(size) = self.datatype.element_size() else {
            return Ok(None);
        };
        count
            .checked_mul(size)
            .filter(|b| *b <= i64::MAX as usize)
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_arg(format!(
                    "byte size overflow for input '{}' for model '{model}'",
                    self.name
                ))
            })
    }

    /// Checks that the buffer holds exactly the elements the shape says (Triton's messages,
    /// which name the model).
    pub fn check_byte_size(&self, model: &str) -> Result<()> {
        let name = &self.name;
        if let Some(bytes) = self.expected_byte_size(model)? {
            if self.byte_len() != bytes {
                return Err(Error::invalid_arg(format!(
                    "input byte size mismatch for input '{name}' for model '{model}'. Expected {bytes}, got {}",
                    self.byte_len()
                )));
            }
            return Ok(());
        }
        if self.device.is_some() {
            return Err(Error::internal(format!(
                "BYTES input '{name}' for model '{model}' is in device memory. This is a bug."
            )));
        }
        let expected = self.element_count()?;
        match count_bytes_elements(&self.data) {
            Some(found) if found == expected => Ok(()),
            Some(found) if found < expected => Err(Error::invalid_arg(format!(
                "expected {expected} string elements for inference input '{name}' for model '{model}', got {found}"
            ))),
            // Triton stops counting one past the expected number.
            Some(_) => Err(Error::invalid_arg(format!(
                "unexpected number of string elements {} for inference input '{name}' for model '{model}', expecting {expected}",
                expected + 1
            ))),
            None => Err(Error::invalid_arg(format!(
                "element byte size indicator exceeds the end of the buffer for inference input '{name}' for model '{model}'"
            ))),
        }
    }

    /// The elements as `T`, copied out so that alignment never matters.
    pub fn to_vec<T: bytemuck::Pod>(&self) -> Vec<T> {
        bytemuck::pod_collect_to_vec(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_elements_and_rejects_overflow() {
        assert_eq!(element_count("x", &[2, 3, 4]).unwrap(), 24);
        assert_eq!(element_count("x", &[]).unwrap(), 1);
        assert_eq!(element_count("x", &[0, 5]).unwrap(), 0);
        let err = element_count("x", &[i64::MAX, 4]).unwrap_err();
        assert!(
            err.message.contains("exceed maximum size"),
            "{}",
            err.message
        );
        assert!(element_count("x", &[-1]).is_err());
    }

    #[test]
    fn bytes_layout_round_trips() {
        let data = encode_bytes_elements(["", "abc", "é"]);
        assert_eq!(&data[..4], &[0, 0, 0, 0]);
        let back: Vec<&[u8]> = bytes_elements(&data).map(|e| e.unwrap()).collect();
        assert_eq!(back, vec![&b""[..], b"abc", "é".as_bytes()]);
        assert_eq!(count_bytes_elements(&data), Some(3));
    }

    #[test]
    fn truncated_bytes_buffer_is_detected() {
        let data = encode_bytes_elements(["hello"]);
        assert_eq!(count_bytes_elements(&data[..6]), None);
        assert_eq!(count_bytes_elements(&data[..2]), None);
    }

    #[test]
    fn byte_size_check() {
        let t = Tensor::from_f32("x", vec![1, 3], &[1.0, 2.0, 3.0]);
        t.check_byte_size("m").unwrap();
        let short = Tensor::new("x", DataType::Fp32, vec![1, 4], t.data.clone());
        assert!(short
            .check_byte_size("m")
            .unwrap_err()
            .message
            .contains("input byte size mismatch"));
        let strings = Tensor::new(
            "s",
            DataType::Bytes,
            vec![2],
            encode_bytes_elements(["a", "b"]),
        );
        strings.check_byte_size("m").unwrap();
        let wrong = Tensor::new("s", DataType::Bytes, vec![3], strings.data.clone());
        assert!(wrong
            .check_byte_size("m")
            .unwrap_err()
            .message
            .starts_with("expected 3 string elements"));
    }

    #[test]
    fn typed_view() {
        let t = Tensor::from_f32("x", vec![2], &[1.5, -2.0]);
        assert_eq!(t.to_vec::<f32>(), vec![1.5, -2.0]);
    }
}
