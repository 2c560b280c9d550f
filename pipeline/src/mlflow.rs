//! Mirroring run records to an MLflow tracking server through its REST API (`/api/2.0/mlflow`).
//!
//! The local record ([`crate::tracking`]) is the source of truth; [`mirror_run`] copies a
//! finished (or failed) record in one go: experiment (found by name or created), run (with the
//! record's start time and tags), params, per-epoch metrics (step = epoch), final metrics, tags,
//! then the final status and end time. Doing it after the run keeps training independent of the
//! server's availability; a mirroring failure is reported, never fatal to the run.
//!
//! Plain `http://` only (the workspace's reqwest is built without TLS). Blocking: run it on a
//! blocking thread from async code.

use std::time::Duration;

use serde_json::{json, Value};

use crate::tracking::{RunRecord, RunStatus};

/// MLflow's per-request limits of `runs/log-batch`.
const MAX_METRICS_PER_BATCH: usize = 1000;
const MAX_PARAMS_PER_BATCH: usize = 100;
const MAX_TAGS_PER_BATCH: usize = 100;

/// Why a call to the tracking server failed.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("MLflow request {endpoint} failed: {source}")]
    Http {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("MLflow {endpoint} answered {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },

    #[error("MLflow {endpoint} answered without {field}: {body}")]
    Unexpected {
        endpoint: String,
        field: &'static str,
        body: String,
    },
}

/// A client of one tracking server.
#[derive(Debug, Clone)]
pub struct MlflowClient {
    base: String,
    http: reqwest::blocking::Client,
}

/// Identifiers of a mirrored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredRun {
    pub experiment_id: String,
    pub run_id: String,
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

impl MlflowClient {
    /// `tracking_uri` is the server's base URL, e.g. `http://127.0.0.1:5000`.
    pub fn new(tracking_uri: &str) -> Result<MlflowClient, MlflowError> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| MlflowError::Http {
                endpoint: "client".into(),
                source,
            })?;
        Ok(MlflowClient {
            base: tracking_uri.trim_end_matches('/').to_string(),
            http,
        })
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/api/2.0/mlflow/{endpoint}", self.base)
    }

    fn check(endpoint: &str, response: reqwest::blocking::Response) -> Result<Value, MlflowError> {
        let status = response.status();
        let body = response.text().map_err(|source| MlflowError::Http {
            endpoint: endpoint.to_string(),
            source,
        })?;
        if !status.is_success() {
            return Err(MlflowError::Status {
                endpoint: endpoint.to_string(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn post(&self, endpoint: &str, body: &Value) -> Result<Value, MlflowError> {
        let response = self
            .http
            .post(self.url(endpoint))
            .json(body)
            .send()
            .map_err(|source| MlflowError::Http {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Self::check(endpoint, response)
    }

    fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value, MlflowError> {
        let url = reqwest::Url::parse_with_params(&self.url(endpoint), query).map_err(|e| {
            MlflowError::Unexpected {
                endpoint: endpoint.to_string(),
                field: "a valid URL",
                body: e.to_string(),
            }
        })?;
        let response = self
            .http
            .get(url)
            .send()
            .map_err(|source| MlflowError::Http {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Self::check(endpoint, response)
    }

    fn field(
        endpoint: &str,
        value: &Value,
        pointer: &str,
        name: &'static str,
    ) -> Result<String, MlflowError> {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| MlflowError::Unexpected {
                endpoint: endpoint.to_string(),
                field: name,
                body: value.to_string(),
            })
    }

    /// The id of experiment `name`, created if it does not exist.
    pub fn experiment_id(&self, name: &str) -> Result<String, MlflowError> {
        let endpoint = "experiments/get-by-name";
        match self.get(endpoint, &[("experiment_name", name)]) {
            Ok(v) => {
                return Self::field(endpoint, &v, "/experiment/experiment_id", "experiment_id")
            }
            Err(MlflowError::Status { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        match self.post("experiments/create", &json!({ "name": name })) {
            Ok(v) => Self::field("experiments/create", &v, "/experiment_id", "experiment_id"),
            // Created by someone else in between.
            Err(MlflowError::Status { body, .. }) if body.contains("RESOURCE_ALREADY_EXISTS") => {
                let v = self.get(endpoint, &[("experiment_name", name)])?;
                Self::field(endpoint, &v, "/experiment/experiment_id", "experiment_id")
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run; returns its MLflow id.
    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_time_ms: i64,
        tags: &[(String, String)],
    ) -> Result<String, MlflowError> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let v = self.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_time_ms,
                "tags": tags,
            }),
        )?;
        Self::field("runs/create", &v, "/run/info/run_id", "run_id")
    }

    /// Logs params, metrics `(key, value, step)` and tags, split into MLflow's batch limits.
    pub fn log_batch(
        &self,
        run_id: &str,
        params: &[(String, String)],
        metrics: &[(String, f64, u64)],
        tags: &[(String, String)],
        timestamp_ms: i64,
    ) -> Result<(), MlflowError> {
        let kv = |items: &[(String, String)]| -> Vec<Value> {
            items
                .iter()
                .map(|(k, v)| json!({ "key": k, "value": v }))
                .collect()
        };
        for chunk in params.chunks(MAX_PARAMS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                &json!({ "run_id": run_id, "params": kv(chunk) }),
            )?;
        }
        for chunk in tags.chunks(MAX_TAGS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                &json!({ "run_id": run_id, "tags": kv(chunk) }),
            )?;
        }
        // MLflow rejects NaN/inf in JSON; they are skipped (the local record keeps them).
        let finite: Vec<Value> = metrics
            .iter()
            .filter(|(_, v, _)| v.is_finite())
            .map(|(k, v, step)| json!({ "key": k, "value": v, "timestamp": timestamp_ms, "step": step }))
            .collect();
        for chunk in finite.chunks(MAX_METRICS_PER_BATCH) {
            self.post(
                "runs/log-batch",
                &json!({ "run_id": run_id, "metrics": chunk }),
            )?;
        }
        Ok(())
    }

    /// Sets a run's final status (`FINISHED`, `FAILED`, `RUNNING`) and end time.
    pub fn update_run(
        &self,
        run_id: &str,
        status: &str,
        end_time_ms: i64,
    ) -> Result<(), MlflowError> {
        self.post(
            "runs/update",
            &json!({ "run_id": run_id, "status": status, "end_time": end_time_ms }),
        )
        .map(drop)
    }

    /// Reads a run back (used by tests and `nereid` diagnostics).
    pub fn get_run(&self, run_id: &str) -> Result<Value, MlflowError> {
        self.get("runs/get", &[("run_id", run_id)])
    }
}

/// Copies `record` into experiment `record.experiment` on the server at `tracking_uri`.
pub fn mirror_run(tracking_uri: &str, record: &RunRecord) -> Result<MirroredRun, MlflowError> {
    let client = MlflowClient::new(tracking_uri)?;
    let experiment_id = client.experiment_id(&record.experiment)?;
    let mut tags: Vec<(String, String)> = vec![
        ("mlflow.runName".into(), record.id.clone()),
        ("nereid.run_id".into(), record.id.clone()),
        ("nereid.seed".into(), record.seed.to_string()),
    ];
    if let Some(commit) = &record.code.commit {
        tags.push(("mlflow.source.git.commit".into(), commit.clone()));
    }
    if let Some(dirty) = record.code.dirty {
        tags.push(("nereid.code_dirty".into(), dirty.to_string()));
    }
    if let Some(dataset) = &record.dataset_version {
        tags.push(("nereid.dataset_version".into(), dataset.clone()));
    }
    if let Some(error) = &record.error {
        tags.push(("nereid.error".into(), error.chars().take(5000).collect()));
    }
    for artifact in &record.artifacts {
        tags.push((
            format!("nereid.artifact.{}", artifact.path),
            artifact.sha256.clone(),
        ));
    }
    tags.extend(record.tags.iter().map(|(k, v)| (k.clone(), v.clone())));

    let start = millis(&record.started_at);
    let end = record.ended_at.as_deref().map_or(start, millis);
    let run_id = client.create_run(&experiment_id, &record.id, start, &tags)?;
    let params: Vec<(String, String)> = record
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut metrics: Vec<(String, f64, u64)> = record
        .history
        .iter()
        .map(|p| (p.key.clone(), p.value, p.step))
        .collect();
    metrics.extend(record.metrics.iter().map(|(k, v)| (k.clone(), *v, 0)));
    client.log_batch(&run_id, &params, &metrics, &[], end)?;
    let status = match record.status {
        RunStatus::Finished => "FINISHED",
        RunStatus::Failed => "FAILED",
        RunStatus::Running => "RUNNING",
    };
    client.update_run(&run_id, status, end)?;
    Ok(MirroredRun {
        experiment_id,
        run_id,
    })
}
