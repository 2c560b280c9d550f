//! [`Infer`]: the one cloneable handle that both front ends call. Model resolution, validation,
//! execution, output selection and statistics happen here, once, for HTTP and gRPC alike.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_protocol::inference::{ModelStatisticsResponse, ServerMetadataResponse};
use nereid_protocol::{Code, Error, InferRequest, InferResponse, RequestedOutput, Tensor};

use crate::ensemble::EnsemblePlan;
use crate::model::ModelVersion;
use crate::registry::{ControlMode, LoadOverride, ModelRegistry};
use crate::remote::RemoteRepository;
use crate::scheduler::Executed;
use crate::shared_memory::SharedMemory;
use crate::stats::{ExecutionTimes, FailureReason};

/// Extensions of the protocol this server implements, as listed in server metadata.
pub const EXTENSIONS: [&str; 9] = [
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "statistics",
    "logging",
    "trace",
];

/// The error every load/unload call gets outside explicit model control mode (Triton's text).
pub const MODEL_CONTROL_DISABLED: &str =
    "explicit model load / unload is not allowed if polling is enabled";

#[derive(Clone)]
pub struct Infer {
    registry: Arc<ModelRegistry>,
    /// Cleared when shutdown starts, so that readiness turns false while requests drain.
    accepting: Arc<AtomicBool>,
    strict_readiness: bool,
    /// The object store behind the local repository, when it is remote.
    remote: Option<Arc<tokio::sync::Mutex<RemoteRepository>>>,
    /// Retraining triggers, when the server was given a triggers file.
    triggers: Option<Arc<crate::lifecycle::triggers::RunningTriggers>>,
    /// Registered system shared-memory regions.
    shared_memory: Arc<SharedMemory>,
    /// The response cache (`--cache-config`), shared with the versions that use it.
    response_cache: Option<Arc<crate::cache::ResponseCache>>,
    /// The logging extension's settings.
    log_control: Arc<crate::logging::LogControl>,
    /// The trace extension's sampling and files.
    tracer: Arc<crate::trace::Tracer>,
}

/// How a request got its outputs.
enum Answered {
    Executed {
        queue: Duration,
        times: ExecutionTimes,
    },
    FromCache {
        lookup: Duration,
    },
}

impl Infer {
    pub fn new(registry: Arc<ModelRegistry>, strict_readiness: bool) -> Self {
        Infer {
            registry,
            accepting: Arc::new(AtomicBool::new(true)),
            strict_readiness,
            remote: None,
            triggers: None,
            shared_memory: Arc::default(),
            response_cache: None,
            log_control: Arc::default(),
            tracer: Arc::default(),
        }
    }

