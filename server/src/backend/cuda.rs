//! `cuda`: the `candle` dense-model architectures (linear, logistic, softmax regression, MLP) on
//! an NVIDIA GPU, through `nereid-kernels` (cuBLAS GEMMs, NVRTC-compiled epilogue, softmax and
//! standardisation kernels).
//!
//! Chosen for a `candle` model whose `instance_group` asks for `KIND_GPU` (or `KIND_AUTO` on a
//! machine with a usable GPU, see `backend::create`). Same file contract as `candle` (the
//! weights are parsed and validated by `nereid_pipeline::model`), same config rules, same
//! outputs within float tolerance.
//!
//! Per instance, at load: the weights are uploaded once to the instance's device, the instance
//! gets a CUDA stream of its own (so instances on one GPU overlap) and page-locked host buffers
//! sized for `max_batch_size`, and one batch of zeros runs through the whole model so that NVRTC
//! compilation, cuBLAS handle creation and any device fault happen at load, not on the first
//! request. Per execution, on the instance's own thread: the batch is copied into the pinned
//! input buffer and uploaded asynchronously; standardisation, each layer's GEMM with its fused
//! bias + activation (the output sigmoid fused into the last layer) and the softmax are queued
//! on the stream; the result is copied back into the pinned output buffer, which waits for the
//! stream. Nothing here blocks other instances.
//!
//! Ensemble steps on one GPU skip the host: an input already in this device's memory
//! ([`GpuTensor`], made by another instance) is copied device to device into the input buffer,
//! and [`Backend::execute_to_device`] leaves the result in a fresh device buffer instead of
//! downloading it. cudarc orders the work of the two instances' streams on such buffers.
//!
//! Everything CUDA is loaded at run time: this module always builds, and on a machine without a
//! driver, device, NVRTC or cuBLAS, [`CudaBackend::new`] returns
//! [`GpuLoadError::Unavailable`] instead of panicking.

use std::any::Any;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor as CandleTensor};
use nereid_kernels::{
    cublas_present, Activation as KernelActivation, CudaSlice, Gpu, KernelError, Linear,
    PinnedBuffer, PinnedPurpose,
};
use nereid_pipeline::model::{
    layer_bias_name, layer_weight_name, Activation, ArchitectureSpec, DenseModel, ModelError,
    OutputActivation, NORMALIZE_MEAN, NORMALIZE_STD,
};
use nereid_protocol::{DataType, DeviceData, Error, Tensor};

use super::{Backend, LoadContext};

/// Why a GPU instance could not be built.
#[derive(Debug)]
pub enum GpuLoadError {
    /// This machine cannot run the kernels on that device: no driver, no such device, no NVRTC
    /// or no cuBLAS. `KIND_AUTO` falls back to the CPU on this.
    Unavailable(String),
    /// The model itself is wrong (config or weights); the CPU backend would refuse it too.
    Model(Error),
    /// The GPU is there but failed (out of memory, a driver error, a kernel fault).
    Device(String),
}

impl From<KernelError> for GpuLoadError {
    fn from(e: KernelError) -> Self {
        if e.is_unavailable() || matches!(e, KernelError::NoCublas) {
            GpuLoadError::Unavailable(e.to_string())
        } else {
            GpuLoadError::Device(e.to_string())
        }
    }
}

/// FP32 elements in a device buffer that an instance produced: `range` of `buffer`. Views share
/// the buffer, which is freed when the last of them is dropped.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    /// The producing instance's handle: downloads and joins run on its stream.
    gpu: Gpu,
    buffer: Arc<CudaSlice<f32>>,
    /// In elements.
    range: Range<usize>,
}

fn kernel_error(e: KernelError) -> Error {
    Error::internal(format!("GPU tensor: {e}"))
}

impl DeviceData for GpuTensor {
    fn ordinal(&self) -> usize {
        self.gpu.ordinal()
    }

    fn len(&self) -> usize {
        self.range.len() * std::mem::size_of::<f32>()
    }

