//! NumPy `.npy` files to and from [`Tensor`]s (format versions 1.0, 2.0 and 3.0).
//!
//! Written here rather than taken from a crate: `npyz` parses the header with a general Python
//! literal parser (pulling in `pest` and big integers) and `ndarray-npy` needs `ndarray`; a
//! `.npy` header is a fixed, tiny dictionary, and the data is exactly our tensor layout.
//!
//! Supported dtypes: `b1`, `i1`..`i8`, `u1`..`u8`, `f2`, `f4`, `f8` in either byte order
//! (big-endian data is swapped), `S<n>` (bytes) and `U<n>` (UTF-32 text) as BYTES, and
//! `fortran_order: True` (reordered to row-major). Object arrays (`O`, which hold pickles) and
//! structured dtypes are refused. Writing produces little-endian, row-major files; BYTES become
//! `S<n>` (NumPy strips trailing NUL bytes from `S` elements, so they do not round-trip), and
//! BF16, which NumPy lacks, is widened to `f4` without loss.

use bytes::Bytes;
use nereid_protocol::{bytes_elements, element_count, encode_bytes_elements, DataType, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Upper bound on a header we accept; real ones are well under 1 KiB.
const MAX_HEADER: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid .npy data: {0}")]
pub struct NpyError(String);

fn err<T>(message: impl Into<String>) -> Result<T, NpyError> {
    Err(NpyError(message.into()))
}

/// How the elements of a file are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// A fixed-size numeric type; `swap` when the file is big-endian.
    Fixed { datatype: DataType, swap: bool },
    /// `S<n>`: `n` bytes per element, NUL-padded.
    Bytes(usize),
    /// `U<n>`: `n` UTF-32 code units per element, NUL-padded.
    Unicode { chars: usize, big_endian: bool },
}

impl Storage {
    fn item_size(self) -> Option<usize> {
        match self {
            Storage::Fixed { datatype, .. } => datatype.element_size(),
            Storage::Bytes(n) => Some(n),
            Storage::Unicode { chars, .. } => chars.checked_mul(4),
        }
    }
}

fn parse_descr(descr: &str) -> Result<Storage, NpyError> {
    let (order, rest) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let big_endian = order == '>';
    let kind = rest
        .chars()
        .next()
        .ok_or_else(|| NpyError("empty dtype".into()))?;
    let size: usize = rest[kind.len_utf8()..]
        .parse()
        .map_err(|_| NpyError(format!("unsupported dtype '{descr}'")))?;
    let fixed = |datatype: DataType| Storage::Fixed {
        datatype,
        swap: big_endian && size > 1,
    };
    Ok(match (kind, size) {
        ('b', 1) => fixed(DataType::Bool),
        ('u', 1) => fixed(DataType::Uint8),
        ('u', 2) => fixed(DataType::Uint16),
        ('u', 4) => fixed(DataType::Uint32),
        ('u', 8) => fixed(DataType::Uint64),
        ('i', 1) => fixed(DataType::Int8),
        ('i', 2) => fixed(DataType::Int16),
        ('i', 4) => fixed(DataType::Int32),
        ('i', 8) => fixed(DataType::Int64),
        ('f', 2) => fixed(DataType::Fp16),
        ('f', 4) => fixed(DataType::Fp32),
        ('f', 8) => fixed(DataType::Fp64),
        ('S' | 'a', n) => Storage::Bytes(n),
        ('U', n) => Storage::Unicode {
            chars: n,
            big_endian,
        },
        ('O', _) => return err("object arrays (dtype 'O') hold pickles and are not supported"),
        _ => return err(format!("unsupported dtype '{descr}'")),
    })
}

/// The three keys of a `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<i64>,
}

/// A value of the header's Python dict literal.
#[derive(Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<i64>),
}

