//! Experiment tracking: one JSON record per training run, kept in a local runs directory and
//! optionally mirrored to an MLflow tracking server ([`crate::mlflow`]).
//!
//! Layout under the runs directory:
//!
//! ```text
//! train/<run-id>.json            the run record (params, per-epoch and final metrics, artifacts
//!                                with hashes, dataset version, code revision, seed, times, status)
//! train/<run-id>/                the run's artifacts (model.safetensors, labels.txt, model.json)
//! ```
//!
//! A record is written when the run starts (status `running`) and replaced when it ends
//! (`finished` or `failed`); each write is a whole-file atomic replace, so a reader never sees a
//! torn record and a crashed run stays visible as `running`. Runs never share files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::util::{
    is_safe_name, new_run_id, now_rfc3339, sha256_file, to_json_pretty, write_atomic,
};

/// Version of the run-record format.
pub const RUN_FORMAT: u32 = 1;
const TRAIN_DIR: &str = "train";

/// Why reading or writing run records failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("run record {} is not valid: {source}", path.display())]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("no run `{0}`")]
    NotFound(String),

    #[error("`{reference}` is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
}

/// The revision of the code a run was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CodeRevision {
    /// `git rev-parse HEAD`; `None` outside a git checkout or without git.
    pub commit: Option<String>,
    /// Whether `git status --porcelain` listed changes (uncommitted code may have been used).
    pub dirty: Option<bool>,
    /// Why the revision is unknown, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CodeRevision {
    /// Asks git about the checkout containing `dir`; never fails (absence is recorded).
    pub fn detect(dir: &Path) -> CodeRevision {
        let git = |args: &[&str]| -> Result<String, String> {
            let out = Command::new("git")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("git not available: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "git {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        match git(&["rev-parse", "HEAD"]) {
            Err(note) => CodeRevision {
                commit: None,
                dirty: None,
                note: Some(note),
            },
            Ok(commit) => {
                let status = git(&["status", "--porcelain"]);
                CodeRevision {
                    commit: Some(commit.trim().to_string()),
                    dirty: status.as_ref().ok().map(|s| !s.trim().is_empty()),
                    note: status.err(),
                }
            }
        }
    }

    /// `abc123def456` or `abc123def456 (dirty)` or `unknown`.
    pub fn describe(&self) -> String {
        match &self.commit {
            None => "unknown".to_string(),
            Some(c) => format!(
                "{}{}",
                &c[..c.len().min(12)],
                if self.dirty == Some(true) {
                    " (dirty)"
                } else {
                    ""
                }
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Finished,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
        }
    }
}

/// One value of a metric at a step (an epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub key: String,
    pub step: u64,
    pub value: f64,
}

/// A file a run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the run's artifact folder.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// Where the run was mirrored in MLflow, or why mirroring failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlflowMirror {
    pub tracking_uri: String,
    pub experiment_id: Option<String>,
    pub run_id: Option<String>,
    pub error: Option<String>,
}

/// Everything recorded about one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub id: String,
    pub experiment: String,
    pub status: RunStatus,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub params: BTreeMap<String, String>,
    /// Final metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Per-epoch metrics.
    pub history: Vec<MetricPoint>,
    pub artifacts: Vec<Artifact>,
    pub dataset_version: Option<String>,
    pub code: CodeRevision,
    pub seed: u64,
    pub tags: BTreeMap<String, String>,
    pub error: Option<String>,
    pub mlflow: Option<MlflowMirror>,
}

/// The runs directory.
#[derive(Debug, Clone)]
pub struct Tracker {
    root: PathBuf,
}

