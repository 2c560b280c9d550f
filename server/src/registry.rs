//! The model registry: model name → versions, each READY (with its loaded [`ModelVersion`]) or
//! UNAVAILABLE (with the reason), and the model-control operations that change it (load,
//! unload, repository polling).
//!
//! Concurrency: the map lives in an `ArcSwap`. Readers (every request) `load()` it without
//! locking and clone the `Arc<ModelVersion>` they resolve, so a request in flight keeps its
//! version alive however the map changes. Writers are serialised by one mutex and are blocking
//! (they read weights and warm models up): the async layer runs them on blocking threads.
//!
//! A load or reload has two phases:
//! 1. **Build aside**: read the model folder, load every version the policy selects (reusing a
//!    loaded version whose config and files did not change), warm each new version up. Nothing
//!    that serves requests is touched.
//! 2. **Swap**: store a new map holding the new entry. Requests admitted before the swap finish
//!    on the old versions, whose instances stop after their last request.
//!
//! A reload that fails in phase 1 changes nothing that serves: the old versions stay READY and
//! the failure is reported in the index and the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use nereid_protocol::inference::ModelConfig;
use nereid_protocol::Error;

use crate::ensemble::EnsemblePlan;
use crate::model::{ModelVersion, VersionSettings};
use crate::repository::{self, ModelSource};

/// `--model-control-mode`, with Triton's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlMode {
    /// Load everything at start; ignore later changes; no load/unload API.
    None,
    /// Load everything at start, then follow the repository on every poll.
    Poll,
    /// Load only `--load-model` at start, then follow the load/unload API.
    Explicit,
}

#[derive(Clone)]
pub enum VersionState {
    Ready(Arc<ModelVersion>),
    Unavailable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Loaded,
    /// First load in progress: no version serves yet.
    Loading,
    /// Unloaded by the API or because it left the repository; kept to report it.
    Unloaded,
}

#[derive(Clone)]
pub struct ModelEntry {
    pub name: String,
    pub state: EntryState,
    /// Why the model could not be loaded, or why its last reload failed (the old versions then
    /// keep serving).
    pub failure: Option<String>,
    pub versions: BTreeMap<u64, VersionState>,
    source: Option<ModelSource>,
    /// Composing models that were loaded because this ensemble was (`unload_dependents`).
    loaded_with: Vec<String>,
}

impl ModelEntry {
    fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<ModelVersion>> {
        self.versions.values().filter_map(|v| match v {
            VersionState::Ready(m) => Some(m),
            VersionState::Unavailable(_) => None,
        })
    }

    fn placeholder(name: &str, state: EntryState) -> Self {
        ModelEntry {
            name: name.to_string(),
            state,
            failure: None,
            versions: BTreeMap::new(),
            source: None,
            loaded_with: Vec::new(),
        }
    }

    fn fingerprint(&self) -> Option<u64> {
        self.source.as_ref().map(ModelSource::fingerprint)
    }

    fn uses(&self, model: &str) -> bool {
        self.ready().any(|v| {
            v.ensemble()
                .is_some_and(|p| p.composing_models().contains(model))
        })
    }
}

/// The load API's overrides: a config (Triton's JSON form) and, optionally, the files of a
/// model directory (`file:<version>/<name>` parameters), which then replace the repository's.
#[derive(Debug, Clone, Default)]
pub struct LoadOverride {
    pub config: Option<ModelConfig>,
    pub files: Vec<(String, Vec<u8>)>,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// Empty for a model that is in the repository but was never loaded.
    pub state: &'static str,
    pub reason: String,
}

/// What one poll changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollReport {
    pub loaded: Vec<String>,
    pub unloaded: Vec<String>,
    pub failed: Vec<String>,
    /// Changed on disk since the previous poll: loaded once the next poll sees them unchanged.
    pub waiting: Vec<String>,
}

type ModelMap = BTreeMap<String, Arc<ModelEntry>>;

pub struct ModelRegistry {
    repository: PathBuf,
    mode: ControlMode,
    models: ArcSwap<ModelMap>,
    /// Serialises every change (load, unload, poll); holds what the previous poll saw.
    changes: Mutex<HashMap<String, u64>>,
    overrides: AtomicU64,
    /// What every loaded version shares (prediction logs, queue admission).
    settings: VersionSettings,
}

