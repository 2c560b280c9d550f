//! What an ONNX file declares at its boundary: the graph's inputs and outputs with element types
//! and shapes, read straight from the protobuf (no ONNX Runtime needed), for auto-completing and
//! checking a model's config when the repository is scanned.
//!
//! Only the fields needed are declared, with the field numbers of ONNX's `onnx.proto`
//! (`ModelProto.graph` = 7, `GraphProto.input` = 11, ...); everything else (nodes, weights) is
//! skipped by the decoder. Results are cached per file (path, size, modification time), since a
//! polling server scans its repository every few seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use nereid_protocol::DataType;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetId>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetId {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<NamedTensor>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfo>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfo>,
}

/// A `TensorProto` of which only the name is read (its data is skipped).
#[derive(Clone, PartialEq, Message)]
struct NamedTensor {
    #[prost(string, tag = "8")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfo {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorTypeProto>,
    #[prost(message, optional, tag = "4")]
    sequence_type: Option<Empty>,
    #[prost(message, optional, tag = "5")]
    map_type: Option<Empty>,
    #[prost(message, optional, tag = "8")]
    sparse_tensor_type: Option<Empty>,
    #[prost(message, optional, tag = "9")]
    optional_type: Option<Empty>,
}

#[derive(Clone, PartialEq, Message)]
struct Empty {}

#[derive(Clone, PartialEq, Message)]
struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<ShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct ShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// One graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphTensor {
    pub name: String,
    pub datatype: DataType,
    /// `None` when the graph leaves the rank open; `-1` for a dynamic dimension.
    pub shape: Option<Vec<i64>>,
}

/// A model's inputs (initializers left out) and outputs, in graph order.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphIo {
    pub inputs: Vec<GraphTensor>,
    pub outputs: Vec<GraphTensor>,
}

/// The protocol datatype of an ONNX `TensorProto.DataType`.
fn datatype(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::Fp32,
        2 => DataType::Uint8,
        3 => DataType::Int8,
        4 => DataType::Uint16,
        5 => DataType::Int16,
        6 => DataType::Int32,
        7 => DataType::Int64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::Fp16,
        11 => DataType::Fp64,
        12 => DataType::Uint32,
        13 => DataType::Uint64,
        16 => DataType::Bf16,
        _ => return None,
    })
}

fn tensor(value: &ValueInfo, kind: &str) -> Result<GraphTensor, String> {
    let name = &value.name;
    let ty = value
        .r#type
        .as_ref()
        .ok_or_else(|| format!("graph {kind} '{name}' has no type"))?;
    let Some(tensor_type) = &ty.tensor_type else {
        let what = if ty.sequence_type.is_some() {
            "a sequence"
        } else if ty.map_type.is_some() {
            "a map"
        } else if ty.sparse_tensor_type.is_some() {
            "a sparse tensor"
        } else if ty.optional_type.is_some() {
            "an optional"
        } else {
            "not a tensor"
        };
        return Err(format!(
            "graph {kind} '{name}' is {what}; only dense tensors can be served"
        ));
    };
    let datatype = datatype(tensor_type.elem_type).ok_or_else(|| {
        format!(
            "graph {kind} '{name}' has ONNX element type {}, which the protocol has no datatype for",
            tensor_type.elem_type
        )
    })?;
    let shape = tensor_type.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.dim_value {
                Some(v) if v > 0 && d.dim_param.is_none() => v,
                _ => -1,
            })
            .collect()
    });
    Ok(GraphTensor {
        name: name.clone(),
        datatype,
        shape,
    })
}

