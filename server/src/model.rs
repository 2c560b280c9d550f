//! A loaded model version: its config, tensor specs, instances (through the scheduler) and
//! statistics, plus the request-side rules that depend on the config: input validation against
//! names, datatypes and shapes, output selection and the classification extension.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nereid_protocol::inference::{
    model_metadata_response::TensorMetadata, ModelConfig, ModelMetadataResponse,
};
use nereid_protocol::{
    bytes_elements, element_count, encode_bytes_elements, shape_string, DataType, Error,
    InferRequest, Tensor,
};

use crate::backend::{self, LoadContext};
use crate::batcher::Policy;
use crate::ensemble::EnsemblePlan;
use crate::lifecycle::{MonitorSettings, VersionMonitor};
use crate::scheduler::{Executed, Scheduler, Submission};
use crate::stats::ModelStats;
use crate::warmup;

/// One input or output as the config declares it.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Dims without the batch dimension; -1 is variable.
    pub dims: Vec<i64>,
    /// What the backend sees instead of `dims`, when the config has `reshape`.
    pub reshape: Option<Vec<i64>>,
    pub optional: bool,
    /// Output only: class labels, one per line of `label_filename`.
    pub labels: Option<Arc<Vec<String>>>,
}

pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub config: Arc<ModelConfig>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub stats: Arc<ModelStats>,
    /// `<repository>/<model>`: where the version folder and label files are.
    pub model_dir: PathBuf,
    /// How long loading took (`nv_model_load_duration_secs`).
    pub load_duration: Duration,
    /// The CUDA device every instance computes on, when they share one: an ensemble keeps the
    /// tensors passed between such steps in that device's memory.
    pub device: Option<usize>,
    /// Drift and data-quality monitoring, prediction log and feedback (when the version has a
    /// `reference.json` or the config turns monitoring on).
    pub monitor: Option<Arc<VersionMonitor>>,
    /// The open sequences of a stateful model (`sequence_batching`).
    pub sequences: Option<Arc<crate::sequence::Sequences>>,
    /// The response cache, when the config enables it and the server has one.
    pub response_cache: Option<Arc<crate::cache::ResponseCache>>,
    /// This load of the version, in response cache keys (see [`crate::cache::next_load_id`]).
    pub load_id: u64,
    executor: Executor,
}

/// How a version runs its requests.
enum Executor {
    /// Through its own queue and instances.
    Scheduled(Scheduler),
    /// Through its composing models (see `ensemble`).
    Ensemble(Arc<EnsemblePlan>),
}

/// A request checked against the model: inputs in config order, shaped for the backend.
pub struct Prepared {
    pub inputs: Vec<Tensor>,
    pub batch_size: u64,
    /// The `priority` parameter (0 = the model's default level).
    pub priority: u64,
    /// The `timeout` parameter, in microseconds on the wire.
    pub timeout: Option<Duration>,
    /// The request asked for outputs on the device this model computes on.
    pub outputs_on_device: bool,
}

/// What every loaded version shares, from the server's flags.
#[derive(Debug, Clone)]
pub struct VersionSettings {
    /// Prediction log location and retention for monitored versions.
    pub monitoring: MonitorSettings,
    /// Admission limit on a newcomer's expected wait in a model's queue (see
    /// [`crate::scheduler::WaitLimit`]); `None` admits up to the queue size limits only. A model
    /// overrides it with the parameter `nereid.max_queue_wait_ms` (0: no limit).
    pub max_queue_wait: Option<Duration>,
    /// The server's response cache (`--cache-config`), used by versions whose config enables
    /// `response_cache`.
    pub response_cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Model versions loaded at once when a repository is opened (`--model-load-thread-count`).
    pub load_threads: usize,
}

/// The server-wide default of [`VersionSettings::max_queue_wait`].
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The config parameter that overrides [`VersionSettings::max_queue_wait`] for one model.
pub const MAX_QUEUE_WAIT_PARAMETER: &str = "nereid.max_queue_wait_ms";

impl Default for VersionSettings {
    fn default() -> Self {
        VersionSettings {
            monitoring: MonitorSettings::default(),
            max_queue_wait: Some(DEFAULT_MAX_QUEUE_WAIT),
            response_cache: None,
            load_threads: 4,
        }
    }
}