impl ModelRegistry {
    /// Opens a repository and loads what the mode says to load at start: everything for `none`
    /// and `poll`; the `startup_models` (`*` for all) for `explicit`. Blocking: call it off the
    /// async runtime (but inside it: schedulers start tasks). Models that fail are kept as
    /// UNAVAILABLE with their reason.
    pub fn open(
        repository: &Path,
        mode: ControlMode,
        startup_models: &[String],
        settings: VersionSettings,
    ) -> std::io::Result<Self> {
        let sources = repository::scan(repository)?;
        let registry = ModelRegistry {
            repository: repository.to_path_buf(),
            mode,
            models: ArcSwap::from_pointee(BTreeMap::new()),
            changes: Mutex::new(HashMap::new()),
            overrides: AtomicU64::new(0),
            settings,
        };
        let wanted = |name: &str| {
            mode != ControlMode::Explicit || startup_models.iter().any(|m| m == "*" || m == name)
        };
        let sources: Vec<ModelSource> = sources.into_iter().filter(|s| wanted(&s.name)).collect();
        for model in startup_models.iter().filter(|m| *m != "*") {
            if !sources.iter().any(|s| &s.name == model) {
                tracing::error!(model = %model, "--load-model names a model that is not in the repository");
            }
        }
        // Models that are not ensembles load `load_threads` at a time; ensembles then, in
        // order, since each checks the models it composes.
        let is_ensemble =
            |s: &ModelSource| s.config.as_ref().is_ok_and(|c| c.platform == "ensemble");
        let (ensembles, plain): (Vec<_>, Vec<_>) = sources.into_iter().partition(is_ensemble);
        let empty = BTreeMap::new();
        let queue = Mutex::new(plain.into_iter());
        let threads = registry.settings.load_threads.max(1);
        // Loading starts each version's scheduler on the caller's async runtime.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let loaded: Vec<ModelEntry> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let _entered = runtime.as_ref().map(|r| r.enter());
                        let mut done = Vec::new();
                        loop {
                            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                            let Some(source) = next else { break };
                            done.push(build_entry(source, None, &empty, &registry.settings));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut map: ModelMap = loaded
            .into_iter()
            .map(|entry| (entry.name.clone(), Arc::new(entry)))
            .collect();
        for source in order_for_loading(ensembles) {
            let entry = build_entry(source, None, &map, &registry.settings);
            map.insert(entry.name.clone(), Arc::new(entry));
        }
        registry.models.store(Arc::new(map));
        Ok(registry)
    }

    /// Loads every model of the repository (control mode `none`).
    pub fn load_repository(repository: &Path) -> std::io::Result<Self> {
        Self::open(
            repository,
            ControlMode::None,
            &[],
            VersionSettings::default(),
        )
    }

    /// Where monitored versions keep their prediction logs, if anywhere.
    pub fn prediction_log_dir(&self) -> Option<&Path> {
        self.settings.monitoring.log_dir.as_deref()
    }

    pub fn repository(&self) -> &Path {
        &self.repository
    }

    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    /// Resolves a model version for a request. `version` is empty for "the latest ready one".
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>, Error> {
        let models = self.models.load();
        let entry = models.get(name).ok_or_else(|| {
            Error::not_found(format!("Request for unknown model: '{name}' is not found"))
        })?;
        if version.is_empty() {
            return entry.ready().next_back().cloned().ok_or_else(|| {
                Error::not_found(format!(
                    "Request for unknown model: '{name}' has no available versions"
                ))
            });
        }
        let number: u64 = version.parse().map_err(|_| {
            Error::invalid_arg(format!(
                "failed to parse version '{version}' of model '{name}': versions are numeric"
            ))
        })?;
        match entry.versions.get(&number) {
            Some(VersionState::Ready(m)) => Ok(Arc::clone(m)),
            Some(VersionState::Unavailable(_)) => Err(Error::unavailable(format!(
                "Request for unknown model: '{name}' version {number} is not at ready state"
            ))),
            None => Err(Error::not_found(format!(
                "Request for unknown model: '{name}' version {number} is not found"
            ))),
        }
    }

    /// Ready versions of a model, as strings, for model metadata.
    pub fn ready_versions(&self, name: &str) -> Vec<String> {
        self.models
            .load()
            .get(name)
            .map(|e| e.ready().map(|m| m.version.to_string()).collect())
            .unwrap_or_default()
    }

    /// Every ready model version, for statistics and metrics.
    pub fn all_ready(&self) -> Vec<Arc<ModelVersion>> {
        self.models
            .load()
            .values()
            .flat_map(|e| e.ready().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Whether every loaded model is fully ready (Triton's strict readiness).
    pub fn everything_ready(&self) -> bool {
        self.models
            .load()
            .values()
            .filter(|e| e.state != EntryState::Unloaded)
            .all(|e| {
                e.state == EntryState::Loaded
                    && e.failure.is_none()
                    && e.versions
                        .values()
                        .all(|v| matches!(v, VersionState::Ready(_)))
            })
    }

    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.models.load();
        let mut rows = Vec::new();
        for entry in models.values() {
            let row = |version: String, state: &'static str, reason: String| IndexEntry {
                name: entry.name.clone(),
                version,
                state,
                reason,
            };
            match entry.state {
                EntryState::Loading => rows.push(row(String::new(), "LOADING", String::new())),
                EntryState::Unloaded => {
                    if entry.versions.is_empty() {
                        rows.push(row(String::new(), "UNAVAILABLE", "unloaded".into()));
                    }
                    for version in entry.versions.keys() {
                        rows.push(row(version.to_string(), "UNAVAILABLE", "unloaded".into()));
                    }
                }
                EntryState::Loaded => {
                    if entry.versions.is_empty() {
                        let reason = entry.failure.clone().unwrap_or_default();
                        rows.push(row(String::new(), "UNAVAILABLE", reason));
                    }
                    for (version, state) in &entry.versions {
                        rows.push(match state {
                            // A READY version carries the reason of a failed reload, if any.
                            VersionState::Ready(_) => row(
                                version.to_string(),
                                "READY",
                                entry.failure.clone().unwrap_or_default(),
                            ),
                            VersionState::Unavailable(reason) => {
                                row(version.to_string(), "UNAVAILABLE", reason.clone())
                            }
                        });
                    }
                }
            }
        }
        // Models of the repository that were never loaded (explicit mode) are listed by name.
        if self.mode == ControlMode::Explicit {
            if let Ok(sources) = std::fs::read_dir(&self.repository) {
                for source in sources.flatten() {
                    let Some(name) = source.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if !repository::is_hidden(&name)
                        && source.path().is_dir()
                        && !models.contains_key(&name)
                    {
                        rows.push(IndexEntry {
                            name,
                            version: String::new(),
                            state: "",
                            reason: String::new(),
                        });
                    }
                }
            }
        }
        if ready_only {
            rows.retain(|r| r.state == "READY");
        }
        rows.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        rows
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&self, entry: ModelEntry) {
        let mut map = ModelMap::clone(&self.models.load());
        map.insert(entry.name.clone(), Arc::new(entry));
        self.models.store(Arc::new(map));
    }

    /// Loads or reloads a model (the load API). Synchronous: returns once the model is ready or
    /// has failed. An ensemble's composing models are loaded first if they are not loaded.
    pub fn load(&self, name: &str, overrides: Option<LoadOverride>) -> Result<(), Error> {
        let _changes = self.lock_changes();
        self.load_locked(name, overrides, &mut Vec::new())
    }

    fn load_locked(
        &self,
        name: &str,
        overrides: Option<LoadOverride>,
        stack: &mut Vec<String>,
    ) -> Result<(), Error> {
        if stack.iter().any(|m| m == name) {
            return Err(Error::invalid_arg(format!(
                "circular dependency between ensembles: {} -> {name}",
                stack.join(" -> ")
            )));
        }
        let overrides = overrides.unwrap_or_default();
        let (dir, temporary) = if overrides.files.is_empty() {
            (self.repository.join(name), None)
        } else {
            if overrides.config.is_none() {
                return Err(Error::invalid_arg(format!(
                    "failed to load '{name}': 'file:' parameters require a 'config' parameter"
                )));
            }
            let dir = self.write_override_files(name, &overrides.files)?;
            (dir.clone(), Some(dir))
        };
        if !repository::has_model(&dir) && overrides.config.is_none() {
            return Err(Error::internal(format!(
                "failed to load '{name}', failed to poll from model repository"
            )));
        }
        let source = repository::read_model_with(name, &dir, overrides.config);
        let result = self.load_source(source, stack);
        if let Some(dir) = temporary {
            // Weights and labels are in memory once loaded; the override folder has served.
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    fn load_source(&self, source: ModelSource, stack: &mut Vec<String>) -> Result<(), Error> {
        let name = source.name.clone();
        let current = self.models.load().get(&name).cloned();
        // Composing models first.
        let mut loaded_with = Vec::new();
        if let Ok(plan) = source.config.as_ref().map_err(|_| ()).and_then(|c| {
            if c.platform == "ensemble" {
                EnsemblePlan::from_config(c).map_err(|_| ())
            } else {
                Err(())
            }
        }) {
            stack.push(name.clone());
            for composing in plan.composing_models() {
                let loaded =
                    self.models.load().get(composing).is_some_and(|e| {
                        e.state == EntryState::Loaded && e.ready().next().is_some()
                    });
                if !loaded {
                    self.load_locked(composing, None, stack)?;
                    loaded_with.push(composing.to_string());
                }
            }
            stack.pop();
        }
        if current.is_none() {
            self.install(ModelEntry::placeholder(&name, EntryState::Loading));
        }
        let previous = current.as_deref().filter(|e| e.state == EntryState::Loaded);
        let mut entry = build_entry(source, previous, &self.models.load(), &self.settings);
        entry.loaded_with = loaded_with;
        let problem = entry_problem(&entry);
        match (problem, previous) {
            (None, _) => {
                self.install(entry);
                Ok(())
            }
            (Some(problem), Some(previous)) if previous.ready().next().is_some() => {
                tracing::error!(model = %name, reason = %problem, "reload failed; the loaded versions keep serving");
                let mut kept = previous.clone();
                kept.failure = Some(format!("reload failed: {problem}"));
                self.install(kept);
                Err(Error::invalid_arg(format!(
                    "load failed for model '{name}': {problem}"
                )))
            }
            (Some(problem), _) => {
                self.install(entry);
                Err(Error::invalid_arg(format!(
                    "load failed for model '{name}': {problem}"
                )))
            }
        }
    }

    fn write_override_files(
        &self,
        name: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<PathBuf, Error> {
        let n = self.overrides.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("nereid-override-{}-{name}-{n}", std::process::id()));
        for (relative, contents) in files {
            let path = Path::new(relative);
            let safe = path.components().all(|c| matches!(c, Component::Normal(_)));
            if !safe || relative.is_empty() {
                return Err(Error::invalid_arg(format!(
                    "invalid file path 'file:{relative}' in the load request for model '{name}'"
                )));
            }
            let target = dir.join(path);
            let written = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&target, contents));
            written.map_err(|e| {
                Error::internal(format!(
                    "failed to write override file {}: {e}",
                    target.display()
                ))
            })?;
        }
        // The config comes from the `config` parameter; config.pbtxt in the folder is not read.
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("failed to create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Unloads a model (the unload API). Returns at once: in-flight requests finish on the old
    /// versions, which stop after their last request. Ensembles that use the model are
    /// unloaded too; with `unload_dependents`, so are the composing models loaded along with
    /// it. Unloading an unknown or unloaded model succeeds.
    pub fn unload(&self, name: &str, unload_dependents: bool) -> Result<(), Error> {
        let _changes = self.lock_changes();
        self.unload_locked(name, unload_dependents);
        Ok(())
    }

    fn unload_locked(&self, name: &str, unload_dependents: bool) {
        let models = self.models.load_full();
        let Some(entry) = models.get(name).filter(|e| e.state != EntryState::Unloaded) else {
            return;
        };
        let mut tombstone = ModelEntry::placeholder(name, EntryState::Unloaded);
        tombstone.versions = entry
            .versions
            .keys()
            .map(|v| (*v, VersionState::Unavailable("unloaded".into())))
            .collect();
        self.install(tombstone);
        tracing::info!(model = %name, "unloaded");
        let users: Vec<String> = models
            .values()
            .filter(|e| e.uses(name))
            .map(|e| e.name.clone())
            .collect();
        for user in users {
            self.unload_locked(&user, false);
        }
        if unload_dependents {
            for composing in &entry.loaded_with {
                let still_used = self.models.load().values().any(|e| e.uses(composing));
                if !still_used {
                    self.unload_locked(composing, false);
                }
            }
        }
    }

    /// Rescans the repository (control mode `poll`): loads added models and versions, reloads
    /// changed ones, unloads removed ones. A model whose files changed since the previous poll
    /// is left alone until a poll finds it unchanged, so a version being copied in is never
    /// loaded half-written.
    pub fn poll(&self) -> std::io::Result<PollReport> {
        let mut seen = self.lock_changes();
        let sources = repository::scan(&self.repository)?;
        let mut report = PollReport::default();
        let present: BTreeSet<String> = sources.iter().map(|s| s.name.clone()).collect();
        for source in order_for_loading(sources) {
            let name = source.name.clone();
            let fingerprint = source.fingerprint();
            let current = self.models.load().get(&name).cloned();
            let unchanged = current.as_ref().is_some_and(|e| {
                e.state == EntryState::Loaded && e.fingerprint() == Some(fingerprint)
            });
            if unchanged {
                seen.remove(&name);
                continue;
            }
            if seen.get(&name) != Some(&fingerprint) {
                seen.insert(name.clone(), fingerprint);
                report.waiting.push(name);
                continue;
            }
            seen.remove(&name);
            match self.load_source(source, &mut Vec::new()) {
                Ok(()) => report.loaded.push(name),
                Err(err) => {
                    tracing::error!(model = %name, reason = %err.message, "poll: load failed");
                    report.failed.push(name);
                }
            }
        }
        let removed: Vec<String> = self
            .models
            .load()
            .values()
            .filter(|e| e.state == EntryState::Loaded && !present.contains(&e.name))
            .map(|e| e.name.clone())
            .collect();
        for name in removed {
            self.unload_locked(&name, false);
            report.unloaded.push(name);
        }
        Ok(report)
    }
}

/// Plain models before ensembles, and an ensemble after the ensembles it composes.
fn order_for_loading(sources: Vec<ModelSource>) -> Vec<ModelSource> {
    let is_ensemble = |s: &ModelSource| s.config.as_ref().is_ok_and(|c| c.platform == "ensemble");
    let (mut waiting, mut ordered): (Vec<_>, Vec<_>) = sources.into_iter().partition(is_ensemble);
    while !waiting.is_empty() {
        let names: BTreeSet<String> = waiting.iter().map(|s| s.name.clone()).collect();
        let (ready, blocked): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|s| {
            let plan = s
                .config
                .as_ref()
                .ok()
                .and_then(|c| EnsemblePlan::from_config(c).ok());
            plan.is_none_or(|p| p.composing_models().iter().all(|m| !names.contains(*m)))
        });
        if ready.is_empty() {
            // A cycle: load them anyway; validation reports the missing models.
            ordered.extend(blocked);
            break;
        }
        ordered.extend(ready);
        waiting = blocked;
    }
    ordered
}

/// Resolves a ready model version in a map.
fn lookup(models: &ModelMap, name: &str, version: &str) -> Option<Arc<ModelVersion>> {
    let entry = models.get(name)?;
    if version.is_empty() {
        return entry.ready().next_back().cloned();
    }
    match entry.versions.get(&version.parse().ok()?)? {
        VersionState::Ready(m) => Some(Arc::clone(m)),
        VersionState::Unavailable(_) => None,
    }
}

/// Why an entry is not fully loaded, if it is not.
fn entry_problem(entry: &ModelEntry) -> Option<String> {
    if let Some(failure) = &entry.failure {
        return Some(failure.clone());
    }
    let problems: Vec<String> = entry
        .versions
        .iter()
        .filter_map(|(v, s)| match s {
            VersionState::Unavailable(reason) => {
                Some(format!("version {v} is at UNAVAILABLE state: {reason};"))
            }
            VersionState::Ready(_) => None,
        })
        .collect();
    (!problems.is_empty()).then(|| problems.join(" "))
}

/// Phase 1 of a load: builds an entry aside. Versions of `previous` whose config and files are
/// unchanged are reused as they are; new ones are loaded and warmed up.
fn build_entry(
    source: ModelSource,
    previous: Option<&ModelEntry>,
    models: &ModelMap,
    settings: &VersionSettings,
) -> ModelEntry {
    let mut entry = ModelEntry::placeholder(&source.name, EntryState::Loaded);
    let config = match &source.config {
        Ok(config) => Arc::clone(config),
        Err(reason) => {
            tracing::error!(model = %source.name, %reason, "model is unavailable");
            entry.failure = Some(reason.clone());
            entry.source = Some(source);
            return entry;
        }
    };
    let previous_source = previous.and_then(|p| p.source.as_ref());
    for &version in &source.versions {
        let reusable = previous_source.is_some_and(|p| {
            p.config_fingerprint == source.config_fingerprint
                && p.config.as_ref().ok() == Some(&config)
                && p.version_fingerprints.get(&version) == source.version_fingerprints.get(&version)
        });
        if let Some(VersionState::Ready(model)) = previous
            .and_then(|p| p.versions.get(&version))
            .filter(|_| reusable)
        {
            entry
                .versions
                .insert(version, VersionState::Ready(Arc::clone(model)));
            continue;
        }
        let started = Instant::now();
        let loaded = ModelVersion::load(Arc::clone(&config), &source.path, version, settings)
            .and_then(|model| {
                if let Some(plan) = model.ensemble() {
                    plan.validate(&model.config, |n, v| lookup(models, n, v))
                        .map_err(Error::invalid_arg)?;
                }
                Ok(model)
            });
        let state = match loaded {
            Ok(model) => {
                tracing::info!(model = %source.name, version, elapsed_ms = started.elapsed().as_millis() as u64, "loaded");
                VersionState::Ready(Arc::new(model))
            }
            Err(err) => {
                tracing::error!(model = %source.name, version, reason = %err.message, "failed to load");
                VersionState::Unavailable(err.message)
            }
        };
        entry.versions.insert(version, state);
    }
    entry.source = Some(source);
    entry
}
