//! Retraining triggers: what starts a pipeline run (or a webhook, or an Airflow DAG run), and the
//! record of every firing.
//!
//! Data flow: [`config`] parses `triggers.toml`; [`engine::Engine`] holds each trigger's state
//! and turns observations into decisions (fire, or suppress and why); [`Triggers`] owns the
//! engine, the [`record`] (append-only firings, persisted state, captured logs) and a thread
//! that once a second reloads a changed file, ticks schedules, polls watched datasets and asks
//! its [`Observe`] source (the server's monitors) for new drift windows and live metrics. Each
//! firing's [`action`] runs on a thread of its own at low CPU priority, never on the caller's.

pub mod action;
pub mod cli;
pub mod config;
pub mod engine;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use nereid_monitor::performance::Metrics;
use nereid_monitor::DriftReport;
use serde::Serialize;

use crate::store::FeatureStore;
use crate::util::new_run_id;
pub use config::{Action, Condition, Trigger, TriggersFile};
pub use engine::{Decision, Engine, Reason, Verdict};
pub use record::{Firing, FiringStatus, History, Outcome, Record};

/// Where drift and metric triggers look: the serving side implements this.
pub trait Observe: Send + Sync {
    /// The closed drift windows (oldest first) of `model`: of `version`, or of the version
    /// being served when `None`; with the version they belong to.
    fn drift(&self, model: &str, version: Option<u64>) -> Option<(u64, Vec<Arc<DriftReport>>)>;
    /// The live metrics of the same version: the latest complete window of labels when there is
    /// one, else every label so far.
    fn metrics(&self, model: &str, version: Option<u64>) -> Option<(u64, Metrics)>;
}

/// How often the trigger thread looks, by default.
pub const POLL: Duration = Duration::from_secs(1);
/// How often watched datasets are listed, by default (object stores are not free to list).
pub const DATASET_POLL: Duration = Duration::from_secs(10);
/// Firings kept in memory for listings (the record keeps all).
const RECENT: usize = 1000;

/// Settings of the trigger service.
#[derive(Debug, Clone)]
pub struct TriggerSettings {
    pub file: PathBuf,
    pub record_dir: PathBuf,
    /// The `nereid` executable that pipeline actions run.
    pub nereid: PathBuf,
    pub poll: Duration,
    pub dataset_poll: Duration,
}

impl TriggerSettings {
    pub fn new(file: PathBuf, record_dir: PathBuf, nereid: PathBuf) -> TriggerSettings {
        TriggerSettings {
            file,
            record_dir,
            nereid,
            poll: POLL,
            dataset_poll: DATASET_POLL,
        }
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// (trigger, reason kind) -> firings.
    pub fired: BTreeMap<(String, String), u64>,
    pub suppressed: BTreeMap<String, u64>,
    pub last_fired: BTreeMap<String, DateTime<Utc>>,
}

/// A trigger as `GET /v2/triggers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerStatus {
    pub id: String,
    pub kind: &'static str,
    pub condition: String,
    pub cooldown_s: u64,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_due: Option<DateTime<Utc>>,
    /// Drift triggers: the last closed window they counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_window: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub file: PathBuf,
    /// Why the file on disk is not in force (the previous triggers stay), if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_error: Option<String>,
    pub triggers: Vec<TriggerStatus>,
    /// Newest first.
    pub firings: Vec<Firing>,
}

/// Why a manual firing was refused.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("unknown trigger '{0}'")]
    Unknown(String),
    #[error("{0}")]
    Record(String),
}

struct Loaded {
    engine: Engine,
    stamp: Option<(SystemTime, u64)>,
    file_error: Option<String>,
    recent: Vec<Firing>,
    counters: Counters,
    last_dataset_poll: Option<Instant>,
    /// What `state.json` holds, so that it is rewritten only when the state changed.
    saved: BTreeMap<String, engine::Persisted>,
}

struct Inner {
    settings: TriggerSettings,
    record: Record,
    loaded: Mutex<Loaded>,
}