impl VersionSettings {
    /// The wait limit of the model configured by `config`.
    fn max_queue_wait(&self, config: &ModelConfig) -> Result<Option<Duration>, Error> {
        match config.parameters.get(MAX_QUEUE_WAIT_PARAMETER) {
            None => Ok(self.max_queue_wait),
            Some(p) => match p.string_value.trim().parse::<u64>() {
                Ok(0) => Ok(None),
                Ok(ms) => Ok(Some(Duration::from_millis(ms))),
                Err(_) => Err(Error::invalid_arg(format!(
                    "model '{}': parameter '{MAX_QUEUE_WAIT_PARAMETER}' must be a whole number of milliseconds (0: no limit), got '{}'",
                    config.name, p.string_value
                ))),
            },
        }
    }
}

impl ModelVersion {
    /// Loads one version: creates every instance's backend, then starts the workers and, when
    /// the version is monitored, its monitor.
    pub fn load(
        config: Arc<ModelConfig>,
        model_dir: &Path,
        version: u64,
        settings: &VersionSettings,
    ) -> Result<Self, Error> {
        let monitoring = &settings.monitoring;
        let started = std::time::Instant::now();
        let name = config.name.clone();
        let inputs = config
            .input
            .iter()
            .map(|i| {
                spec(
                    &i.name,
                    i.data_type,
                    &i.dims,
                    i.reshape.as_ref().map(|r| r.shape.clone()),
                    i.optional,
                    None,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = config
            .output
            .iter()
            .map(|o| {
                let labels = if o.label_filename.is_empty() {
                    None
                } else {
                    Some(Arc::new(read_labels(&model_dir.join(&o.label_filename))?))
                };
                spec(
                    &o.name,
                    o.data_type,
                    &o.dims,
                    o.reshape.as_ref().map(|r| r.shape.clone()),
                    false,
                    labels,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sequences =
            crate::sequence::SequenceSpec::from_config(&config).map_err(Error::invalid_arg)?;
        if sequences.as_ref().is_some_and(|s| s.adds_tensors())
            && !crate::backend::onnx::is_onnx(&config)
        {
            return Err(Error::invalid_arg(format!(
                "model '{name}': sequence_batching control inputs and state need a backend that takes them as inputs (onnxruntime), not '{}'",
                config.backend
            )));
        }
        let stats = Arc::new(ModelStats::default());
        let mut device = None;
        let executor = if config.platform == "ensemble" {
            let plan = EnsemblePlan::from_config(&config).map_err(Error::invalid_arg)?;
            Executor::Ensemble(Arc::new(plan))
        } else {
            let ctx = LoadContext {
                config: Arc::clone(&config),
                version,
                version_dir: model_dir.join(version.to_string()),
            };
            let policy = Policy::from_config(&config).map_err(Error::invalid_arg)?;
            let mut instances = backend::placements(&config)?
                .into_iter()
                .map(|placement| backend::create(&ctx, placement))
                .collect::<Result<Vec<_>, _>>()?;
            let batching = config.max_batch_size > 0;
            let mut warmups =
                warmup::requests(&config.model_warmup, &inputs, batching, &ctx.version_dir)?;
            if let Some(spec) = &sequences {
                for warm in &mut warmups {
                    warm.inputs.extend(spec.warmup_tensors());
                }
            }
            for instance in &mut instances {
                for warm in &warmups {
                    for _ in 0..warm.count {
                        instance.execute(warm.inputs.clone()).map_err(|e| {
                            Error::invalid_arg(format!(
                                "failed to warm up model '{name}' version {version} ({}): {}",
                                warm.name, e.message
                            ))
                        })?;
                    }
                }
            }
            device = backend::common_device(&instances);
            let max_queue_wait = settings.max_queue_wait(&config)?;
            let scheduler =
                Scheduler::start(&name, policy, instances, Arc::clone(&stats), max_queue_wait)
                    .map_err(|e| {
                        Error::internal(format!("failed to start instances of model '{name}': {e}"))
                    })?;
            Executor::Scheduled(scheduler)
        };
        let monitor = start_monitor(
            &config,
            &outputs,
            &model_dir.join(version.to_string()),
            version,
            monitoring,
        )?;
        let wants_cache = config.response_cache.as_ref().is_some_and(|c| c.enable);
        if wants_cache && settings.response_cache.is_none() {
            tracing::warn!(
                model = %name,
                "response_cache is enabled in the config, but the server has no cache (--cache-config local,size=BYTES); requests are not cached"
            );
        }
        Ok(ModelVersion {
            // A cached answer would skip the sequence's state: sequence models are not cached.
            response_cache: settings
                .response_cache
                .clone()
                .filter(|_| wants_cache && sequences.is_none()),
            sequences: sequences.map(|spec| Arc::new(crate::sequence::Sequences::new(spec))),
            load_id: crate::cache::next_load_id(),
            name,
            version,
            config,
            inputs,
            outputs,
            stats,
            model_dir: model_dir.to_path_buf(),
            load_duration: started.elapsed(),
            device,
            monitor,
            executor,
        })
    }

    fn batching(&self) -> bool {
        self.config.max_batch_size > 0
    }

    /// Full shape of a tensor as the client sees it: `[-1, dims...]` when the model batches.
    fn client_shape(&self, spec: &TensorSpec) -> Vec<i64> {
        let mut shape = Vec::with_capacity(spec.dims.len() + 1);
        if self.batching() {
            shape.push(-1);
        }
        shape.extend(&spec.dims);
        shape
    }

    pub fn metadata(&self, versions: Vec<String>) -> ModelMetadataResponse {
        let describe = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| TensorMetadata {
                    name: s.name.clone(),
                    datatype: s.datatype.as_str().to_string(),
                    shape: self.client_shape(s),
                })
                .collect()
        };
        let platform = if self.config.platform.is_empty() {
            self.config.backend.clone()
        } else {
            self.config.platform.clone()
        };
        ModelMetadataResponse {
            name: self.name.clone(),
            versions,
            platform,
            inputs: describe(&self.inputs),
            outputs: describe(&self.outputs),
        }
    }

    /// Validates the request's inputs and outputs against the config.
    pub fn prepare(&self, request: &mut InferRequest) -> Result<Prepared, Error> {
        let m = &self.name;
        // Triton's core names the request in these errors: "[request id: <id>] ...".
        let tagged = |err: Error| {
            let id = if request.id.is_empty() {
                "<id_unknown>"
            } else {
                request.id.as_str()
            };
            Error::new(err.code, format!("[request id: {id}] {}", err.message))
        };
        for output in &request.outputs {
            let spec = self
                .outputs
                .iter()
                .find(|s| s.name == output.name)
                .ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "unexpected inference output '{}' for model '{m}'",
                        output.name
                    ))
                })?;
            if output.classification.is_some() && spec.datatype == DataType::Bytes {
                return Err(Error::invalid_arg(
                    "class result not available for output due to unsupported type 'BYTES'"
                        .to_string(),
                ));
            }
        }

        let mut given: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in std::mem::take(&mut request.inputs) {
            let index = self
                .inputs
                .iter()
                .position(|s| s.name == tensor.name)
                .ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "unexpected inference input '{}' for model '{m}'",
                        tensor.name
                    ))
                })?;
            if given[index].is_some() {
                return Err(Error::invalid_arg(format!(
                    "input '{}' is specified more than once for model '{m}'",
                    tensor.name
                )));
            }
            given[index] = Some(tensor);
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .zip(&given)
            .filter(|(s, t)| t.is_none() && !s.optional)
            .map(|(s, _)| s.name.as_str())
            .collect();
        if !missing.is_empty() {
            let got: Vec<&str> = given.iter().flatten().map(|t| t.name.as_str()).collect();
            let required = self.inputs.iter().filter(|s| !s.optional).count();
            let expected = if required == self.inputs.len() {
                format!("expected {required} inputs")
            } else {
                format!(
                    "expected number of inputs between {required} and {}",
                    self.inputs.len()
                )
            };
            return Err(tagged(Error::invalid_arg(format!(
                "{expected} but got {} inputs for model '{m}'. Got input(s) {}, but missing required input(s) {}. Please provide all required input(s).",
                got.len(),
                python_list(&got),
                python_list(&missing)
            ))));
        }

        let mut batch_size = None;
        let mut inputs = Vec::with_capacity(given.len());
        for (spec, tensor) in self.inputs.iter().zip(given) {
            let Some(mut tensor) = tensor else { continue };
            if tensor.datatype != spec.datatype {
                return Err(tagged(Error::invalid_arg(format!(
                    "inference input '{}' data-type is '{}', but model '{m}' expects '{}'",
                    tensor.name, tensor.datatype, spec.datatype
                ))));
            }
            let dims = if self.batching() {
                let Some(&batch) = tensor.shape.first() else {
                    return Err(tagged(self.shape_error(spec, &tensor.shape)));
                };
                if batch < 1 || batch > i64::from(self.config.max_batch_size) {
                    return Err(tagged(Error::invalid_arg(format!(
                        "inference request batch-size must be <= {} for '{m}'",
                        self.config.max_batch_size
                    ))));
                }
                if *batch_size.get_or_insert(batch) != batch {
                    return Err(Error::invalid_arg(format!(
                        "input '{}' has batch size {batch}, but other inputs of the request have batch size {} for model '{m}'",
                        tensor.name,
                        batch_size.unwrap_or_default()
                    )));
                }
                &tensor.shape[1..]
            } else {
                &tensor.shape[..]
            };
            let matches = dims.len() == spec.dims.len()
                && dims.iter().zip(&spec.dims).all(|(d, s)| *s == -1 || d == s);
            if !matches {
                return Err(tagged(self.shape_error(spec, &tensor.shape)));
            }
            tensor.check_byte_size(m).map_err(tagged)?;
            if let Some(reshape) = &spec.reshape {
                tensor.shape = self.reshaped(&tensor, reshape)?;
            }
            inputs.push(tensor);
        }
        let integer = |key: &str| -> Result<Option<u64>, Error> {
            request
                .parameters
                .get(key)
                .map(|p| {
                    p.as_u64().ok_or_else(|| {
                        Error::invalid_arg(format!(
                            "parameter '{key}' must be a non-negative integer"
                        ))
                    })
                })
                .transpose()
        };
        Ok(Prepared {
            inputs,
            batch_size: batch_size.map_or(1, |b| b as u64),
            priority: integer("priority")?.unwrap_or(0),
            timeout: integer("timeout")?
                .filter(|t| *t > 0)
                .map(Duration::from_micros),
            outputs_on_device: request.outputs_on_device.is_some()
                && request.outputs_on_device == self.device,
        })
    }

    fn shape_error(&self, spec: &TensorSpec, got: &[i64]) -> Error {
        let mut message = format!(
            "unexpected shape for input '{}' for model '{}'. Expected {}, got {}",
            spec.name,
            self.name,
            shape_string(&self.client_shape(spec)),
            shape_string(got)
        );
        // Triton adds the note for batching models, whose shapes need the batch dimension.
        if self.batching() {
            message.push_str(". NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size.");
        }
        Error::invalid_arg(message)
    }

    fn reshaped(&self, tensor: &Tensor, reshape: &[i64]) -> Result<Vec<i64>, Error> {
        let mut shape = Vec::with_capacity(reshape.len() + 1);
        if self.batching() {
            shape.push(tensor.shape[0]);
        }
        let per_item = element_count(&tensor.name, &tensor.shape[usize::from(self.batching())..])?;
        let variable = reshape.iter().filter(|d| **d == -1).count();
        let fixed: i64 = reshape.iter().filter(|d| **d != -1).product();
        for &d in reshape {
            shape.push(if d == -1 && variable == 1 && fixed > 0 {
                per_item as i64 / fixed
            } else {
                d
            });
        }
        Ok(shape)
    }

    /// The ensemble plan, when this version is an ensemble.
    pub fn ensemble(&self) -> Option<&Arc<EnsemblePlan>> {
        match &self.executor {
            Executor::Ensemble(plan) => Some(plan),
            Executor::Scheduled(_) => None,
        }
    }

    /// Runs a prepared request through the model's own instances (not for ensembles, which
    /// `Infer` runs step by step).
    pub async fn execute(&self, prepared: Prepared) -> Result<Executed, Error> {
        let Executor::Scheduled(scheduler) = &self.executor else {
            return Err(Error::internal(format!(
                "ensemble '{}' has no instances of its own. This is a bug.",
                self.name
            )));
        };
        scheduler
            .submit(Submission {
                inputs: prepared.inputs,
                batch_size: prepared.batch_size,
                priority: prepared.priority,
                timeout: prepared.timeout,
                outputs_on_device: prepared.outputs_on_device,
            })
            .await
    }

    /// Whether a request would be admitted to the queue now (see
    /// [`crate::scheduler::WaitLimit`]): the HTTP front end asks before reading a body, so that
    /// refusing overload costs no parsing. An ensemble admits at its steps.
    pub fn admits(&self) -> Result<(), Error> {
        match &self.executor {
            Executor::Scheduled(scheduler) => scheduler.admits(),
            Executor::Ensemble(_) => Ok(()),
        }
    }

    /// Requests queued and not yet executing.
    pub fn pending(&self) -> u64 {
        match &self.executor {
            Executor::Scheduled(scheduler) => scheduler.pending(),
            Executor::Ensemble(_) => 0,
        }
    }

    /// Keeps the requested outputs (all when none are listed), giving them the client's shape
    /// and applying classification.
    pub fn finish_outputs(
        &self,
        request: &InferRequest,
        outputs: Vec<Tensor>,
        batch_size: u64,
    ) -> Result<Vec<Tensor>, Error> {
        let mut selected = Vec::with_capacity(outputs.len());
        for mut tensor in outputs {
            let requested = if request.outputs.is_empty() {
                None
            } else {
                match request.outputs.iter().find(|o| o.name == tensor.name) {
                    Some(r) => Some(r),
                    None => continue,
                }
            };
            let spec = self.outputs.iter().find(|s| s.name == tensor.name);
            if let Some(spec) = spec.filter(|s| s.reshape.is_some()) {
                // Back from the backend's reshaped form to the declared dims.
                let mut shape = Vec::new();
                if self.batching() {
                    shape.push(batch_size as i64);
                }
                let per_item = tensor.element_count()? / batch_size.max(1) as usize;
                let fixed: i64 = spec.dims.iter().filter(|d| **d != -1).product();
                shape.extend(spec.dims.iter().map(|&d| {
                    if d == -1 && fixed > 0 {
                        per_item as i64 / fixed
                    } else {
                        d
                    }
                }));
                tensor.shape = shape;
            }
            if let Some(k) = requested.and_then(|r| r.classification) {
                let labels = spec.and_then(|s| s.labels.as_deref());
                tensor = classify(&tensor, k, self.batching(), labels)?;
            }
            selected.push(tensor);
        }
        Ok(selected)
    }
}