    pub fn with_tracer(mut self, tracer: Arc<crate::trace::Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The trace extension's settings and sampler.
    pub fn tracer(&self) -> &crate::trace::Tracer {
        &self.tracer
    }

    /// Writes the traces taken but not yet written (shutdown).
    pub fn flush_traces(&self) {
        self.tracer.flush();
    }

    pub fn with_log_control(mut self, control: Arc<crate::logging::LogControl>) -> Self {
        self.log_control = control;
        self
    }

    /// The logging extension's settings and their hook.
    pub fn log_control(&self) -> &crate::logging::LogControl {
        &self.log_control
    }

    pub fn with_response_cache(mut self, cache: Option<Arc<crate::cache::ResponseCache>>) -> Self {
        self.response_cache = cache;
        self
    }

    /// The system shared-memory regions clients registered.
    pub fn shared_memory(&self) -> &SharedMemory {
        &self.shared_memory
    }

    pub fn with_triggers(
        mut self,
        triggers: Option<Arc<crate::lifecycle::triggers::RunningTriggers>>,
    ) -> Self {
        self.triggers = triggers;
        self
    }

    /// The trigger service, or why there is none.
    pub fn triggers(&self) -> Result<&nereid_pipeline::triggers::Triggers, Error> {
        self.triggers.as_ref().map(|t| &t.triggers).ok_or_else(|| {
            Error::invalid_arg("no triggers are configured: start the server with --triggers FILE")
        })
    }

    /// Stops evaluating triggers (shutdown); actions already running finish.
    pub fn stop_triggers(&self) {
        if let Some(t) = &self.triggers {
            t.stop();
        }
    }

    pub fn with_remote(
        mut self,
        remote: Option<Arc<tokio::sync::Mutex<RemoteRepository>>>,
    ) -> Self {
        self.remote = remote;
        self
    }

    /// Mirrors the remote repository into the local cache (nothing for a local repository).
    pub async fn sync_remote(&self) -> Result<(), Error> {
        if let Some(remote) = &self.remote {
            let summary = remote.lock().await.sync().await.map_err(|e| {
                Error::internal(format!("failed to sync the model repository: {e}"))
            })?;
            if summary.changed() {
                tracing::info!(%summary, "synced remote model repository");
            }
        }
        Ok(())
    }

    pub fn registry(&self) -> &ModelRegistry {
        &self.registry
    }

    pub fn registry_handle(&self) -> Arc<ModelRegistry> {
        Arc::clone(&self.registry)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    pub fn is_live(&self) -> bool {
        true
    }

    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
            && (!self.strict_readiness || self.registry.everything_ready())
    }

    /// The load API: loads or reloads a model on a blocking thread and waits for the result.
    pub async fn load_model(
        &self,
        name: &str,
        overrides: Option<LoadOverride>,
    ) -> Result<(), Error> {
        self.check_model_control()?;
        self.sync_remote().await?;
        let registry = Arc::clone(&self.registry);
        let name = name.to_string();
        tokio::task::spawn_blocking(move || registry.load(&name, overrides))
            .await
            .map_err(|e| Error::internal(format!("model load panicked: {e}")))?
    }

    /// The unload API: returns once the model no longer takes requests; in-flight ones finish.
    pub async fn unload_model(&self, name: &str, unload_dependents: bool) -> Result<(), Error> {
        self.check_model_control()?;
        let registry = Arc::clone(&self.registry);
        let name = name.to_string();
        tokio::task::spawn_blocking(move || registry.unload(&name, unload_dependents))
            .await
            .map_err(|e| Error::internal(format!("model unload panicked: {e}")))?
    }

    fn check_model_control(&self) -> Result<(), Error> {
        if self.registry.mode() == ControlMode::Explicit {
            Ok(())
        } else {
            Err(Error::unavailable(MODEL_CONTROL_DISABLED))
        }
    }

    /// Server metadata: name, version and the extensions this server implements.
    pub fn server_metadata(&self) -> ServerMetadataResponse {
        ServerMetadataResponse {
            name: "nereid".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }
    }

    /// The statistics extension: every ready version (empty name), every ready version of a
    /// model (empty version), or one version; unknown or unready models give the lookup error.
    pub fn statistics(&self, name: &str, version: &str) -> Result<ModelStatisticsResponse, Error> {
        let models = if name.is_empty() {
            self.registry.all_ready()
        } else if version.is_empty() {
            let all: Vec<_> = self
                .registry
                .all_ready()
                .into_iter()
                .filter(|m| m.name == name)
                .collect();
            if all.is_empty() {
                // Resolve again for the precise error (unknown vs. not ready).
                vec![self.model(name, version)?]
            } else {
                all
            }
        } else {
            vec![self.model(name, version)?]
        };
        Ok(ModelStatisticsResponse {
            model_stats: models
                .iter()
                .map(|m| m.stats.to_message(&m.name, m.version))
                .collect(),
        })
    }

    pub fn model(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>, Error> {
        self.registry.get(name, version)
    }

    /// The monitor of a model version, or why there is none.
    pub fn monitored(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<crate::lifecycle::VersionMonitor>, Error> {
        let model = self.model(name, version)?;
        model.monitor.clone().ok_or_else(|| {
            Error::invalid_arg(format!(
                "model '{name}' version {} is not monitored: it has no reference.json (create one with `nereid monitor reference`) or its config sets nereid.monitor.enabled to false",
                model.version
            ))
        })
    }

    /// Whether a model version is ready; unknown models are simply not ready.
    pub fn model_ready(&self, name: &str, version: &str) -> bool {
        self.registry.get(name, version).is_ok()
    }

    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        request: InferRequest,
    ) -> Result<InferResponse, Error> {
        let model = self.model(name, version)?;
        self.infer_on(&model, request).await
    }

    /// Runs a request on an already resolved model version.
    pub async fn infer_on(
        &self,
        model: &ModelVersion,
        mut request: InferRequest,
    ) -> Result<InferResponse, Error> {
        let started = Instant::now();
        let trace = self.tracer.sample(&model.name);
        let traced_id = trace.as_ref().map(|_| request.id.clone());
        let mut phases = None;
        let result = async {
            self.read_input_regions(model, &mut request)
                .map_err(|err| (err, FailureReason::Other))?;
            // A stateful model: wait for this request's turn in its sequence.
            let held = match &model.sequences {
                Some(sequences) => {
                    let flags = crate::sequence::flags(&request, &model.name)
                        .map_err(|err| (err, FailureReason::Other))?;
                    Some(
                        sequences
                            .hold(flags, &model.name)
                            .await
                            .map_err(|err| (err, FailureReason::Other))?,
                    )
                }
                None => None,
            };
            let mut prepared = model
                .prepare(&mut request)
                .map_err(|err| (err, FailureReason::Other))?;
            if let (Some(sequences), Some(held)) = (&model.sequences, &held) {
                prepared.inputs.extend(sequences.extra_tensors(held));
            }
            // The response cache: a hit answers now; a miss is stored once answered.
            let cached = model.response_cache.as_ref().map(|cache| {
                let looked_up = Instant::now();
                let key = crate::cache::key(
                    &model.name,
                    model.version,
                    model.load_id,
                    &prepared.inputs,
                    &request.outputs,
                );
                let hit = cache.lookup(&key);
                (cache, key, hit, looked_up.elapsed())
            });
            let miss = match cached {
                Some((_, _, Some(mut outputs), lookup)) => {
                    self.write_output_regions(&request, &mut outputs)
                        .map_err(|err| (err, FailureReason::Other))?;
                    return Ok((outputs, Answered::FromCache { lookup }));
                }
                Some((cache, key, None, lookup)) => Some((cache, key, lookup)),
                None => None,
            };
            // The monitor's share of requests: their validated inputs and raw outputs are
            // offered to it once answered (a sampled request without an id gets one, returned
            // in the response, so that feedback can name it).
            let tap = model
                .monitor
                .as_ref()
                .and_then(|m| Some((m, m.sample(&prepared.inputs)?)));
            if let Some((monitor, _)) = &tap {
                if request.id.is_empty() {
                    request.id = monitor.next_id();
                }
            }
            let batch_size = prepared.batch_size;
            let executed = match model.ensemble() {
                Some(plan) => {
                    let outputs = self
                        .run_ensemble(model, plan, prepared.inputs)
                        .await
                        .map_err(|err| (err, FailureReason::Other))?;
                    model
                        .stats
                        .record_execution(batch_size, ExecutionTimes::default());
                    Executed {
                        outputs,
                        queue: Duration::ZERO,
                        times: ExecutionTimes::default(),
                    }
                }
                None => {
                    let queue_start = started.elapsed();
                    let executed = model.execute(prepared).await;
                    if let Ok(executed) = &executed {
                        phases = Some(crate::trace::Phases {
                            queue_start,
                            queue: executed.queue,
                            compute_input: executed.times.compute_input,
                            compute_infer: executed.times.compute_infer,
                            compute_output: executed.times.compute_output,
                        });
                    }
                    executed
                }
                .map_err(|err| {
                    let reason = match err.code {
                        Code::Unavailable => FailureReason::Rejected,
                        Code::Cancelled => FailureReason::Canceled,
                        _ => FailureReason::Backend,
                    };
                    (err, reason)
                })?,
            };
            let mut executed = executed;
            if let (Some(sequences), Some(held)) = (&model.sequences, held) {
                sequences
                    .finish(held, &mut executed.outputs, &model.name)
                    .map_err(|err| (err, FailureReason::Other))?;
            }
            if let Some((monitor, tap)) = tap {
                monitor.offer(tap, &request.id, &executed.outputs);
            }
            let mut outputs = model
                .finish_outputs(&request, executed.outputs, batch_size)
                .map_err(|err| (err, FailureReason::Other))?;
            if let Some((cache, key, lookup)) = miss {
                let inserting = Instant::now();
                cache.insert(key, &outputs);
                model.stats.record_cache_miss(lookup + inserting.elapsed());
            }
            self.write_output_regions(&request, &mut outputs)
                .map_err(|err| (err, FailureReason::Other))?;
            Ok::<_, (Error, FailureReason)>((
                outputs,
                Answered::Executed {
                    queue: executed.queue,
                    times: executed.times,
                },
            ))
        }
        .await;
        if let (Some(trace), Some(id)) = (trace, traced_id) {
            self.tracer
                .finish(trace, &model.name, model.version, &id, phases);
        }
        match result {
            Ok((outputs, answered)) => {
                match answered {
                    Answered::Executed { queue, times } => {
                        model.stats.record_success(started.elapsed(), queue, times)
                    }
                    Answered::FromCache { lookup } => {
                        model.stats.record_cache_hit(started.elapsed(), lookup)
                    }
                }
                Ok(InferResponse {
                    model_name: model.name.clone(),
                    model_version: model.version.to_string(),
                    id: request.id,
                    parameters: Default::default(),
                    outputs,
                })
            }
            Err((err, reason)) => {
                model.stats.record_failure(started.elapsed(), reason);
                Err(err)
            }
        }
    }

    /// The response cache this server was started with (`--cache-config`), if any.
    pub fn response_cache(&self) -> Option<&Arc<crate::cache::ResponseCache>> {
        self.response_cache.as_ref()
    }

    /// Fills the inputs whose data is in shared memory.
    fn read_input_regions(
        &self,
        model: &ModelVersion,
        request: &mut InferRequest,
    ) -> Result<(), Error> {
        if request.input_regions.is_empty() {
            return Ok(());
        }
        for tensor in &mut request.inputs {
            if let Some(region) = request.input_regions.get(&tensor.name) {
                tensor.data = self.shared_memory.read(region)?;
                tensor.check_byte_size(&model.name)?;
            }
        }
        Ok(())
    }

    /// Writes the outputs the request wants in shared memory there; their tensors keep their
    /// name, datatype and shape, without data.
    fn write_output_regions(
        &self,
        request: &InferRequest,
        outputs: &mut [Tensor],
    ) -> Result<(), Error> {
        for requested in &request.outputs {
            let Some(region) = &requested.shared_memory else {
                continue;
            };
            if let Some(tensor) = outputs.iter_mut().find(|t| t.name == requested.name) {
                self.shared_memory
                    .write(region, &tensor.name, &tensor.data)?;
                tensor.data = bytes::Bytes::new();
            }
        }
        Ok(())
    }

    /// Runs an ensemble's steps as their inputs become ready (independent steps concurrently),
    /// each through its composing model's own scheduler. Boxed: a step may itself be an
    /// ensemble, which makes this recursive.
    fn run_ensemble<'a>(
        &'a self,
        ensemble: &'a ModelVersion,
        plan: &'a EnsemblePlan,
        inputs: Vec<Tensor>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Tensor>, Error>> + Send + 'a>> {
        Box::pin(async move {
            let prefix = |err: Error| {
                Error::new(
                    err.code,
                    format!("in ensemble '{}', {}", ensemble.name, err.message),
                )
            };
            // Every step's model, resolved once, so that one request sees one set of versions.
            let models = plan
                .steps
                .iter()
                .map(|step| self.model(&step.model, &step.version))
                .collect::<Result<Vec<_>, _>>()
                .map_err(prefix)?;
            let devices: Vec<Option<usize>> = models.iter().map(|m| m.device).collect();
            let ensemble_outputs: Vec<&str> =
                ensemble.outputs.iter().map(|o| o.name.as_str()).collect();
            let outputs_on_device = plan.device_outputs(&devices, &ensemble_outputs);
            let mut tensors: HashMap<String, Tensor> =
                inputs.into_iter().map(|t| (t.name.clone(), t)).collect();
            let mut done = vec![false; plan.steps.len()];
            while done.iter().any(|d| !d) {
                let ready: Vec<usize> = (0..plan.steps.len())
                    .filter(|&i| {
                        !done[i]
                            && plan.steps[i]
                                .inputs
                                .iter()
                                .all(|(_, t)| tensors.contains_key(t))
                    })
                    .collect();
                if ready.is_empty() {
                    return Err(Error::internal(format!(
                        "ensemble '{}' cannot make progress. This is a bug.",
                        ensemble.name
                    )));
                }
                let runs = ready.iter().map(|&i| {
                    let step = &plan.steps[i];
                    let request = InferRequest {
                        inputs: step
                            .inputs
                            .iter()
                            .map(|(model_input, tensor)| Tensor {
                                name: model_input.clone(),
                                ..tensors[tensor].clone()
                            })
                            .collect(),
                        outputs: step
                            .outputs
                            .iter()
                            .map(|(model_output, _)| RequestedOutput {
                                name: model_output.clone(),
                                ..Default::default()
                            })
                            .collect(),
                        outputs_on_device: outputs_on_device[i],
                        ..Default::default()
                    };
                    self.infer_on(&models[i], request)
                });
                let results = futures_util::future::join_all(runs).await;
                for (&i, result) in ready.iter().zip(results) {
                    let response = result.map_err(prefix)?;
                    for output in response.outputs {
                        if let Some((_, tensor)) = plan.steps[i]
                            .outputs
                            .iter()
                            .find(|(o, _)| *o == output.name)
                        {
                            tensors.insert(
                                tensor.clone(),
                                Tensor {
                                    name: tensor.clone(),
                                    ..output
                                },
                            );
                        }
                    }
                    done[i] = true;
                }
            }
            ensemble
                .outputs
                .iter()
                .map(|spec| {
                    let tensor = tensors.remove(&spec.name).ok_or_else(|| {
                        Error::internal(format!(
                            "in ensemble '{}', no step produced output '{}'",
                            ensemble.name, spec.name
                        ))
                    })?;
                    // Ensemble outputs are asked for on the host; this only guards that.
                    tensor.into_host()
                })
                .collect()
        })
    }
}