impl GraphIo {
    /// Decodes an ONNX model's bytes.
    pub fn decode(bytes: &[u8]) -> Result<GraphIo, String> {
        let model = ModelProto::decode(bytes)
            .map_err(|e| format!("not a valid ONNX model (protobuf decoding failed: {e})"))?;
        let graph = model.graph.ok_or_else(|| {
            "not a valid ONNX model (no graph; is the file truncated or of another format?)"
                .to_string()
        })?;
        if model.ir_version <= 0 || model.opset_import.is_empty() {
            return Err(
                "not a valid ONNX model (no IR version or opset; is it another format?)".into(),
            );
        }
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_str()))
            .map(|v| tensor(v, "input"))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph
            .output
            .iter()
            .map(|v| tensor(v, "output"))
            .collect::<Result<Vec<_>, _>>()?;
        if outputs.is_empty() {
            return Err("the ONNX graph has no outputs".into());
        }
        Ok(GraphIo { inputs, outputs })
    }

    /// Reads the ONNX file at `path` (cached while the file is unchanged).
    pub fn read(path: &Path) -> Result<GraphIo, String> {
        type Cache = Mutex<HashMap<PathBuf, ((u64, Option<SystemTime>), GraphIo)>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("failed to read {}: {e}", path.display()))?;
        let stamp = (meta.len(), meta.modified().ok());
        let cache = CACHE.get_or_init(Default::default);
        if let Some((seen, io)) = cache.lock().ok().and_then(|c| c.get(path).cloned()) {
            if seen == stamp {
                return Ok(io);
            }
        }
        let bytes =
            std::fs::read(path).map_err(|e| format!("failed to read {}: {e}", path.display()))?;
        let io = GraphIo::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Ok(mut cache) = cache.lock() {
            cache.insert(path.to_path_buf(), (stamp, io.clone()));
        }
        Ok(io)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn value(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfo {
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
                                dim_param: d.is_none().then(|| "N".to_string()),
                            })
                            .collect(),
                    }),
                }),
                ..Default::default()
            }),
        }
    }

    /// An ONNX file's bytes with these inputs (each `(name, elem_type, dims)`, `None` for a
    /// symbolic dimension) and outputs, plus one initializer listed among the inputs.
    pub(crate) fn model_bytes(
        inputs: &[(&str, i32, &[Option<i64>])],
        outputs: &[(&str, i32, &[Option<i64>])],
    ) -> Vec<u8> {
        let mut input: Vec<ValueInfo> = inputs.iter().map(|(n, t, d)| value(n, *t, d)).collect();
        input.push(value("weight", 1, &[Some(3)]));
        ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                initializer: vec![NamedTensor {
                    name: "weight".into(),
                }],
                input,
                output: outputs.iter().map(|(n, t, d)| value(n, *t, d)).collect(),
            }),
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 13,
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_inputs_outputs_types_and_shapes() {
        let bytes = model_bytes(
            &[("X", 1, &[None, Some(3)]), ("S", 8, &[None])],
            &[("Y", 16, &[None, Some(3)])],
        );
        let io = GraphIo::decode(&bytes).expect("decodes");
        assert_eq!(
            io.inputs,
            [
                GraphTensor {
                    name: "X".into(),
                    datatype: DataType::Fp32,
                    shape: Some(vec![-1, 3])
                },
                GraphTensor {
                    name: "S".into(),
                    datatype: DataType::Bytes,
                    shape: Some(vec![-1])
                },
            ]
        );
        assert_eq!(io.outputs[0].datatype, DataType::Bf16);
    }

    #[test]
    fn rejects_what_is_not_a_servable_onnx_model() {
        let good = model_bytes(&[("X", 1, &[Some(1)])], &[("Y", 1, &[Some(1)])]);
        let truncated = GraphIo::decode(&good[..good.len() / 2]).unwrap_err();
        assert!(truncated.contains("not a valid ONNX model"), "{truncated}");
        let text = GraphIo::decode(b"name: \"x\"\nbackend: \"onnxruntime\"\n").unwrap_err();
        assert!(text.contains("not a valid ONNX model"), "{text}");
        let complex = model_bytes(&[("X", 14, &[Some(1)])], &[("Y", 1, &[Some(1)])]);
        let err = GraphIo::decode(&complex).unwrap_err();
        assert!(
            err.contains("graph input 'X' has ONNX element type 14"),
            "{err}"
        );
    }
}
