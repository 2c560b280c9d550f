//! The server's side of retraining triggers: the monitors as the trigger service's
//! observation source, and the service's start and stop with the server.

use std::sync::Arc;

use nereid_monitor::performance::Metrics;
use nereid_monitor::DriftReport;
use nereid_pipeline::triggers::{Observe, Triggers};

use crate::registry::ModelRegistry;

/// Drift windows and live metrics of the version a model serves (or a pinned one).
pub struct Monitors(pub Arc<ModelRegistry>);

impl Monitors {
    fn monitor(
        &self,
        model: &str,
        version: Option<u64>,
    ) -> Option<(u64, Arc<super::VersionMonitor>)> {
        let wanted = version.map(|v| v.to_string()).unwrap_or_default();
        let served = self.0.get(model, &wanted).ok()?;
        let monitor = served.monitor.clone()?;
        Some((served.version, monitor))
    }
}

impl Observe for Monitors {
    fn drift(&self, model: &str, version: Option<u64>) -> Option<(u64, Vec<Arc<DriftReport>>)> {
        let (v, monitor) = self.monitor(model, version)?;
        Some((v, monitor.history()))
    }

    fn metrics(&self, model: &str, version: Option<u64>) -> Option<(u64, Metrics)> {
        let (v, monitor) = self.monitor(model, version)?;
        let performance = monitor.performance();
        Some((v, performance.latest_window.unwrap_or(performance.total)))
    }
}

/// The running trigger service; its thread stops at [`RunningTriggers::stop`] or when this is
/// dropped. Actions already started finish on their own threads.
pub struct RunningTriggers {
    pub triggers: Triggers,
    stop: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl RunningTriggers {
    pub fn stop(&self) {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Starts the service's thread over the registry's monitors.
pub fn start(triggers: Triggers, registry: Arc<ModelRegistry>) -> anyhow::Result<RunningTriggers> {
    let stop = triggers
        .spawn(Arc::new(Monitors(registry)))
        .map_err(|e| anyhow::anyhow!("cannot start the trigger thread: {e}"))?;
    Ok(RunningTriggers {
        triggers,
        stop: std::sync::Mutex::new(Some(stop)),
    })
}