/// Starts the version's monitor when it has a `reference.json` (unless the config turns
/// monitoring off) or the config turns it on; a reference or setting that cannot be used fails
/// the load with the reason.
fn start_monitor(
    config: &ModelConfig,
    outputs: &[TensorSpec],
    version_dir: &Path,
    version: u64,
    monitoring: &MonitorSettings,
) -> Result<Option<Arc<VersionMonitor>>, Error> {
    use nereid_monitor::reference::REFERENCE_FILE;
    use nereid_monitor::{Layout, Monitor, MonitorConfig, Reference};
    let name = &config.name;
    let fail = |message: String| {
        Error::invalid_arg(format!(
            "failed to start the monitor of model '{name}' version {version}: {message}"
        ))
    };
    let settings = MonitorConfig::from_parameters(
        config
            .parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.string_value.as_str())),
    )
    .map_err(fail)?;
    let path = version_dir.join(REFERENCE_FILE);
    let reference = match (settings.enabled, path.is_file()) {
        (Some(false), _) | (None, false) => return Ok(None),
        (Some(true), false) => {
            return Err(fail(format!(
                "'nereid.monitor.enabled' is true but {} is missing (create it with `nereid monitor reference`)",
                path.display()
            )))
        }
        (_, true) => Reference::read(&path).map_err(|e| fail(e.to_string()))?,
    };
    let labels = outputs
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.labels.as_deref()?.clone())))
        .collect();
    let layout = Layout::from_config(config, labels);
    let monitor =
        Monitor::new(name, version, &reference, &settings, &layout).map_err(|e| fail(e.0))?;
    let log_dir = monitoring
        .log_dir
        .as_ref()
        .map(|root| root.join(name).join(version.to_string()));
    let started = VersionMonitor::start(
        monitor,
        &reference,
        &settings,
        log_dir.as_deref(),
        &monitoring.log,
        settings.delay_per_sample,
    )?;
    tracing::info!(model = %name, version, window = %settings.window.describe(), sample_rate = settings.sample_rate, "monitoring");
    Ok(Some(started))
}

