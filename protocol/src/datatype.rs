//! Tensor element types: the wire strings of the v2 protocol (`"FP32"`) and the `TYPE_*` enum of
//! `config.pbtxt`, which name the same set (except that `TYPE_STRING` is `BYTES` on the wire).

use std::fmt;

use crate::inference;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's datatype string.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a protocol datatype string; `None` for anything else.
    pub fn from_wire(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|dt| dt.as_str() == name)
    }

    /// Bytes per element; `None` for BYTES, whose elements are length-prefixed.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }

    /// Maps a `config.pbtxt` `data_type`; `None` for `TYPE_INVALID` and unknown values.
    pub fn from_config(value: i32) -> Option<DataType> {
        use inference::DataType as C;
        Some(match C::try_from(value).ok()? {
            C::TypeInvalid => return None,
            C::TypeBool => DataType::Bool,
            C::TypeUint8 => DataType::Uint8,
            C::TypeUint16 => DataType::Uint16,
            C::TypeUint32 => DataType::Uint32,
            C::TypeUint64 => DataType::Uint64,
            C::TypeInt8 => DataType::Int8,
            C::TypeInt16 => DataType::Int16,
            C::TypeInt32 => DataType::Int32,
            C::TypeInt64 => DataType::Int64,
            C::TypeFp16 => DataType::Fp16,
            C::TypeFp32 => DataType::Fp32,
            C::TypeFp64 => DataType::Fp64,
            C::TypeString => DataType::Bytes,
            C::TypeBf16 => DataType::Bf16,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::from_wire(dt.as_str()), Some(dt));
        }
        assert_eq!(DataType::from_wire("STRING"), None);
        assert_eq!(DataType::from_wire("fp32"), None);
    }

    #[test]
    fn config_enum_maps_string_to_bytes() {
        assert_eq!(
            DataType::from_config(inference::DataType::TypeString as i32),
            Some(DataType::Bytes)
        );
        assert_eq!(
            DataType::from_config(inference::DataType::TypeBf16 as i32),
            Some(DataType::Bf16)
        );
        assert_eq!(DataType::from_config(0), None);
        assert_eq!(DataType::from_config(99), None);
    }

    #[test]
    fn element_sizes() {
        assert_eq!(DataType::Bool.element_size(), Some(1));
        assert_eq!(DataType::Bf16.element_size(), Some(2));
        assert_eq!(DataType::Fp64.element_size(), Some(8));
        assert_eq!(DataType::Bytes.element_size(), None);
    }
}
