//! Protocol-neutral inference request and response, produced and consumed by both front ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Tensor;

/// A request or response parameter value (`InferParameter` on gRPC, a JSON scalar on HTTP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Parameter {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
}

impl Parameter {
    /// The value as a non-negative integer, whichever integer form it came in.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Parameter::Int(v) => u64::try_from(v).ok(),
            Parameter::Uint(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Parameter::Bool(v) => Some(v),
            _ => None,
        }
    }
}

pub type Parameters = BTreeMap<String, Parameter>;

/// Keys the protocol itself interprets; everything else is passed on to the model.
pub const RESERVED_PARAMETERS: [&str; 7] = [
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "headers",
    "binary_data_output",
];

/// A tensor's place in a registered system shared-memory region (shared memory extension):
/// the `shared_memory_region`, `shared_memory_offset` and `shared_memory_byte_size` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMemoryRef {
    pub region: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// One output the client asked for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestedOutput {
    pub name: String,
    /// `classification` extension: return the top `k` classes instead of the tensor.
    pub classification: Option<u32>,
    /// HTTP only: send this output in the binary section rather than as JSON.
    pub binary: bool,
    /// Write this output into a shared-memory region instead of the response.
    pub shared_memory: Option<SharedMemoryRef>,
}

/// How one output travels in an HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputForm {
    Json,
    Binary,
    /// Written to shared memory: the response names the output, with no data.
    SharedMemory,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    pub id: String,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Empty means every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// HTTP only: binary form for outputs that are not listed in `outputs`.
    pub binary_data_output: bool,
    /// Internal (ensemble steps): leave the outputs in the memory of this CUDA device when the
    /// model runs there, for a next step on the same device. Never set from the wire.
    pub outputs_on_device: Option<usize>,
    /// Inputs whose data is in shared memory, by input name. Their tensors in `inputs` are
    /// empty until the server reads the regions.
    pub input_regions: BTreeMap<String, SharedMemoryRef>,
}

impl InferRequest {
    /// Whether the output `name` goes out in binary (HTTP binary tensor extension rules: a listed
    /// output follows its own `binary_data`; an unlisted one follows `binary_data_output`).
    pub fn wants_binary(&self, name: &str) -> bool {
        match self.outputs.iter().find(|o| o.name == name) {
            Some(output) => output.binary,
            None => self.binary_data_output,
        }
    }

    /// How the output `name` goes out over HTTP.
    pub fn output_form(&self, name: &str) -> OutputForm {
        let listed = self.outputs.iter().find(|o| o.name == name);
        if listed.is_some_and(|o| o.shared_memory.is_some()) {
            OutputForm::SharedMemory
        } else if self.wants_binary(name) {
            OutputForm::Binary
        } else {
            OutputForm::Json
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Parameters,
    pub outputs: Vec<Tensor>,
}