/// The trigger service. Cheap to clone.
#[derive(Clone)]
pub struct Triggers {
    inner: Arc<Inner>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Triggers {
    /// Loads the file (a bad file is an error: the server does not start with it) and the
    /// record; firings whose action never finished (the process stopped) get an outcome that
    /// says so.
    pub fn open(settings: TriggerSettings) -> anyhow::Result<Triggers> {
        let file = TriggersFile::load(&settings.file)?;
        let record = Record::open(&settings.record_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the trigger record {}: {e}",
                settings.record_dir.display()
            )
        })?;
        let persisted = record.load_state()?;
        let mut history = record.read()?;
        if history.unreadable_lines > 0 {
            tracing::warn!(
                lines = history.unreadable_lines,
                record = %settings.record_dir.display(),
                "skipped unreadable lines of the trigger record"
            );
        }
        let mut counters = Counters::default();
        for f in &mut history.firings {
            match f.status {
                FiringStatus::Fired => {
                    *counters
                        .fired
                        .entry((f.trigger.clone(), f.reason.kind.clone()))
                        .or_default() += 1;
                    counters.last_fired.insert(f.trigger.clone(), f.time);
                    if f.outcome.is_none() {
                        let outcome = Outcome {
                            finished: Utc::now(),
                            succeeded: false,
                            detail: "interrupted: the server stopped before the action finished"
                                .into(),
                            run_id: None,
                            attempts: 0,
                            log: None,
                        };
                        record.append_outcome(&f.id, &outcome)?;
                        f.outcome = Some(outcome);
                    }
                }
                FiringStatus::Suppressed => {
                    *counters.suppressed.entry(f.trigger.clone()).or_default() += 1
                }
            }
        }
        let skip = history.firings.len().saturating_sub(RECENT);
        let recent = history.firings.split_off(skip);
        let engine = Engine::new(file.triggers, &persisted, Utc::now());
        Ok(Triggers {
            inner: Arc::new(Inner {
                record,
                loaded: Mutex::new(Loaded {
                    engine,
                    stamp: file_stamp(&settings.file),
                    file_error: None,
                    recent,
                    counters,
                    last_dataset_poll: None,
                    saved: persisted,
                }),
                settings,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> &TriggerSettings {
        &self.inner.settings
    }

    /// Reloads the file if it changed on disk. A file that no longer parses leaves the
    /// triggers in force as they were and is reported in the status (and logged once).
    pub fn reload_if_changed(&self) {
        let path = &self.inner.settings.file;
        let stamp = file_stamp(path);
        let mut loaded = self.lock();
        if stamp == loaded.stamp {
            return;
        }
        loaded.stamp = stamp;
        match TriggersFile::load(path) {
            Ok(file) => {
                let persisted = loaded.engine.persisted();
                let count = file.triggers.len();
                loaded.engine.replace(file.triggers, &persisted, Utc::now());
                loaded.file_error = None;
                tracing::info!(file = %path.display(), triggers = count, "reloaded triggers");
            }
            Err(e) => {
                tracing::error!(error = %e, "the changed triggers file is refused; the previous triggers stay in force");
                loaded.file_error = Some(e.to_string());
            }
        }
    }

    /// One round: reload, schedules, datasets (every `dataset_poll`), drift and metrics.
    pub fn poll(&self, source: &dyn Observe) {
        self.reload_if_changed();
        let now = Utc::now();
        let (models, datasets) = {
            let mut loaded = self.lock();
            let decisions = loaded.engine.tick(now);
            self.apply_locked(&mut loaded, decisions);
            let datasets_due = loaded
                .last_dataset_poll
                .is_none_or(|t| t.elapsed() >= self.inner.settings.dataset_poll);
            let datasets = if datasets_due {
                loaded.last_dataset_poll = Some(Instant::now());
                loaded.engine.watched_datasets()
            } else {
                Vec::new()
            };
            (loaded.engine.watched_models(), datasets)
        };
        for (store, dataset) in datasets {
            match latest_version(&store, &dataset) {
                Ok(Some((seq, id))) => {
                    let mut loaded = self.lock();
                    let decisions =
                        loaded
                            .engine
                            .observe_dataset(&store, &dataset, seq, &id, Utc::now());
                    self.apply_locked(&mut loaded, decisions);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(store = %store, dataset = %dataset, error = %e, "cannot list the dataset for a new_data trigger")
                }
            }
        }
        for (model, version) in models {
            let drift = source.drift(&model, version);
            let metrics = source.metrics(&model, version);
            let mut loaded = self.lock();
            let now = Utc::now();
            if let Some((v, reports)) = drift {
                let decisions = loaded.engine.observe_drift(&model, v, &reports, now);
                self.apply_locked(&mut loaded, decisions);
            }
            if let Some((v, metrics)) = metrics {
                let decisions = loaded.engine.observe_metrics(&model, v, &metrics, now);
                self.apply_locked(&mut loaded, decisions);
            }
        }
        self.save_state();
    }

    /// Writes `state.json` when the persisted state changed since it was last written.
    fn save_state(&self) {
        let mut loaded = self.lock();
        let state = loaded.engine.persisted();
        if state == loaded.saved {
            return;
        }
        match self.inner.record.save_state(&state) {
            Ok(()) => loaded.saved = state,
            Err(e) => tracing::warn!(error = %e, "cannot save the trigger state"),
        }
    }

    /// Fires a trigger by hand (`nereid triggers fire ID`).
    pub fn fire(&self, id: &str) -> Result<Firing, FireError> {
        let mut loaded = self.lock();
        let decision = loaded
            .engine
            .fire_manually(id, Utc::now())
            .ok_or_else(|| FireError::Unknown(id.to_string()))?;
        let mut firings = self.apply_locked(&mut loaded, vec![decision]);
        drop(loaded);
        self.save_state();
        firings
            .pop()
            .ok_or_else(|| FireError::Record("the firing could not be recorded".into()))
    }

    /// Records decisions and starts the actions of those that fire.
    fn apply_locked(&self, loaded: &mut Loaded, decisions: Vec<Decision>) -> Vec<Firing> {
        let mut out = Vec::new();
        for decision in decisions {
            let Some(trigger) = loaded.engine.trigger(&decision.trigger).cloned() else {
                continue;
            };
            let (status, suppressed_because) = match decision.verdict {
                Verdict::Fire => (FiringStatus::Fired, None),
                Verdict::Suppress(why) => (FiringStatus::Suppressed, Some(why)),
            };
            let firing = Firing {
                id: new_run_id(),
                trigger: trigger.id.clone(),
                time: Utc::now(),
                reason: decision.reason,
                action: trigger.action.describe(),
                status,
                suppressed_because,
                outcome: None,
            };
            if let Err(e) = self.inner.record.append_firing(&firing) {
                // Without a record there is no firing: nothing runs that could not be traced.
                tracing::error!(trigger = %firing.trigger, error = %e, "cannot record a firing; its action does not run");
                continue;
            }
            match firing.status {
                FiringStatus::Fired => {
                    tracing::info!(trigger = %firing.trigger, firing = %firing.id, reason = %firing.reason.summary, action = %firing.action, "trigger fired");
                    *loaded
                        .counters
                        .fired
                        .entry((firing.trigger.clone(), firing.reason.kind.clone()))
                        .or_default() += 1;
                    loaded
                        .counters
                        .last_fired
                        .insert(firing.trigger.clone(), firing.time);
                    loaded.engine.started(&firing.trigger, &firing.id);
                    self.start_action(trigger.action.clone(), firing.clone());
                }
                FiringStatus::Suppressed => {
                    tracing::info!(trigger = %firing.trigger, reason = %firing.reason.summary, because = ?firing.suppressed_because, "trigger suppressed");
                    *loaded
                        .counters
                        .suppressed
                        .entry(firing.trigger.clone())
                        .or_default() += 1;
                }
            }
            if loaded.recent.len() == RECENT {
                loaded.recent.remove(0);
            }
            loaded.recent.push(firing.clone());
            out.push(firing);
        }
        out
    }

    fn start_action(&self, action: Action, firing: Firing) {
        let this = self.clone();
        let settings = &self.inner.settings;
        let ctx = action::ActionContext {
            nereid: settings.nereid.clone(),
            workdir: settings
                .file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            log: self.inner.record.log_path(&firing.id),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("trigger-{}", firing.trigger))
            .spawn(move || {
                lower_priority();
                let outcome = action::run(&action, &firing, &ctx);
                this.finish(&firing, outcome);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread for a trigger action");
        }
    }

    fn finish(&self, firing: &Firing, outcome: Outcome) {
        if outcome.succeeded {
            tracing::info!(trigger = %firing.trigger, firing = %firing.id, detail = %outcome.detail, run = ?outcome.run_id, "trigger action finished");
        } else {
            tracing::warn!(trigger = %firing.trigger, firing = %firing.id, detail = %outcome.detail, "trigger action failed");
        }
        if let Err(e) = self.inner.record.append_outcome(&firing.id, &outcome) {
            tracing::error!(firing = %firing.id, error = %e, "cannot record a firing's outcome");
        }
        let mut loaded = self.lock();
        loaded.engine.finished(&firing.trigger, &firing.id);
        if let Some(f) = loaded.recent.iter_mut().rev().find(|f| f.id == firing.id) {
            f.outcome = Some(outcome);
        }
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Each trigger and its state (without the firings: what `/metrics` needs).
    pub fn trigger_statuses(&self) -> Vec<TriggerStatus> {
        Self::statuses(&self.lock())
    }

    fn statuses(loaded: &Loaded) -> Vec<TriggerStatus> {
        loaded
            .engine
            .triggers()
            .iter()
            .map(|t| TriggerStatus {
                id: t.id.clone(),
                kind: t.condition.kind(),
                condition: describe_condition(&t.condition),
                cooldown_s: t.cooldown.as_secs(),
                action: t.action.describe(),
                last_fired: loaded.engine.last_fired(&t.id),
                running: loaded.engine.running(&t.id).map(str::to_string),
                next_due: loaded.engine.next_due(&t.id),
                last_window: loaded.engine.last_window(&t.id),
            })
            .collect()
    }

    pub fn status(&self) -> Status {
        let loaded = self.lock();
        Status {
            file: self.inner.settings.file.clone(),
            file_error: loaded.file_error.clone(),
            triggers: Self::statuses(&loaded),
            firings: loaded.recent.iter().rev().cloned().collect(),
        }
    }

    /// Runs [`Triggers::poll`] every `poll` on a thread of its own until the returned sender is
    /// dropped or sent to.
    pub fn spawn(&self, source: Arc<dyn Observe>) -> std::io::Result<mpsc::Sender<()>> {
        let (stop, stopped) = mpsc::channel::<()>();
        let this = self.clone();
        let every = self.inner.settings.poll;
        std::thread::Builder::new()
            .name("triggers".into())
            .spawn(move || loop {
                this.poll(source.as_ref());
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            })?;
        Ok(stop)
    }
}

/// The lowest priority the platform has (nice 19 on Linux): an action, and the pipeline run it
/// starts, get only the CPU that serving leaves.
fn lower_priority() {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::debug!(error = ?e, "cannot lower the priority of a trigger action");
    }
}

/// The newest version of `dataset` in the store at `location`: (sequence number, id).
fn latest_version(location: &str, dataset: &str) -> anyhow::Result<Option<(u64, String)>> {
    let store = FeatureStore::open_at(location)?;
    if !store.datasets()?.iter().any(|d| d == dataset) {
        return Ok(None);
    }
    Ok(store
        .history(dataset)?
        .into_iter()
        .max_by_key(|e| e.seq)
        .map(|e| (e.seq, e.id)))
}

/// One line for listings.
pub fn describe_condition(c: &Condition) -> String {
    let version =
        |v: &Option<u64>| v.map_or("serving version".to_string(), |v| format!("version {v}"));
    match c {
        Condition::Drift {
            model,
            version: v,
            windows,
            features,
        } => {
            let what = if features.is_empty() {
                "dataset drift".to_string()
            } else {
                format!("drift on any of {}", features.join(", "))
            };
            format!(
                "{what} in {windows} consecutive windows of {model} ({})",
                version(v)
            )
        }
        Condition::Schedule { cron, timezone } => {
            format!("cron '{}' in {}", cron.text, timezone.name())
        }
        Condition::NewData { dataset, store } => format!("new version of {dataset} in {store}"),
        Condition::Metric {
            model,
            version: v,
            metric,
            threshold,
            min_labels,
        } => format!(
            "live {metric} {threshold} on {model} ({}) with at least {min_labels} labels",
            version(v)
        ),
    }
}
