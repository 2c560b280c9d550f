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
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor as CandleTensor};
use nereid_kernels::{
    cublas_present, Activation as KernelActivation, CudaSlice, CudaView, Gpu, KernelError, Linear,
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

/// Output buffers an instance hands to the next ensemble step, reused once every view of one is
/// gone: steady-state traffic allocates no device memory (`cuMemAllocAsync` from a pool that a
/// stream synchronisation may trim costs far more than these small copies).
#[derive(Default)]
struct BufferPool {
    free: Mutex<Vec<CudaSlice<f32>>>,
}

/// Buffers kept for reuse per instance; more than this many in flight are freed when returned.
const POOLED_BUFFERS: usize = 64;

impl BufferPool {
    /// A buffer of at least `len` elements (`len` > 0).
    fn take(&self, gpu: &Gpu, len: usize) -> Result<CudaSlice<f32>, KernelError> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter()
                .position(|b| b.len() >= len)
                .map(|i| free.swap_remove(i))
        };
        match reused {
            Some(buffer) => Ok(buffer),
            None => gpu.zeros(len),
        }
    }
}

/// A pooled buffer that goes back to its pool when dropped.
struct PooledBuffer {
    buffer: Option<CudaSlice<f32>>,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    fn slice(&self, range: Range<usize>) -> Result<CudaView<'_, f32>, KernelError> {
        self.buffer
            .as_ref()
            .map(|b| b.slice(range))
            .ok_or_else(|| KernelError::InvalidArgument {
                op: "GpuTensor",
                detail: "buffer already returned".into(),
            })
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < POOLED_BUFFERS {
                free.push(buffer);
            }
        }
    }
}

impl std::fmt::Debug for PooledBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuffer")
            .field("len", &self.buffer.as_ref().map_or(0, |b| b.len()))
            .finish()
    }
}

/// FP32 elements in device memory that instances produced: the concatenation of `parts`, each a
/// range of a buffer. Slicing and joining only rearrange parts; the consuming instance gathers
/// them into its input buffer on its own stream.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    /// A handle on the device, for downloads.
    gpu: Gpu,
    parts: Vec<(Arc<PooledBuffer>, Range<usize>)>,
}

fn kernel_error(e: KernelError) -> Error {
    Error::internal(format!("GPU tensor: {e}"))
}

impl GpuTensor {
    fn elements(&self) -> usize {
        self.parts.iter().map(|(_, r)| r.len()).sum()
    }

    /// Copies the elements into the first `n` elements of `dst` on `gpu`'s stream.
    fn gather_into(
        &self,
        gpu: &Gpu,
        dst: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), KernelError> {
        if self.elements() != n {
            return Err(KernelError::InvalidArgument {
                op: "GpuTensor",
                detail: format!("{} elements for an input of {n}", self.elements()),
            });
        }
        let mut offset = 0;
        for (buffer, range) in &self.parts {
            let len = range.len();
            gpu.copy(
                &buffer.slice(range.clone())?,
                &mut dst.slice_mut(offset..offset + len),
            )?;
            offset += len;
        }
        Ok(())
    }
}

impl DeviceData for GpuTensor {
    fn ordinal(&self) -> usize {
        self.gpu.ordinal()
    }

    fn len(&self) -> usize {
        self.elements() * std::mem::size_of::<f32>()
    }

    fn slice(&self, bytes: Range<usize>) -> Arc<dyn DeviceData> {
        // The scheduler cuts on row boundaries of FP32 tensors: whole elements.
        let size = std::mem::size_of::<f32>();
        let (want_start, want_end) = (bytes.start / size, bytes.end / size);
        let mut parts = Vec::new();
        let mut offset = 0;
        for (buffer, range) in &self.parts {
            let (start, end) = (offset, offset + range.len());
            offset = end;
            let (from, to) = (want_start.max(start), want_end.min(end));
            if from < to {
                let base = range.start;
                parts.push((Arc::clone(buffer), base + from - start..base + to - start));
            }
        }
        Arc::new(GpuTensor {
            gpu: self.gpu.clone(),
            parts,
        })
    }

    fn concat(&self, rest: &[Arc<dyn DeviceData>]) -> Result<Arc<dyn DeviceData>, Error> {
        let mut parts = self.parts.clone();
        for other in rest {
            let other = other.as_any().downcast_ref::<GpuTensor>().ok_or_else(|| {
                Error::internal("cannot join device tensors of different backends. This is a bug.")
            })?;
            parts.extend(other.parts.iter().cloned());
        }
        Ok(Arc::new(GpuTensor {
            gpu: self.gpu.clone(),
            parts,
        }))
    }

    fn to_host(&self) -> Result<bytes::Bytes, Error> {
        let mut out = Vec::with_capacity(self.len());
        for (buffer, range) in &self.parts {
            let view = buffer.slice(range.clone()).map_err(kernel_error)?;
            let values = self.gpu.download(&view).map_err(kernel_error)?;
            out.extend_from_slice(bytemuck::cast_slice(&values));
        }
        Ok(bytes::Bytes::from(out))
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
    /// Buffers for outputs left on the device.
    pool: Arc<BufferPool>,
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
            pool: Arc::default(),
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
        self.load_input(None, batch)?;
        self.run_to_host(batch)
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

    /// Puts `batch` rows into the device input buffer `x`: gathered from device memory, or
    /// uploaded from the pinned input buffer.
    fn load_input(
        &mut self,
        resident: Option<&GpuTensor>,
        batch: usize,
    ) -> Result<(), KernelError> {
        let n_in = batch * self.features;
        match resident {
            Some(input) => input.gather_into(&self.gpu, &mut self.x, n_in),
            None => self
                .gpu
                .upload_pinned(&mut self.upload, &mut self.x.slice_mut(..n_in)),
        }
    }

    /// Runs the loaded `batch` rows and leaves the outputs in a pooled device buffer.
    fn run_to_device(&mut self, batch: usize) -> Result<GpuTensor, KernelError> {
        let output = self.compute(batch)?;
        let n_out = batch * self.classes;
        let mut result = self.pool.take(&self.gpu, n_out)?;
        self.gpu.copy(
            &self.h[output].slice(..n_out),
            &mut result.slice_mut(..n_out),
        )?;
        // Complete before the next step's stream reads it.
        self.gpu.synchronize()?;
        let buffer = PooledBuffer {
            buffer: Some(result),
            pool: Arc::clone(&self.pool),
        };
        Ok(GpuTensor {
            gpu: self.gpu.clone(),
            parts: vec![(Arc::new(buffer), 0..n_out)],
        })
    }

    /// Runs the loaded `batch` rows and downloads the outputs into the pinned output buffer.
    fn run_to_host(&mut self, batch: usize) -> Result<(), KernelError> {
        let output = self.compute(batch)?;
        let n_out = batch * self.classes;
        self.gpu
            .download_pinned(&self.h[output].slice(..n_out), &mut self.download)
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
            this.load_input(resident.as_ref(), batch)?;
            if to_device {
                let output = this.run_to_device(batch)?;
                return Ok(Tensor::on_device(
                    this.output_name.clone(),
                    DataType::Fp32,
                    shape.clone(),
                    Arc::new(output),
                ));
            }
            this.run_to_host(batch)?;
            Ok(Tensor::from_f32(
                this.output_name.clone(),
                shape.clone(),
                &this.download.as_slice()?[..batch * this.classes],
            ))
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
