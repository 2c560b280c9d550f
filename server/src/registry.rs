//! The model registry: model name → versions, each READY (with its loaded [`ModelVersion`]) or
//! UNAVAILABLE (with the reason).
//!
//! Concurrency: the map lives in an `ArcSwap`. Readers (every request) `load()` it without
//! locking and clone the `Arc<ModelVersion>` they resolve, so a request in flight keeps its
//! version alive. Writers build a new map aside and swap it in whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use nereid_protocol::Error;

use crate::model::ModelVersion;
use crate::repository;

pub enum VersionState {
    Ready(Arc<ModelVersion>),
    Unavailable(String),
}

pub struct ModelEntry {
    pub name: String,
    /// Why the model as a whole could not be loaded (bad config, no versions).
    pub failure: Option<String>,
    pub versions: BTreeMap<u64, VersionState>,
}

impl ModelEntry {
    fn ready(&self) -> impl DoubleEndedIterator<Item = &Arc<ModelVersion>> {
        self.versions.values().filter_map(|v| match v {
            VersionState::Ready(m) => Some(m),
            VersionState::Unavailable(_) => None,
        })
    }
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: &'static str,
    pub reason: String,
}

pub struct ModelRegistry {
    repository: PathBuf,
    models: ArcSwap<BTreeMap<String, Arc<ModelEntry>>>,
}

impl ModelRegistry {
    /// Loads every model of the repository. Blocking (backends read weights): call it off the
    /// async runtime. A model that fails is kept as UNAVAILABLE with its reason.
    pub fn load_repository(repository: &Path) -> std::io::Result<Self> {
        let mut models = BTreeMap::new();
        let (ensembles, plain): (Vec<_>, Vec<_>) = repository::scan(repository)?
            .into_iter()
            .partition(|s| s.config.as_ref().is_ok_and(|c| c.platform == "ensemble"));
        for source in plain {
            let entry = load_model(source);
            models.insert(entry.name.clone(), Arc::new(entry));
        }
        // Ensembles after the models they compose; an ensemble of ensembles waits for its
        // inner ensembles, so load in passes until no more can be.
        let mut waiting = ensembles;
        loop {
            let (ready, blocked): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|source| {
                let plan = source
                    .config
                    .as_ref()
                    .ok()
                    .and_then(|c| crate::ensemble::EnsemblePlan::from_config(c).ok());
                plan.is_none_or(|p| p.composing_models().iter().all(|m| models.contains_key(*m)))
            });
            if ready.is_empty() {
                for source in blocked {
                    let entry = load_ensemble(source, &models);
                    models.insert(entry.name.clone(), Arc::new(entry));
                }
                break;
            }
            for source in ready {
                let entry = load_ensemble(source, &models);
                models.insert(entry.name.clone(), Arc::new(entry));
            }
            waiting = blocked;
        }
        Ok(ModelRegistry {
            repository: repository.to_path_buf(),
            models: ArcSwap::from_pointee(models),
        })
    }

    pub fn repository(&self) -> &Path {
        &self.repository
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

    /// Every ready model version, for statistics.
    pub fn all_ready(&self) -> Vec<Arc<ModelVersion>> {
        self.models
            .load()
            .values()
            .flat_map(|e| e.ready().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Whether every model loaded (Triton's strict readiness).
    pub fn everything_ready(&self) -> bool {
        self.models.load().values().all(|e| {
            e.failure.is_none()
                && e.versions
                    .values()
                    .all(|v| matches!(v, VersionState::Ready(_)))
        })
    }

    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let mut rows = Vec::new();
        for entry in self.models.load().values() {
            if let Some(reason) = &entry.failure {
                if !ready_only {
                    rows.push(IndexEntry {
                        name: entry.name.clone(),
                        version: String::new(),
                        state: "UNAVAILABLE",
                        reason: reason.clone(),
                    });
                }
            }
            for (version, state) in &entry.versions {
                let (state, reason) = match state {
                    VersionState::Ready(_) => ("READY", String::new()),
                    VersionState::Unavailable(reason) => ("UNAVAILABLE", reason.clone()),
                };
                if ready_only && state != "READY" {
                    continue;
                }
                rows.push(IndexEntry {
                    name: entry.name.clone(),
                    version: version.to_string(),
                    state,
                    reason,
                });
            }
        }
        rows
    }
}

/// Resolves a ready model version in a map that is being built.
fn lookup(
    models: &BTreeMap<String, Arc<ModelEntry>>,
    name: &str,
    version: &str,
) -> Option<Arc<ModelVersion>> {
    let entry = models.get(name)?;
    if version.is_empty() {
        return entry.ready().next_back().cloned();
    }
    match entry.versions.get(&version.parse().ok()?)? {
        VersionState::Ready(m) => Some(Arc::clone(m)),
        VersionState::Unavailable(_) => None,
    }
}

/// Loads an ensemble, then checks it against its composing models.
fn load_ensemble(
    source: repository::ModelSource,
    models: &BTreeMap<String, Arc<ModelEntry>>,
) -> ModelEntry {
    let mut entry = load_model(source);
    for state in entry.versions.values_mut() {
        if let VersionState::Ready(model) = state {
            let plan = model
                .ensemble()
                .expect("ensembles load with a plan. This is a bug.");
            if let Err(reason) = plan.validate(&model.config, |n, v| lookup(models, n, v)) {
                tracing::error!(model = %entry.name, %reason, "ensemble is unavailable");
                *state = VersionState::Unavailable(reason);
            }
        }
    }
    entry
}

fn load_model(source: repository::ModelSource) -> ModelEntry {
    let mut entry = ModelEntry {
        name: source.name.clone(),
        failure: None,
        versions: BTreeMap::new(),
    };
    let config = match source.config {
        Ok(config) => config,
        Err(reason) => {
            tracing::error!(model = %source.name, %reason, "model is unavailable");
            entry.failure = Some(reason);
            return entry;
        }
    };
    for version in source.versions {
        let started = Instant::now();
        let state = match ModelVersion::load(Arc::clone(&config), &source.path, version) {
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
    entry
}
