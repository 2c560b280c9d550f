//! What an ONNX file declares at its boundary: the graph's inputs and outputs with element types
//! and shapes, read straight from the protobuf (no ONNX Runtime needed), for auto-completing and
//! checking a model's config when the repository is scanned.
//!
//! [`nereid_protocol::onnx::ModelBoundary`] declares only what is needed; everything else
//! (nodes, weights) is skipped by the decoder. Results are cached per file (path, size, modification time), since a
//! polling server scans its repository every few seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use nereid_protocol::onnx::{datatype, ModelBoundary, ValueInfo};
use nereid_protocol::DataType;
use prost::Message;

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
        let model = ModelBoundary::decode(bytes)
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
    use nereid_protocol::onnx::{GraphProto, ModelProto, OperatorSetId, TensorProto};

    use super::*;

    /// An ONNX file's bytes with these inputs (each `(name, elem_type, dims)`, `None` for a
    /// symbolic dimension) and outputs, plus one initializer listed among the inputs.
    pub(crate) fn model_bytes(
        inputs: &[(&str, i32, &[Option<i64>])],
        outputs: &[(&str, i32, &[Option<i64>])],
    ) -> Vec<u8> {
        let value = |(n, t, d): &(&str, i32, &[Option<i64>])| ValueInfo::tensor(n, *t, d, "N");
        let mut input: Vec<ValueInfo> = inputs.iter().map(value).collect();
        input.push(ValueInfo::tensor("weight", 1, &[Some(3)], "N"));
        ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                initializer: vec![TensorProto::f32("weight", &[3], &[1.0, 2.0, 3.0])],
                input,
                output: outputs.iter().map(value).collect(),
                ..Default::default()
            }),
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 13,
            }],
            ..Default::default()
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
