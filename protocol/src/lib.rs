//! Wire types of the KServe v2 / Triton inference protocols, shared by the server and clients.
//!
//! - [`inference`]: prost messages and tonic stubs generated from our `proto/` files, which
//!   reproduce Triton's `GRPCInferenceService` and `ModelConfig` wire contract.
//! - [`config`]: `config.pbtxt` (protobuf text format) to [`inference::ModelConfig`], and the JSON
//!   form Triton serves at `/v2/models/{m}/config`, both by reflection over the same descriptor.
//! - [`Tensor`], [`DataType`], [`InferRequest`]/[`InferResponse`]: protocol-neutral values.
//! - [`rest`]: the v2 REST JSON body and the binary tensor extension framing.
//! - [`grpc`]: conversions between the gRPC messages and the protocol-neutral values.
//! - [`onnx`]: the part of ONNX's protobuf format that the server reads and the pipeline
//!   writes.
//! - [`Error`]: one error type with Triton's codes and their HTTP and gRPC mappings.
//!
//! Data flow: a request body is parsed straight into typed tensor buffers (JSON numbers are
//! written as little-endian bytes as they are read; binary sections and gRPC raw contents are
//! sliced, not copied), handed to the server as an [`InferRequest`], and the [`InferResponse`]
//! is rendered back the same way.
#![forbid(unsafe_code)]

pub mod config;
mod datatype;
mod error;
pub mod grpc;
pub mod onnx;
mod request;
pub mod rest;
mod tensor;

pub use datatype::DataType;
pub use error::{Code, Error, Result};
pub use request::{
    InferRequest, InferResponse, OutputForm, Parameter, Parameters, RequestedOutput,
    SharedMemoryRef, RESERVED_PARAMETERS,
};
pub use tensor::{
    bytes_elements, count_bytes_elements, element_count, encode_bytes_elements, shape_string,
    DeviceData, Tensor,
};

/// Messages and services of package `inference` (Triton's gRPC and model configuration protos).
pub mod inference {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");

    impl ModelConfig {
        /// The `dynamic_batching` member of the `scheduling_choice` oneof.
        pub fn dynamic_batching(&self) -> Option<&ModelDynamicBatching> {
            match &self.scheduling_choice {
                Some(model_config::SchedulingChoice::DynamicBatching(b)) => Some(b),
                _ => None,
            }
        }

        /// The `ensemble_scheduling` member of the `scheduling_choice` oneof.
        pub fn ensemble_scheduling(&self) -> Option<&ModelEnsembling> {
            match &self.scheduling_choice {
                Some(model_config::SchedulingChoice::EnsembleScheduling(e)) => Some(e),
                _ => None,
            }
        }
    }

    /// Encoded `FileDescriptorSet` of the protos above, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}