impl Tracker {
    pub fn new(root: impl Into<PathBuf>) -> Tracker {
        Tracker { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join(TRAIN_DIR).join(format!("{id}.json"))
    }

    /// The folder of a run's artifacts.
    pub fn artifact_dir(&self, id: &str) -> PathBuf {
        self.root.join(TRAIN_DIR).join(id)
    }

    /// Creates a run record (status `running`) and its artifact folder.
    pub fn start(
        &self,
        experiment: &str,
        params: BTreeMap<String, String>,
        dataset_version: Option<String>,
        code: CodeRevision,
        seed: u64,
    ) -> Result<RunRecord, TrackingError> {
        let id = new_run_id();
        let dir = self.artifact_dir(&id);
        std::fs::create_dir_all(&dir).map_err(|source| TrackingError::Io {
            path: dir.clone(),
            source,
        })?;
        let record = RunRecord {
            format: RUN_FORMAT,
            id,
            experiment: experiment.to_string(),
            status: RunStatus::Running,
            started_at: now_rfc3339(),
            ended_at: None,
            params,
            metrics: BTreeMap::new(),
            history: Vec::new(),
            artifacts: Vec::new(),
            dataset_version,
            code,
            seed,
            tags: BTreeMap::new(),
            error: None,
            mlflow: None,
        };
        self.save(&record)?;
        Ok(record)
    }

    /// Writes (replaces) a run record.
    pub fn save(&self, record: &RunRecord) -> Result<(), TrackingError> {
        let path = self.record_path(&record.id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TrackingError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        write_atomic(&path, &to_json_pretty(record))
            .map_err(|source| TrackingError::Io { path, source })
    }

    /// Hashes the named files of the run's artifact folder into `record.artifacts`.
    pub fn record_artifacts(
        &self,
        record: &mut RunRecord,
        names: &[&str],
    ) -> Result<(), TrackingError> {
        let dir = self.artifact_dir(&record.id);
        for name in names {
            let path = dir.join(name);
            let (sha256, bytes) =
                sha256_file(&path).map_err(|source| TrackingError::Io { path, source })?;
            record.artifacts.retain(|a| a.path != *name);
            record.artifacts.push(Artifact {
                path: name.to_string(),
                sha256,
                bytes,
            });
        }
        Ok(())
    }

    /// Marks the run ended with `status` and saves it.
    pub fn end(
        &self,
        record: &mut RunRecord,
        status: RunStatus,
        error: Option<String>,
    ) -> Result<(), TrackingError> {
        record.status = status;
        record.error = error;
        record.ended_at = Some(now_rfc3339());
        self.save(record)
    }

    /// Reads a run by id or unique id prefix.
    pub fn get(&self, reference: &str) -> Result<RunRecord, TrackingError> {
        if !is_safe_name(reference) {
            return Err(TrackingError::NotFound(reference.to_string()));
        }
        let exact = self.record_path(reference);
        if exact.is_file() {
            return read_record(&exact);
        }
        let matches: Vec<String> = self
            .ids()?
            .into_iter()
            .filter(|id| id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [] => Err(TrackingError::NotFound(reference.to_string())),
            [one] => read_record(&self.record_path(one)),
            _ => Err(TrackingError::Ambiguous {
                reference: reference.to_string(),
                candidates: matches,
            }),
        }
    }

    fn ids(&self) -> Result<Vec<String>, TrackingError> {
        list_json_ids(&self.root.join(TRAIN_DIR))
    }

    /// All runs, oldest first.
    pub fn list(&self) -> Result<Vec<RunRecord>, TrackingError> {
        self.ids()?
            .iter()
            .map(|id| read_record(&self.record_path(id)))
            .collect()
    }
}

/// Stems of `*.json` files in `dir`, sorted (ids sort by time); empty if `dir` is missing.
pub(crate) fn list_json_ids(dir: &Path) -> Result<Vec<String>, TrackingError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TrackingError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut ids: Vec<String> = read
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| is_safe_name(n))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

fn read_record(path: &Path) -> Result<RunRecord, TrackingError> {
    let text = std::fs::read(path).map_err(|source| TrackingError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| TrackingError::BadRecord {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_and_found_by_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tracker = Tracker::new(dir.path());
        let mut params = BTreeMap::new();
        params.insert("epochs".to_string(), "3".to_string());
        let mut run = tracker
            .start(
                "exp",
                params,
                Some("abc".into()),
                CodeRevision::default(),
                7,
            )
            .expect("start");
        assert_eq!(
            tracker.get(&run.id).expect("get").status,
            RunStatus::Running
        );
        std::fs::write(tracker.artifact_dir(&run.id).join("a.txt"), b"x").expect("write");
        tracker
            .record_artifacts(&mut run, &["a.txt"])
            .expect("artifacts");
        run.metrics.insert("accuracy".into(), 0.5);
        tracker
            .end(&mut run, RunStatus::Finished, None)
            .expect("end");
        let back = tracker.get(&run.id[..10]).expect("prefix");
        assert_eq!(back, run);
        assert_eq!(back.artifacts[0].bytes, 1);
        assert_eq!(tracker.list().expect("list").len(), 1);
        assert!(matches!(
            tracker.get("nope"),
            Err(TrackingError::NotFound(_))
        ));
    }

    #[test]
    fn code_revision_tolerates_no_git_checkout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rev = CodeRevision::detect(dir.path());
        assert!(rev.commit.is_none());
        assert!(rev.note.is_some());
        assert_eq!(rev.describe(), "unknown");
    }
}
