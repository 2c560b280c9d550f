//! The part of ONNX's protobuf format (`onnx.proto`) that Nereid reads and writes, declared with
//! the format's field numbers: a model's boundary (inputs, outputs, their types and shapes) for
//! the server's `onnxruntime` backend, and whole small graphs (nodes, attributes, initializers)
//! for the pipeline's ONNX export. Fields not declared here are skipped when decoding.

use prost::Message;

/// `ModelProto`, as written: the graph and its operator sets.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetId>,
}

/// `ModelProto`, as read for its boundary only (nodes and weights are skipped).
#[derive(Clone, PartialEq, Message)]
pub struct ModelBoundary {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphBoundary>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetId>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetId {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfo>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfo>,
}

/// `GraphProto` with initializers by name only.
#[derive(Clone, PartialEq, Message)]
pub struct GraphBoundary {
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<NamedTensor>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfo>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// An attribute holding one float or one int (`type` 1 or 2, as `AttributeProto.AttributeType`).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

impl AttributeProto {
    pub fn int(name: &str, value: i64) -> Self {
        AttributeProto {
            name: name.into(),
            i: value,
            r#type: 2,
            ..Default::default()
        }
    }
}

/// An initializer: little-endian `raw_data` of `data_type` with `dims`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

impl TensorProto {
    /// An FP32 initializer.
    pub fn f32(name: &str, dims: &[i64], values: &[f32]) -> Self {
        TensorProto {
            dims: dims.to_vec(),
            data_type: ELEM_FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// A `TensorProto` of which only the name is read.
#[derive(Clone, PartialEq, Message)]
pub struct NamedTensor {
    #[prost(string, tag = "8")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

impl ValueInfo {
    /// A tensor of `elem_type`; `None` dimensions are symbolic (named `param`).
    pub fn tensor(name: &str, elem_type: i32, dims: &[Option<i64>], param: &str) -> Self {
        ValueInfo {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type,
                    shape: Some(ShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                dim_value: *d,
                                dim_param: d.is_none().then(|| param.to_string()),
                            })
                            .collect(),
                    }),
                }),
                ..Default::default()
            }),
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
    #[prost(message, optional, tag = "4")]
    pub sequence_type: Option<Empty>,
    #[prost(message, optional, tag = "5")]
    pub map_type: Option<Empty>,
    #[prost(message, optional, tag = "8")]
    pub sparse_tensor_type: Option<Empty>,
    #[prost(message, optional, tag = "9")]
    pub optional_type: Option<Empty>,
}

/// A message whose contents are not read.
#[derive(Clone, PartialEq, Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<ShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// `TensorProto.DataType.FLOAT`.
pub const ELEM_FLOAT: i32 = 1;

/// The protocol datatype of an ONNX `TensorProto.DataType`.
pub fn datatype(elem_type: i32) -> Option<crate::DataType> {
    use crate::DataType as D;
    Some(match elem_type {
        1 => D::Fp32,
        2 => D::Uint8,
        3 => D::Int8,
        4 => D::Uint16,
        5 => D::Int16,
        6 => D::Int32,
        7 => D::Int64,
        8 => D::Bytes,
        9 => D::Bool,
        10 => D::Fp16,
        11 => D::Fp64,
        12 => D::Uint32,
        13 => D::Uint64,
        16 => D::Bf16,
        _ => return None,
    })
}