/// `['A','B']`, the way Triton lists tensor names in messages.
fn python_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(","))
}

fn spec(
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<Vec<i64>>,
    optional: bool,
    labels: Option<Arc<Vec<String>>>,
) -> Result<TensorSpec, Error> {
    let datatype = DataType::from_config(data_type)
        .ok_or_else(|| Error::invalid_arg(format!("tensor '{name}' must specify 'data_type'")))?;
    Ok(TensorSpec {
        name: name.to_string(),
        datatype,
        dims: dims.to_vec(),
        reshape,
        optional,
        labels,
    })
}

fn read_labels(path: &Path) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid_arg(format!("failed to read label file {}: {e}", path.display()))
    })?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// The classification extension: the top `k` entries of each batch item as
/// `"<value>:<index>[:<label>]"` strings (value printed like C's `%f`), shape `[batch, k]`.
pub fn classify(
    tensor: &Tensor,
    k: u32,
    batched: bool,
    labels: Option<&Vec<String>>,
) -> Result<Tensor, Error> {
    let values: Vec<f64> = match tensor.datatype {
        DataType::Bool | DataType::Uint8 => tensor.data.iter().map(|v| f64::from(*v)).collect(),
        DataType::Int8 => tensor.to_vec::<i8>().into_iter().map(f64::from).collect(),
        DataType::Uint16 => tensor.to_vec::<u16>().into_iter().map(f64::from).collect(),
        DataType::Int16 => tensor.to_vec::<i16>().into_iter().map(f64::from).collect(),
        DataType::Uint32 => tensor.to_vec::<u32>().into_iter().map(f64::from).collect(),
        DataType::Int32 => tensor.to_vec::<i32>().into_iter().map(f64::from).collect(),
        DataType::Uint64 => tensor
            .to_vec::<u64>()
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        DataType::Int64 => tensor
            .to_vec::<i64>()
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        DataType::Fp16 => tensor
            .to_vec::<u16>()
            .into_iter()
            .map(|v| f64::from(half::f16::from_bits(v)))
            .collect(),
        DataType::Bf16 => tensor
            .to_vec::<u16>()
            .into_iter()
            .map(|v| f64::from(half::bf16::from_bits(v)))
            .collect(),
        DataType::Fp32 => tensor.to_vec::<f32>().into_iter().map(f64::from).collect(),
        DataType::Fp64 => tensor.to_vec::<f64>(),
        DataType::Bytes => {
            return Err(Error::invalid_arg(
                "class result not available for output due to unsupported type 'BYTES'".to_string(),
            ))
        }
    };
    let rows = if batched {
        tensor.shape.first().copied().unwrap_or(1).max(1) as usize
    } else {
        1
    };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    let k = (k as usize).min(per_row);
    let mut strings = Vec::with_capacity(rows * k);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Highest first; ties keep the lower index first, NaN sorts last.
        order.sort_by(|&a, &b| {
            row[b]
                .partial_cmp(&row[a])
                .unwrap_or_else(|| row[a].is_nan().cmp(&row[b].is_nan()))
                .then(a.cmp(&b))
        });
        for &index in order.iter().take(k) {
            let mut s = format!("{:.6}:{index}", row[index]);
            if let Some(label) = labels.and_then(|l| l.get(index)) {
                s.push(':');
                s.push_str(label);
            }
            strings.push(s);
        }
    }
    let shape = if batched {
        vec![rows as i64, k as i64]
    } else {
        vec![k as i64]
    };
    let data = encode_bytes_elements(&strings);
    debug_assert_eq!(bytes_elements(&data).count(), strings.len());
    Ok(Tensor::new(
        tensor.name.clone(),
        DataType::Bytes,
        shape,
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_strings() {
        let t = Tensor::from_f32("P", vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.25, 0.25]);
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let out = classify(&t, 2, true, Some(&labels)).unwrap();
        assert_eq!(out.shape, vec![2, 2]);
        let strings: Vec<&[u8]> = bytes_elements(&out.data).map(|e| e.unwrap()).collect();
        assert_eq!(
            strings,
            vec![
                &b"0.700000:1:b"[..],
                b"0.200000:2:c",
                b"0.500000:0:a",
                b"0.250000:1:b"
            ]
        );
        // k larger than the row is clamped; no labels means no third field.
        let out = classify(&Tensor::from_f32("P", vec![2], &[1.0, 3.0]), 5, false, None).unwrap();
        assert_eq!(out.shape, vec![2]);
        let strings: Vec<&[u8]> = bytes_elements(&out.data).map(|e| e.unwrap()).collect();
        assert_eq!(strings, vec![&b"3.000000:1"[..], b"1.000000:0"]);
    }
}
