//! Execution backends. A [`Backend`] is synchronous and owned by one model instance, which runs
//! it on its own OS thread (see `scheduler`); compute never runs on the async runtime's threads.
//!
//! Each execution receives the batch's inputs in the order of the model config's `input` list,
//! each with its full shape (batch dimension first when `max_batch_size > 0`), and returns
//! every output of the config's `output` list, in that order.
//!
//! Where an instance runs comes from its `instance_group` ([`placements`]): `KIND_CPU` on the
//! CPU; `KIND_GPU` on the listed GPUs (`count` instances on each; GPU 0 when none is listed),
//! where a `candle` model runs on the `cuda` backend and a machine without a usable GPU fails
//! the load with a message saying why; `KIND_AUTO` (the default) on a GPU when one is usable,
//! else on the CPU. An `onnxruntime` model runs on ONNX Runtime's CUDA execution provider for
//! `KIND_GPU` (required) and `KIND_AUTO` (when usable). The other backends have no GPU
//! implementation and run on the CPU whatever the kind.

mod argmax;
mod candle;
mod concat;
mod cuda;
mod identity;
pub mod onnx;

use std::path::PathBuf;
use std::sync::Arc;

use nereid_protocol::inference::model_instance_group::Kind;
use nereid_protocol::inference::ModelConfig;
use nereid_protocol::{Error, Tensor};

pub trait Backend: Send {
    /// Runs one batch; inputs and outputs are on the host.
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error>;

    /// The CUDA device this instance computes on, if any. Only such a backend is handed inputs
    /// that are already in device memory (its own device's); every other backend gets host
    /// tensors.
    fn device(&self) -> Option<usize> {
        None
    }

    /// Like [`Backend::execute`], but outputs may be left in the memory of [`Backend::device`]
    /// (for a next ensemble step on the same device).
    fn execute_to_device(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        self.execute(inputs)
    }
}

/// The device every instance computes on, when they all share one.
pub fn common_device(instances: &[Box<dyn Backend>]) -> Option<usize> {
    let first = instances.first()?.device()?;
    instances
        .iter()
        .all(|i| i.device() == Some(first))
        .then_some(first)
}

/// What a backend needs to build one instance.
#[derive(Debug, Clone)]
pub struct LoadContext {
    pub config: Arc<ModelConfig>,
    pub version: u64,
    /// `<repository>/<model>/<version>`.
    pub version_dir: PathBuf,
}

impl LoadContext {
    /// A `parameters` entry of the model config.
    pub fn parameter(&self, key: &str) -> Option<String> {
        self.config
            .parameters
            .get(key)
            .map(|p| p.string_value.clone())
    }
}

pub const BACKENDS: [&str; 5] = ["identity", "candle", "onnxruntime", "concat", "argmax"];

/// Where one instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// `KIND_CPU` (and `KIND_MODEL`, which leaves the choice to the backend: ours pick the CPU).
    Cpu,
    /// `KIND_GPU`: on this CUDA device, or the load fails.
    Gpu(usize),
    /// `KIND_AUTO`: on this CUDA device when it is usable, else on the CPU.
    Auto(usize),
}