/// A recursive-descent reader for exactly the literals `.npy` headers use.
struct LiteralParser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl LiteralParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), NpyError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            err(format!(
                "header: expected '{}' at offset {}",
                c as char, self.pos
            ))
        }
    }

    fn string(&mut self) -> Result<String, NpyError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return err(format!("header: expected a string at offset {}", self.pos)),
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos] != quote {
            if self.text[self.pos] == b'\\' {
                return err("header: escapes in strings are not supported");
            }
            self.pos += 1;
        }
        if self.pos == self.text.len() {
            return err("header: unterminated string");
        }
        let s = std::str::from_utf8(&self.text[start..self.pos])
            .map_err(|_| NpyError("header: string is not UTF-8".into()))?
            .to_string();
        self.pos += 1;
        Ok(s)
    }

    fn integer(&mut self) -> Result<i64, NpyError> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or("");
        let value = digits
            .parse::<i64>()
            .map_err(|_| NpyError(format!("header: expected a dimension at offset {start}")))?;
        // Python 2 wrote long integers with an `L` suffix.
        if self.text.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        Ok(value)
    }

    fn value(&mut self) -> Result<Literal, NpyError> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Literal::Str(self.string()?)),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    if self.peek() == Some(b')') {
                        self.pos += 1;
                        break;
                    }
                    dims.push(self.integer()?);
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b')') => {}
                        _ => return err("header: malformed shape tuple"),
                    }
                }
                Ok(Literal::Tuple(dims))
            }
            _ => {
                let rest = &self.text[self.pos..];
                for (word, value) in [(&b"True"[..], true), (b"False", false)] {
                    if rest.starts_with(word) {
                        self.pos += word.len();
                        return Ok(Literal::Bool(value));
                    }
                }
                err(format!("header: unsupported value at offset {}", self.pos))
            }
        }
    }

    fn header(mut self) -> Result<Header, NpyError> {
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        self.expect(b'{')?;
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            match (key.as_str(), self.value()?) {
                ("descr", Literal::Str(s)) => descr = Some(s),
                ("fortran_order", Literal::Bool(b)) => fortran_order = Some(b),
                ("shape", Literal::Tuple(t)) => shape = Some(t),
                (key, value) => return err(format!("header: unexpected {key}: {value:?}")),
            }
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return err("header: malformed dictionary"),
            }
        }
        if self.peek().is_some() {
            return err("header: trailing characters after the dictionary");
        }
        match (descr, fortran_order, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header {
                descr,
                fortran_order,
                shape,
            }),
            _ => err("header: 'descr', 'fortran_order' and 'shape' are all required"),
        }
    }
}

