//! [`Infer`]: the one cloneable handle that both front ends call. Model resolution, validation,
//! execution, output selection and statistics happen here, once, for HTTP and gRPC alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nereid_protocol::{Error, InferRequest, InferResponse};

use crate::model::ModelVersion;
use crate::registry::ModelRegistry;

/// Extensions of the protocol this server implements, as listed in server metadata.
pub const EXTENSIONS: [&str; 5] = [
    "classification",
    "model_repository",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
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
}

impl Infer {
    pub fn new(registry: Arc<ModelRegistry>, strict_readiness: bool) -> Self {
        Infer {
            registry,
            accepting: Arc::new(AtomicBool::new(true)),
            strict_readiness,
        }
    }

    pub fn registry(&self) -> &ModelRegistry {
        &self.registry
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

    pub fn model(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>, Error> {
        self.registry.get(name, version)
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
        let result = async {
            let prepared = model.prepare(&mut request)?;
            let batch_size = prepared.batch_size;
            let executed = model.execute(prepared).await?;
            let outputs = model.finish_outputs(&request, executed.outputs, batch_size)?;
            Ok::<_, Error>((outputs, executed.queue, executed.times))
        }
        .await;
        match result {
            Ok((outputs, queue, times)) => {
                model.stats.record_success(started.elapsed(), queue, times);
                Ok(InferResponse {
                    model_name: model.name.clone(),
                    model_version: model.version.to_string(),
                    id: request.id,
                    parameters: Default::default(),
                    outputs,
                })
            }
            Err(err) => {
                model.stats.record_failure(started.elapsed());
                Err(err)
            }
        }
    }
}