/// One placement per instance to start, from the config's `instance_group` list: `count`
/// (at least 1) instances per group, and for `KIND_GPU` / `KIND_AUTO` that many on each listed
/// GPU (Triton's rule), on GPU 0 when the group lists none. No group at all means one
/// `KIND_AUTO` instance.
pub fn placements(config: &ModelConfig) -> Result<Vec<Placement>, Error> {
    if config.instance_group.is_empty() {
        return Ok(vec![Placement::Auto(0)]);
    }
    let mut placements = Vec::new();
    for group in &config.instance_group {
        let count = group.count.max(1) as usize;
        let gpus = group
            .gpus
            .iter()
            .map(|&g| {
                usize::try_from(g).map_err(|_| {
                    Error::invalid_arg(format!(
                        "model '{}': instance group GPU id {g} is negative",
                        config.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gpus = if gpus.is_empty() { vec![0] } else { gpus };
        match group.kind() {
            Kind::Cpu | Kind::Model => {
                placements.extend(std::iter::repeat_n(Placement::Cpu, count));
            }
            Kind::Gpu => {
                for &gpu in &gpus {
                    placements.extend(std::iter::repeat_n(Placement::Gpu(gpu), count));
                }
            }
            Kind::Auto => {
                for &gpu in &gpus {
                    placements.extend(std::iter::repeat_n(Placement::Auto(gpu), count));
                }
            }
        }
    }
    Ok(placements)
}

/// Creates one instance of the model's backend, placed as `placement` says.
pub fn create(ctx: &LoadContext, placement: Placement) -> Result<Box<dyn Backend>, Error> {
    match ctx.config.backend.as_str() {
        "identity" => Ok(Box::new(identity::Identity::new(ctx)?)),
        "candle" => create_dense(ctx, placement),
        "onnxruntime" => Ok(Box::new(onnx::OnnxBackend::new(ctx, placement)?)),
        "concat" => Ok(Box::new(concat::Concat::new(ctx)?)),
        "argmax" => Ok(Box::new(argmax::Argmax::new(ctx)?)),
        other => {
            let named = if other.is_empty() {
                format!("platform '{}'", ctx.config.platform)
            } else {
                format!("backend '{other}'")
            };
            Err(Error::invalid_arg(format!(
                "unsupported {named} for model '{}'; available backends: {}",
                ctx.config.name,
                BACKENDS.join(", ")
            )))
        }
    }
}

/// A `candle` model: the `cuda` backend on a GPU, the `candle` backend on the CPU.
fn create_dense(ctx: &LoadContext, placement: Placement) -> Result<Box<dyn Backend>, Error> {
    let name = &ctx.config.name;
    match placement {
        Placement::Cpu => Ok(Box::new(candle::CandleBackend::new(ctx)?)),
        Placement::Gpu(gpu) => match cuda::CudaBackend::new(ctx, gpu) {
            Ok(backend) => Ok(Box::new(backend)),
            Err(cuda::GpuLoadError::Model(e)) => Err(e),
            Err(cuda::GpuLoadError::Unavailable(reason)) => Err(Error::invalid_arg(format!(
                "model '{name}' asks for KIND_GPU but no CUDA GPU is available: {reason}"
            ))),
            Err(cuda::GpuLoadError::Device(reason)) => Err(Error::invalid_arg(format!(
                "model '{name}' could not be placed on GPU {gpu}: {reason}"
            ))),
        },
        Placement::Auto(gpu) => match cuda::CudaBackend::new(ctx, gpu) {
            Ok(backend) => {
                tracing::info!(model = %name, gpu, "KIND_AUTO instance runs on the GPU");
                Ok(Box::new(backend))
            }
            Err(cuda::GpuLoadError::Model(e)) => Err(e),
            Err(cuda::GpuLoadError::Unavailable(reason)) => {
                tracing::debug!(model = %name, %reason, "KIND_AUTO instance runs on the CPU: no usable GPU");
                Ok(Box::new(candle::CandleBackend::new(ctx)?))
            }
            Err(cuda::GpuLoadError::Device(reason)) => {
                tracing::warn!(model = %name, gpu, %reason, "KIND_AUTO instance falls back to the CPU: the GPU failed");
                Ok(Box::new(candle::CandleBackend::new(ctx)?))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::inference::ModelInstanceGroup;

    fn group(kind: Kind, count: i32, gpus: &[i32]) -> ModelInstanceGroup {
        let mut g = ModelInstanceGroup {
            count,
            gpus: gpus.to_vec(),
            ..Default::default()
        };
        g.set_kind(kind);
        g
    }

    #[test]
    fn placements_follow_instance_groups() {
        let mut c = ModelConfig::default();
        assert_eq!(placements(&c).unwrap(), [Placement::Auto(0)]);
        c.instance_group = vec![group(Kind::Cpu, 3, &[]), group(Kind::Auto, 0, &[])];
        assert_eq!(
            placements(&c).unwrap(),
            [
                Placement::Cpu,
                Placement::Cpu,
                Placement::Cpu,
                Placement::Auto(0)
            ]
        );
        c.instance_group = vec![group(Kind::Gpu, 2, &[1, 3]), group(Kind::Model, 1, &[])];
        assert_eq!(
            placements(&c).unwrap(),
            [
                Placement::Gpu(1),
                Placement::Gpu(1),
                Placement::Gpu(3),
                Placement::Gpu(3),
                Placement::Cpu
            ]
        );
        c.instance_group = vec![group(Kind::Gpu, 1, &[])];
        assert_eq!(placements(&c).unwrap(), [Placement::Gpu(0)]);
        c.instance_group = vec![group(Kind::Gpu, 1, &[-1])];
        assert!(placements(&c).unwrap_err().message.contains("negative"));
    }
}