/// Reads a `.npy` file into a tensor named `name`.
pub fn read_npy(data: &[u8], name: &str) -> Result<Tensor, NpyError> {
    if data.len() < MAGIC.len() + 4 || !data.starts_with(MAGIC) {
        return err("not a .npy file (missing the \\x93NUMPY magic)");
    }
    let major = data[6];
    let (header_len, header_start) = match major {
        1 => (usize::from(u16::from_le_bytes([data[8], data[9]])), 10),
        2 | 3 => {
            if data.len() < 12 {
                return err("truncated header length");
            }
            let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        v => return err(format!("unsupported format version {v}.{}", data[7])),
    };
    if header_len > MAX_HEADER || data.len() < header_start + header_len {
        return err("truncated header");
    }
    let header = LiteralParser {
        text: &data[header_start..header_start + header_len],
        pos: 0,
    }
    .header()?;
    let storage = parse_descr(&header.descr)?;
    let count = element_count(name, &header.shape).map_err(|e| NpyError(e.message))?;
    let item = storage
        .item_size()
        .ok_or_else(|| NpyError("element size overflows".into()))?;
    let expected = count
        .checked_mul(item)
        .ok_or_else(|| NpyError("data size overflows".into()))?;
    let body = &data[header_start + header_len..];
    if body.len() != expected {
        return err(format!(
            "expected {expected} data bytes for shape {:?} of '{}', found {}",
            header.shape,
            header.descr,
            body.len()
        ));
    }
    let body = if header.fortran_order && header.shape.len() > 1 {
        to_row_major(body, &header.shape, item)
    } else {
        body.to_vec()
    };
    let (datatype, bytes) = match storage {
        Storage::Fixed { datatype, swap } => {
            let mut body = body;
            if swap {
                for chunk in body.chunks_exact_mut(item) {
                    chunk.reverse();
                }
            }
            (datatype, Bytes::from(body))
        }
        Storage::Bytes(n) => {
            let elements = (0..count).map(|i| {
                let e = &body[i * n..(i + 1) * n];
                let end = e.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
                &e[..end]
            });
            (DataType::Bytes, encode_bytes_elements(elements))
        }
        Storage::Unicode { chars, big_endian } => {
            let mut elements = Vec::with_capacity(count);
            for i in 0..count {
                let e = &body[i * chars * 4..(i + 1) * chars * 4];
                let mut s = String::new();
                for unit in e.chunks_exact(4) {
                    let unit = [unit[0], unit[1], unit[2], unit[3]];
                    let code = if big_endian {
                        u32::from_be_bytes(unit)
                    } else {
                        u32::from_le_bytes(unit)
                    };
                    if code == 0 {
                        break;
                    }
                    s.push(char::from_u32(code).ok_or_else(|| {
                        NpyError(format!("invalid code point {code:#x} in a 'U' element"))
                    })?);
                }
                elements.push(s);
            }
            (DataType::Bytes, encode_bytes_elements(elements))
        }
    };
    Ok(Tensor::new(name, datatype, header.shape, bytes))
}

/// Reorders column-major elements of `item` bytes into row-major order.
fn to_row_major(data: &[u8], shape: &[i64], item: usize) -> Vec<u8> {
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let count: usize = dims.iter().product();
    // Column-major strides, in elements.
    let mut strides = vec![1usize; dims.len()];
    for i in 1..dims.len() {
        strides[i] = strides[i - 1] * dims[i - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; dims.len()];
    for _ in 0..count {
        let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&data[offset * item..(offset + 1) * item]);
        // Advance the row-major multi-index (last dimension fastest).
        for d in (0..dims.len()).rev() {
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Writes a tensor as a little-endian, row-major `.npy` file.
pub fn write_npy(tensor: &Tensor) -> Result<Vec<u8>, NpyError> {
    crate::check_tensor(tensor).map_err(NpyError)?;
    let (descr, data): (String, std::borrow::Cow<'_, [u8]>) = match tensor.datatype {
        DataType::Bool => ("|b1".into(), tensor.data[..].into()),
        DataType::Uint8 => ("|u1".into(), tensor.data[..].into()),
        DataType::Int8 => ("|i1".into(), tensor.data[..].into()),
        DataType::Uint16 => ("<u2".into(), tensor.data[..].into()),
        DataType::Uint32 => ("<u4".into(), tensor.data[..].into()),
        DataType::Uint64 => ("<u8".into(), tensor.data[..].into()),
        DataType::Int16 => ("<i2".into(), tensor.data[..].into()),
        DataType::Int32 => ("<i4".into(), tensor.data[..].into()),
        DataType::Int64 => ("<i8".into(), tensor.data[..].into()),
        DataType::Fp16 => ("<f2".into(), tensor.data[..].into()),
        DataType::Fp32 => ("<f4".into(), tensor.data[..].into()),
        DataType::Fp64 => ("<f8".into(), tensor.data[..].into()),
        DataType::Bf16 => {
            let wide: Vec<u8> = tensor
                .data
                .chunks_exact(2)
                .flat_map(|c| {
                    half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]]))
                        .to_f32()
                        .to_le_bytes()
                })
                .collect();
            ("<f4".into(), wide.into())
        }
        DataType::Bytes => {
            let elements: Vec<&[u8]> = bytes_elements(&tensor.data)
                .collect::<Result<_, ()>>()
                .map_err(|()| NpyError("malformed BYTES tensor".into()))?;
            let width = elements.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
            let mut out = Vec::with_capacity(width * elements.len());
            for e in elements {
                out.extend_from_slice(e);
                out.resize(out.len() + width - e.len(), 0);
            }
            (format!("|S{width}"), out.into())
        }
    };
    let dims: Vec<String> = tensor.shape.iter().map(i64::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a 64-byte boundary, as NumPy does; the header ends in '\n'.
    let prefix = if header.len() + 11 < 1 << 16 { 10 } else { 12 };
    let total = (prefix + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - prefix - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(MAGIC);
    if prefix == 10 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.save(f, np.arange(6, dtype='<f4').reshape(2, 3))`, byte for byte.
    fn numpy_f4() -> Vec<u8> {
        let mut file = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
        while header.len() < 117 {
            header.push(' ');
        }
        header.push('\n');
        file.extend(header.as_bytes());
        for v in 0..6 {
            file.extend((v as f32).to_le_bytes());
        }
        file
    }

    #[test]
    fn reads_numpy_output_and_writes_it_back_identically() {
        let file = numpy_f4();
        let t = read_npy(&file, "x").unwrap();
        assert_eq!(t.datatype, DataType::Fp32);
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.to_vec::<f32>(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(write_npy(&t).unwrap(), file);
    }

    #[test]
    fn round_trips_every_numeric_type_and_scalars() {
        for dt in DataType::ALL {
            let Some(size) = dt.element_size() else {
                continue;
            };
            if dt == DataType::Bf16 {
                continue;
            }
            for shape in [vec![], vec![3], vec![2, 0], vec![1, 2, 2]] {
                let n: i64 = shape.iter().product();
                let data: Vec<u8> = (0..n as usize * size).map(|i| (i % 2) as u8).collect();
                let t = Tensor::new("t", dt, shape.clone(), Bytes::from(data));
                let file = write_npy(&t).unwrap();
                assert_eq!(file.len() % 64, (t.data.len()) % 64, "{dt} {shape:?}");
                assert_eq!(read_npy(&file, "t").unwrap(), t, "{dt} {shape:?}");
            }
        }
    }

    #[test]
    fn bf16_is_widened_to_f4() {
        let t = Tensor::new(
            "b",
            DataType::Bf16,
            vec![2],
            Bytes::copy_from_slice(&[0x80, 0x3f, 0x00, 0xc0]),
        );
        let back = read_npy(&write_npy(&t).unwrap(), "b").unwrap();
        assert_eq!(back.datatype, DataType::Fp32);
        assert_eq!(back.to_vec::<f32>(), vec![1.0, -2.0]);
    }

    #[test]
    fn strings() {
        let t = Tensor::new(
            "s",
            DataType::Bytes,
            vec![3],
            encode_bytes_elements(["ab", "", "xyz"]),
        );
        let file = write_npy(&t).unwrap();
        assert!(std::str::from_utf8(&file[10..]).unwrap().contains("'|S3'"));
        assert_eq!(read_npy(&file, "s").unwrap(), t);

        // np.array(['hé', 'x']) is '<U2'.
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<U2', 'fortran_order': False, 'shape': (2,), }\n";
        file.extend((header.len() as u16).to_le_bytes());
        file.extend(header.as_bytes());
        for c in ['h', 'é', 'x', '\0'] {
            file.extend((c as u32).to_le_bytes());
        }
        let t = read_npy(&file, "u").unwrap();
        assert_eq!(t.data, encode_bytes_elements(["hé", "x"]));
    }

    #[test]
    fn big_endian_and_fortran_order() {
        let mut file = b"\x93NUMPY\x02\x00".to_vec();
        let header = "{\"descr\": \">i2\", \"fortran_order\": True, \"shape\": (2L, 3L)}\n";
        file.extend((header.len() as u32).to_le_bytes());
        file.extend(header.as_bytes());
        // Column-major [[1,2,3],[4,5,6]] is 1,4,2,5,3,6.
        for v in [1i16, 4, 2, 5, 3, 6] {
            file.extend(v.to_be_bytes());
        }
        let t = read_npy(&file, "x").unwrap();
        assert_eq!(t.datatype, DataType::Int16);
        assert_eq!(t.to_vec::<i16>(), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn refuses_bad_files() {
        let good = numpy_f4();
        let mut wrong_magic = good.clone();
        wrong_magic[1] = b'X';
        let mut object = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }\n";
        object.extend((header.len() as u16).to_le_bytes());
        object.extend(header.as_bytes());
        object.extend([0; 8]);
        let header_of = |h: &str| {
            let mut f = b"\x93NUMPY\x01\x00".to_vec();
            f.extend((h.len() as u16).to_le_bytes());
            f.extend(h.as_bytes());
            f
        };
        for (what, file) in [
            ("truncated data", good[..good.len() - 1].to_vec()),
            ("extra data", [good.clone(), vec![0]].concat()),
            ("magic", wrong_magic),
            ("empty", vec![]),
            ("object", object),
            ("version", [&b"\x93NUMPY\x09\x00\x00\x00"[..]].concat()),
            ("header length", header_of("{'descr'")[..12].to_vec()),
            (
                "missing key",
                header_of("{'descr': '<f4', 'shape': (1,)}\n"),
            ),
            (
                "negative",
                header_of("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}\n"),
            ),
            (
                "structured",
                header_of("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}\n"),
            ),
            (
                "trailing",
                header_of("{'descr': '<f4', 'fortran_order': False, 'shape': ()} x\n"),
            ),
            (
                "dtype",
                header_of("{'descr': '<c8', 'fortran_order': False, 'shape': ()}\n"),
            ),
        ] {
            assert!(read_npy(&file, "x").is_err(), "{what} was accepted");
        }
    }
}