    fn slice(&self, bytes: Range<usize>) -> Arc<dyn DeviceData> {
        // The scheduler cuts on row boundaries of FP32 tensors: whole elements.
        let size = std::mem::size_of::<f32>();
        let start = (self.range.start + bytes.start / size).min(self.range.end);
        let end = (self.range.start + bytes.end / size).clamp(start, self.range.end);
        Arc::new(GpuTensor {
            gpu: self.gpu.clone(),
            buffer: Arc::clone(&self.buffer),
            range: start..end,
        })
    }

    fn concat(&self, rest: &[Arc<dyn DeviceData>]) -> Result<Arc<dyn DeviceData>, Error> {
        let mut parts = vec![self];
        for other in rest {
            let part = other.as_any().downcast_ref::<GpuTensor>().ok_or_else(|| {
                Error::internal("cannot join device tensors of different backends. This is a bug.")
            })?;
            parts.push(part);
        }
        let total: usize = parts.iter().map(|p| p.range.len()).sum();
        let mut joined = self.gpu.zeros::<f32>(total).map_err(kernel_error)?;
        let mut offset = 0;
        for part in parts {
            let n = part.range.len();
            self.gpu
                .copy(
                    &part.buffer.slice(part.range.clone()),
                    &mut joined.slice_mut(offset..offset + n),
                )
                .map_err(kernel_error)?;
            offset += n;
        }
        // Complete before another instance's stream reads it.
        self.gpu.synchronize().map_err(kernel_error)?;
        Ok(Arc::new(GpuTensor {
            gpu: self.gpu.clone(),
            buffer: Arc::new(joined),
            range: 0..total,
        }))
    }

    fn to_host(&self) -> Result<bytes::Bytes, Error> {
        let values = self
            .gpu
            .download(&self.buffer.slice(self.range.clone()))
            .map_err(kernel_error)?;
        Ok(bytes::Bytes::copy_from_slice(bytemuck::cast_slice(&values)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Input standardisation on the device.
struct Normalize {
    /// `[features]`
    mean: CudaSlice<f32>,
    /// `[features]`, every element finite and > 0 (checked by `DenseModel`).
    std: CudaSlice<f32>,
}

pub struct CudaBackend {
    /// This instance's handle: its own stream on the chosen device.
    gpu: Gpu,
    normalize: Option<Normalize>,
    /// Hidden layers with the hidden activation fused, then the last layer with the output
    /// sigmoid fused (or none).
    layers: Vec<Linear<f32>>,
    softmax: bool,
    features: usize,
    classes: usize,
    /// Widest layer output, the size of each ping-pong buffer per row.
    width: usize,
    /// Rows the device and pinned buffers hold; grows if a larger batch ever arrives.
    capacity: usize,
    /// `[capacity, features]` raw input.
    x: CudaSlice<f32>,
    /// `[capacity, features]` standardised input (when `normalize`).
    z: CudaSlice<f32>,
    /// Two `[capacity, width]` buffers the layers write in turn.
    h: [CudaSlice<f32>; 2],
    /// Host staging for the input, `[capacity, features]`.
    upload: PinnedBuffer<f32>,
    /// Host staging for the output, `[capacity, classes]`.
    download: PinnedBuffer<f32>,
    output_name: String,
    /// For error messages.
    model: String,
}

/// The device activation for a hidden layer.
fn hidden_activation(a: Activation) -> KernelActivation {
    match a {
        Activation::Relu => KernelActivation::Relu,
        // Both are the exact, erf-based GELU.
        Activation::Gelu => KernelActivation::Gelu,
        Activation::Tanh => KernelActivation::Tanh,
        Activation::Sigmoid => KernelActivation::Sigmoid,
    }
}

/// Host copies of the validated weights.
struct HostWeights {
    model: DenseModel,
    /// `(weight [out, in], bias [out])` per layer.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// `(mean, std)`.
    normalize: Option<(Vec<f32>, Vec<f32>)>,
}

/// Reads `model.safetensors` once, validates it with `DenseModel` (the same contract and errors
/// as the `candle` backend) and keeps the raw tensors to upload.
fn read_weights(path: &Path, spec: ArchitectureSpec) -> Result<HostWeights, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let tensors: HashMap<String, CandleTensor> =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|source| {
            ModelError::Format {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let in_file = |source: ModelError| ModelError::InFile {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    // Candle tensors are reference counted: the clone shares the data.
    let model = DenseModel::from_tensors(tensors.clone(), spec).map_err(in_file)?;
    let flat = |name: &str| -> Result<Vec<f32>, ModelError> {
        let t = tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
        })?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    };
    let layers = (0..model.layer_count())
        .map(|i| Ok((flat(&layer_weight_name(i))?, flat(&layer_bias_name(i))?)))
        .collect::<Result<Vec<_>, ModelError>>()
        .map_err(in_file)?;
    let normalize = if model.normalizes_input() {
        Some((
            flat(NORMALIZE_MEAN).map_err(in_file)?,
            flat(NORMALIZE_STD).map_err(in_file)?,
        ))
    } else {
        None
    };
    Ok(HostWeights {
        model,
        layers,
        normalize,
    })
}

impl CudaBackend {
    /// Builds one instance on CUDA device `ordinal`.
    pub fn new(ctx: &LoadContext, ordinal: usize) -> Result<Self, GpuLoadError> {
        let config = &ctx.config;
        let name = &config.name;
        let invalid =
            |msg: String| GpuLoadError::Model(Error::invalid_arg(format!("model '{name}': {msg}")));
        if config.input.len() != 1 || config.output.len() != 1 {
            return Err(invalid(
                "the candle backend serves models with exactly one input and one output".into(),
            ));
        }
        let (input, output) = (&config.input[0], &config.output[0]);
        for (kind, tensor_name, dt) in [
            ("input", &input.name, input.data_type),
            ("output", &output.name, output.data_type),
        ] {
            if DataType::from_config(dt) != Some(DataType::Fp32) {
                return Err(invalid(format!(
                    "{kind} '{tensor_name}' must be TYPE_FP32 for the candle backend"
                )));
            }
        }
        if config.max_batch_size <= 0 || input.dims.len() != 1 || output.dims.len() != 1 {
            return Err(invalid("the candle backend needs max_batch_size > 0 and one-dimensional dims ([features] and [outputs])".into()));
        }
        let spec = ArchitectureSpec::from_parameters(|key| ctx.parameter(key))
            .map_err(|e| invalid(e.to_string()))?;
        // The device first: without one, `KIND_AUTO` falls back to the CPU before anything
        // is read twice.
        let gpu = Gpu::new(ordinal)?.new_stream()?;
        if !cublas_present() {
            return Err(GpuLoadError::Unavailable(KernelError::NoCublas.to_string()));
        }
        let path = ctx.version_dir.join("model.safetensors");
        let weights = read_weights(&path, spec).map_err(|e| invalid(e.to_string()))?;
        let (features, classes) = (
            weights.model.input_features(),
            weights.model.output_features(),
        );
        if input.dims[0] != features as i64 || output.dims[0] != classes as i64 {
            return Err(invalid(format!(
                "weights in {} map [{features}] to [{classes}], but the config declares input dims [{}] and output dims [{}]",
                path.display(),
                input.dims[0],
                output.dims[0]
            )));
        }

        let last = weights.layers.len() - 1;
        let mut layers = Vec::with_capacity(weights.layers.len());
        let mut width = classes;
        let mut in_features = features;
        for (i, (w, b)) in weights.layers.iter().enumerate() {
            let out_features = b.len();
            let act = if i < last {
                hidden_activation(spec.activation)
            } else if spec.output == OutputActivation::Sigmoid {
                KernelActivation::Sigmoid
            } else {
                KernelActivation::Identity
            };
            layers.push(Linear::new(
                &gpu,
                w,
                Some(b),
                in_features,
                out_features,
                act,
            )?);
            width = width.max(out_features);
            in_features = out_features;
        }
        let normalize = match &weights.normalize {
            Some((mean, std)) => Some(Normalize {
                mean: gpu.upload(mean)?,
                std: gpu.upload(std)?,
            }),
            None => None,
        };
        // `max_batch_size > 0` was checked above.
        let capacity = config.max_batch_size as usize;
        let mut backend = CudaBackend {
            x: gpu.zeros(0)?,
            z: gpu.zeros(0)?,
            h: [gpu.zeros(0)?, gpu.zeros(0)?],
            upload: gpu.alloc_pinned(0, PinnedPurpose::Upload)?,
            download: gpu.alloc_pinned(0, PinnedPurpose::Download)?,
            gpu,
            normalize,
            layers,
            softmax: spec.output == OutputActivation::Softmax,
            features,
            classes,
            width,
            capacity: 0,
            output_name: output.name.clone(),
            model: name.clone(),
        };
        backend.reserve(capacity)?;
        // One batch of zeros end to end: compiles the kernels, creates the cuBLAS handle and
        // surfaces any device fault now rather than on the first request.
        backend.upload.as_mut_slice()?[..features].fill(0.0);
        backend.run(1)?;
        Ok(backend)
    }

    /// Makes the buffers hold at least `rows` rows.
    fn reserve(&mut self, rows: usize) -> Result<(), KernelError> {
        if rows <= self.capacity {
            return Ok(());
        }
        let gpu = &self.gpu;
        let too_big = || KernelError::InvalidArgument {
            op: "cuda backend",
            detail: format!("a batch of {rows} rows is too large"),
        };
        let n_in = rows.checked_mul(self.features).ok_or_else(too_big)?;
        let n_h = rows.checked_mul(self.width).ok_or_else(too_big)?;
        let n_out = rows.checked_mul(self.classes).ok_or_else(too_big)?;
        self.x = gpu.zeros(n_in)?;
        self.z = if self.normalize.is_some() {
            gpu.zeros(n_in)?
        } else {
            gpu.zeros(0)?
        };
        self.h = [gpu.zeros(n_h)?, gpu.zeros(n_h)?];
        self.upload = gpu.alloc_pinned(n_in, PinnedPurpose::Upload)?;
        self.download = gpu.alloc_pinned(n_out, PinnedPurpose::Download)?;
        self.capacity = rows;
        Ok(())
    }

    /// Runs `batch` rows already in the pinned input buffer through the model; the outputs end
    /// up in the first `batch * classes` elements of the pinned output buffer.
    fn run(&mut self, batch: usize) -> Result<(), KernelError> {
        let n_in = batch * self.features;
        self.gpu
            .upload_pinned(&mut self.upload, &mut self.x.slice_mut(..n_in))?;
        let n_out = batch * self.classes;
        let output = self.compute(batch)?;
        let (h0, h1) = (&self.h[0], &self.h[1]);
        let result = if output == 0 { h0 } else { h1 };
        self.gpu
            .download_pinned(&result.slice(..n_out), &mut self.download)
    }

    /// Runs `batch` rows that are already in the device input buffer `x` through the model and
    /// returns which of the two `h` buffers holds the `batch * classes` outputs.
    fn compute(&mut self, batch: usize) -> Result<usize, KernelError> {
        let gpu = &self.gpu;
        let n_in = batch * self.features;
        let input = match &self.normalize {
            Some(n) => {
                gpu.standardize_f32(
                    &self.x.slice(..n_in),
                    &n.mean,
                    &n.std,
                    &mut self.z.slice_mut(..n_in),
                    batch,
                    self.features,
                )?;
                &self.z
            }
            None => &self.x,
        };
        let [h0, h1] = &mut self.h;
        // Layer i reads `input` (i == 0) or the buffer layer i - 1 wrote, and writes h[i % 2].
        let mut in_features = self.features;
        for (i, layer) in self.layers.iter().enumerate() {
            let n_out = batch * layer.out_features();
            let (src, dst) = if i % 2 == 0 {
                (if i == 0 { input } else { &*h1 }, &mut *h0)
            } else {
                (&*h0, &mut *h1)
            };
            layer.forward(
                gpu,
                &src.slice(..batch * in_features),
                &mut dst.slice_mut(..n_out),
                batch,
            )?;
            in_features = layer.out_features();
        }
        let n_out = batch * self.classes;
        let last = (self.layers.len() - 1) % 2;
        let (logits, other) = if last == 0 {
            (&*h0, &mut *h1)
        } else {
            (&*h1, &mut *h0)
        };
        if self.softmax {
            gpu.softmax_rows_f32(
                &logits.slice(..n_out),
                &mut other.slice_mut(..n_out),
                batch,
                self.classes,
            )?;
            Ok(1 - last)
        } else {
            Ok(last)
        }
    }

    /// Runs `batch` rows of a device tensor through the model, leaving the outputs in a new
    /// device buffer.
    fn run_on_device(
        &mut self,
        input: Option<&GpuTensor>,
        batch: usize,
    ) -> Result<GpuTensor, KernelError> {
        let n_in = batch * self.features;
        match input {
            Some(input) => self.gpu.copy(
                &input.buffer.slice(input.range.clone()),
                &mut self.x.slice_mut(..n_in),
            )?,
            None => self
                .gpu
                .upload_pinned(&mut self.upload, &mut self.x.slice_mut(..n_in))?,
        }
        let output = self.compute(batch)?;
        let n_out = batch * self.classes;
        let mut result = self.gpu.zeros::<f32>(n_out)?;
        self.gpu
            .copy(&self.h[output].slice(..n_out), &mut result.slice_mut(..))?;
        // Complete before the next step's stream reads it.
        self.gpu.synchronize()?;
        Ok(GpuTensor {
            gpu: self.gpu.clone(),
            buffer: Arc::new(result),
            range: 0..n_out,
        })
    }
}

impl CudaBackend {
    /// One batch; the outputs stay on the device when `to_device`.
    fn execute_batch(
        &mut self,
        inputs: Vec<Tensor>,
        to_device: bool,
    ) -> Result<Vec<Tensor>, Error> {
        let input = inputs.into_iter().next().ok_or_else(|| {
            Error::internal("cuda backend called without an input. This is a bug.")
        })?;
        let batch = match input.shape.as_slice() {
            [b, f] if *b >= 0 && *f == self.features as i64 => *b as usize,
            shape => {
                return Err(Error::internal(format!(
                    "cuda backend of model '{}' got input shape {shape:?}, expected [batch, {}]. \
                     This is a bug.",
                    self.model, self.features
                )))
            }
        };
        let n_in = batch * self.features;
        if input.byte_len() != n_in * std::mem::size_of::<f32>() {
            return Err(Error::internal(format!(
                "cuda backend of model '{}' got {} bytes for {batch} x {} FP32. This is a bug.",
                self.model,
                input.byte_len(),
                self.features
            )));
        }
        let shape = vec![batch as i64, self.classes as i64];
        if batch == 0 {
            return Ok(vec![Tensor::from_f32(self.output_name.clone(), shape, &[])]);
        }
        // Device memory of this GPU is read in place; anything else comes through the host.
        let ordinal = self.gpu.ordinal();
        let resident = input
            .device
            .as_ref()
            .and_then(|d| d.as_any().downcast_ref::<GpuTensor>())
            .filter(|d| d.ordinal() == ordinal)
            .cloned();
        let input = match resident {
            Some(_) => input,
            None => input.into_host()?,
        };
        let run = |this: &mut Self| -> Result<Tensor, KernelError> {
            this.reserve(batch)?;
            if resident.is_none() {
                let host = this.upload.as_mut_slice()?;
                // FP32 tensor data is little-endian, the host's byte order.
                bytemuck::cast_slice_mut::<f32, u8>(&mut host[..n_in]).copy_from_slice(&input.data);
            }
            if to_device {
                let output = this.run_on_device(resident.as_ref(), batch)?;
                return Ok(Tensor::on_device(
                    this.output_name.clone(),
                    DataType::Fp32,
                    shape.clone(),
                    Arc::new(output),
                ));
            }
            match &resident {
                Some(input) => {
                    let output = this.run_on_device(Some(input), batch)?;
                    let values = this.gpu.download(&output.buffer.slice(..))?;
                    Ok(Tensor::from_f32(
                        this.output_name.clone(),
                        shape.clone(),
                        &values,
                    ))
                }
                None => {
                    this.run(batch)?;
                    Ok(Tensor::from_f32(
                        this.output_name.clone(),
                        shape.clone(),
                        &this.download.as_slice()?[..batch * this.classes],
                    ))
                }
            }
        };
        let output = run(self).map_err(|e| {
            Error::internal(format!(
                "cuda execution of model '{}' failed: {e}",
                self.model
            ))
        })?;
        Ok(vec![output])
    }
}

impl Backend for CudaBackend {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        self.execute_batch(inputs, false)
    }

    fn device(&self) -> Option<usize> {
        Some(self.gpu.ordinal())
    }

    fn execute_to_device(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        self.execute_batch(inputs, true)
    }
}
