//! The pipeline runner: executes a pipeline file (a DAG of steps declared in TOML) with per-step
//! caching, retries, logging and a run record.
//!
//! ```toml
//! name = "iris"                 # also the default experiment name
//! model = "iris_classifier"     # the model evaluate/publish work on
//! store = "feature-store"       # paths are relative to the working directory
//! runs = "runs"
//! repository = "model-repo"
//! retries = 0                   # default retries per step
//!
//! [[step]]
//! name = "ingest"
//! kind = "ingest"   # dataset | ingest | validate | join | train | evaluate | gate | publish
//! source = "iris.csv"
//! dataset = "iris"
//!
//! [[step]]
//! name = "train"
//! kind = "train"
//! needs = ["ingest"]
//! features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
//! label = "species"
//! ```
//!
//! Execution: the steps are ordered topologically (declaration order among ready steps) and run
//! one at a time on the calling thread. Each step sees the outputs of all its transitive
//! dependencies and picks what its kind needs (a dataset, a trained model, an evaluation, a gate
//! decision). Before running, a step's cache key is computed: SHA-256 over its kind, its
//! parameters, the identities of its dependencies' outputs and what else it reads (the source
//! file's hash for `ingest`, the current published version for `evaluate`). A cached output that
//! still checks out (the dataset version exists, the weights file has its hash, ...) is reused and
//! the step does no work. Failures are retried `retries` times after `retry_delay_ms`, except a
//! failed validation, which fails the run with its report. When a step fails its dependents are
//! skipped. A gate that rejects the candidate is not a failure: publish records why nothing was
//! published.
//!
//! The code revision (git commit, dirty flag) is recorded in the run record and in every
//! training run, but is not part of the cache keys: like DVC's, the cache is keyed by declared
//! inputs and parameters; `--no-cache` runs everything again after a code change.
//!
//! The run record `runs/pipeline/<run-id>.json` is rewritten (atomically) after every step, so
//! `nereid pipeline show` also shows a run in progress; cache entries are `runs/cache/<key>.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gate::{self, Evaluation, GateConfig, GateResult, PublishConfig, Published};
use crate::join::{build_training_set, FeatureView, JoinSpec};
use crate::repository::ModelRepository;
use crate::store::{FeatureStore, IngestOptions, SchemaSpec, SourceFormat};
use crate::tracking::{list_json_ids, CodeRevision, Tracker};
use crate::training::{train_from_dataset, TrackingOptions, TrainSpec, WEIGHTS_FILE};
use crate::util::{
    is_safe_name, new_run_id, now_rfc3339, sha256_file, sha256_hex, to_json_pretty, write_atomic,
};
use crate::validate::{validate, Expectations};

/// Version of the pipeline run-record and cache formats.
pub const PIPELINE_FORMAT: u32 = 1;
const PIPELINE_DIR: &str = "pipeline";
const CACHE_DIR: &str = "cache";

/// Why a pipeline could not be loaded or its records read.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("pipeline file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },

    #[error("no pipeline run `{0}`")]
    NotFound(String),

    #[error("`{reference}` is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },

    #[error("pipeline run record {} is not valid: {source}", path.display())]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(transparent)]
    Tracking(#[from] crate::tracking::TrackingError),
}

/// A step's failure: whether retrying can help, and the message.
#[derive(Debug)]
struct StepError {
    retriable: bool,
    message: String,
}

impl<E: std::fmt::Display> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError {
            retriable: true,
            message: e.to_string(),
        }
    }
}

fn fatal(message: String) -> StepError {
    StepError {
        retriable: false,
        message,
    }
}

/// The kinds of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// An existing dataset version (`dataset = "NAME"` or any reference).
    Dataset,
    /// Ingest a file into the store.
    Ingest,
    /// Check the dataset against expectations; passes it on.
    Validate,
    /// Point-in-time join into a training set.
    Join,
    /// The serving model's labelled production requests combined with the training data.
    Production,
    /// Train a classifier (tracked run).
    Train,
    /// Candidate and published version on the same test rows.
    Evaluate,
    /// Decide whether the candidate is published.
    Gate,
    /// Publish (if the gate passed) and ask the server to load.
    Publish,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Dataset => "dataset",
            StepKind::Ingest => "ingest",
            StepKind::Validate => "validate",
            StepKind::Join => "join",
            StepKind::Production => "production",
            StepKind::Train => "train",
            StepKind::Evaluate => "evaluate",
            StepKind::Gate => "gate",
            StepKind::Publish => "publish",
        }
    }
}

/// A pipeline file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub name: String,
    #[serde(default)]
    pub model: Option<String>,
    /// Feature-store directory or URL (`s3://...`, see [`crate::location`]).
    #[serde(default = "default_store")]
    pub store: String,
    #[serde(default = "default_runs")]
    pub runs: PathBuf,
    /// Model repository directory or URL (`s3://...`, see [`crate::repository`]).
    #[serde(default = "default_repository")]
    pub repository: String,
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "default_retry_delay")]
    pub retry_delay_ms: u64,
    #[serde(default)]
    pub experiment: Option<String>,
    #[serde(default)]
    pub mlflow_uri: Option<String>,
    #[serde(rename = "step", default)]
    pub steps: Vec<StepDecl>,
}

fn default_store() -> String {
    "feature-store".into()
}
fn default_runs() -> PathBuf {
    "runs".into()
}
fn default_repository() -> String {
    "model-repo".into()
}
fn default_retry_delay() -> u64 {
    1000
}

/// One `[[step]]` table: common keys plus the kind's parameters.
#[derive(Debug, Clone, Deserialize)]
pub struct StepDecl {
    pub name: String,
    pub kind: StepKind,
    #[serde(default)]
    pub needs: Vec<String>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(flatten)]
    pub params: toml::Table,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetParams {
    dataset: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestParams {
    source: PathBuf,
    dataset: String,
    #[serde(default)]
    format: Option<SourceFormat>,
    #[serde(default)]
    schema: Vec<String>,
    #[serde(default)]
    description: String,
    #[serde(default = "yes")]
    csv_header: bool,
    #[serde(default)]
    delimiter: Option<char>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinParams {
    /// Dataset name of the result.
    output: String,
    #[serde(default)]
    description: String,
    /// Label table: a dataset reference or `step:NAME`.
    labels: String,
    label_timestamp: String,
    views: Vec<FeatureView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductionParams {
    /// The server's `--prediction-log-dir`.
    #[serde(default = "default_log_dir")]
    log_dir: PathBuf,
    /// The serving version whose log is read (default: the newest logged).
    #[serde(default)]
    version: Option<u64>,
    /// Only requests from then on: `trigger` (from the first window that fired the trigger
    /// which started this run), RFC 3339, or an age (`24h`).
    #[serde(default)]
    since: Option<String>,
    #[serde(default = "default_combine")]
    combine: crate::production::Combine,
    /// `reweight`: how many times each production row counts.
    #[serde(default = "default_weight")]
    weight: u32,
    /// Dataset name of the result (default `<model>-retraining`).
    #[serde(default)]
    output: Option<String>,
}

fn default_log_dir() -> PathBuf {
    "prediction-log".into()
}
fn default_combine() -> crate::production::Combine {
    crate::production::Combine::Append
}
fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams {
    #[serde(default = "crate::gate::default_input")]
    input_name: String,
    #[serde(default)]
    output_name: Option<String>,
    #[serde(default = "crate::gate::default_max_batch")]
    max_batch_size: u32,
    #[serde(default)]
    server_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_header_env: Option<String>,
    #[serde(default = "crate::gate::default_onnx")]
    onnx: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateParams {}

/// A step's parameters, typed.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Params {
    Dataset(DatasetParams),
    Ingest(IngestParams),
    Validate(Expectations),
    Join(JoinParams),
    Production(ProductionParams),
    Train(TrainSpec),
    Evaluate(EvaluateParams),
    Gate(GateConfig),
    Publish(PublishParams),
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepOutput {
    Dataset {
        id: String,
        rows: u64,
    },
    Model {
        run_id: String,
        dir: PathBuf,
        weights_sha256: String,
        dataset_version: String,
        metrics: BTreeMap<String, f64>,
    },
    Evaluation(Box<Evaluation>),
    Gate(GateResult),
    Publish {
        published: Option<Published>,
        reason: String,
    },
}

impl StepOutput {
    /// What dependents' cache keys include: a hash of the content (not of where a model happens
    /// to be stored). Computed once, when the output is made, and kept in its cache entry: floats
    /// read back from JSON may differ in the last bit, which must not change dependents' keys.
    fn identity(&self) -> String {
        let value = match self {
            StepOutput::Model {
                weights_sha256,
                dataset_version,
                ..
            } => serde_json::json!({ "model": weights_sha256, "dataset": dataset_version }),
            other => serde_json::to_value(other).unwrap_or(Value::Null),
        };
        sha256_hex(value.to_string().as_bytes())
    }

    /// A one-line summary for logs and `pipeline show`.
    pub fn summary(&self) -> String {
        match self {
            StepOutput::Dataset { id, rows } => {
                format!("dataset version {} ({rows} rows)", &id[..12.min(id.len())])
            }
            StepOutput::Model {
                run_id, metrics, ..
            } => {
                let test = ["accuracy", "rmse", "r2"]
                    .iter()
                    .filter_map(|k| Some(format!("{k} {:.4}", metrics.get(&format!("test_{k}"))?)))
                    .collect::<Vec<_>>();
                format!(
                    "run {run_id}: test {}",
                    if test.is_empty() {
                        "-".to_string()
                    } else {
                        test.join(" ")
                    }
                )
            }
            StepOutput::Evaluation(e) => format!(
                "candidate {} on {} rows; {}",
                e.candidate.summary(),
                e.candidate.rows,
                match (&e.baseline, e.candidate_published_as) {
                    (None, Some(v)) => format!("identical to published version {v}"),
                    (None, None) => "no published version".to_string(),
                    (Some(b), _) => match &b.metrics {
                        Some(m) => format!("published version {}: {}", b.version, m.summary()),
                        None => format!(
                            "published version {} not comparable: {}",
                            b.version,
                            b.incomparable.clone().unwrap_or_default()
                        ),
                    },
                }
            ),
            StepOutput::Gate(g) => format!(
                "{}: {}",
                if g.passed { "passed" } else { "rejected" },
                g.reason
            ),
            StepOutput::Publish { published, reason } => match published {
                Some(p) => format!(
                    "{} `{}` version {}{}",
                    if p.new_version {
                        "published"
                    } else {
                        "already published as"
                    },
                    p.model,
                    p.version,
                    if p.server_loaded {
                        ", loaded by the server"
                    } else {
                        ""
                    }
                ),
                None => format!("not published: {reason}"),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Cached,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Cached => "cached",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// One step of a pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub cache_key: Option<String>,
    pub summary: Option<String>,
    pub output: Option<StepOutput>,
    pub error: Option<String>,
    pub log: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineStatus {
    Running,
    Succeeded,
    Failed,
}

impl PipelineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineStatus::Running => "running",
            PipelineStatus::Succeeded => "succeeded",
            PipelineStatus::Failed => "failed",
        }
    }
}

/// The record of one pipeline run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRun {
    pub format: u32,
    pub id: String,
    pub pipeline: String,
    pub file: String,
    pub file_sha256: String,
    pub status: PipelineStatus,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub code: CodeRevision,
    pub steps: Vec<StepRecord>,
    /// One line: what the run achieved.
    pub outcome: String,
    /// The trigger firing that started this run (from `NEREID_TRIGGER_FIRING`, which the
    /// trigger service sets), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_firing: Option<String>,
}

/// The environment variable through which a trigger action tells the run its firing.
pub const TRIGGER_FIRING_ENV: &str = "NEREID_TRIGGER_FIRING";
/// ... and the start (Unix ms) of the data that fired it (the first drifted window), if any.
pub const TRIGGER_SINCE_ENV: &str = "NEREID_TRIGGER_SINCE_MS";

/// A production step's `since`: `trigger` (the start of the data that fired the trigger which
/// started this run; everything when no trigger did), RFC 3339, or an age.
fn production_since(since: Option<&str>) -> Result<Option<u64>, StepError> {
    match since {
        None => Ok(None),
        Some("trigger") => Ok(std::env::var(TRIGGER_SINCE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())),
        Some(text) => crate::monitoring::parse_time(text, crate::monitoring::now_ms())
            .map(Some)
            .map_err(|e| fatal(e.to_string())),
    }
}

impl PipelineRun {
    /// Whether every step was a cache hit (the run did no work).
    pub fn fully_cached(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.status == StepStatus::Cached)
    }

    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// Overrides for one run (the CLI's flags).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub store: Option<String>,
    pub runs: Option<PathBuf>,
    pub repository: Option<String>,
    pub mlflow_uri: Option<String>,
    /// Ignore cached step outputs (they are still written).
    pub no_cache: bool,
    /// Do not print progress to stderr.
    pub quiet: bool,
}

/// A loaded, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub file_sha256: String,
    pub decl: PipelineFile,
    /// Step indices in execution order.
    order: Vec<usize>,
    params: Vec<Params>,
}

impl Pipeline {
    /// Reads and checks a pipeline file (names, kinds, parameters, dependencies, cycles).
    pub fn load(path: &Path) -> Result<Pipeline, RunnerError> {
        let text = std::fs::read_to_string(path).map_err(|source| RunnerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Pipeline::parse(&text, path)
    }

    /// Like [`Pipeline::load`] from text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Pipeline, RunnerError> {
        let invalid = |message: String| RunnerError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let decl: PipelineFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if !is_safe_name(&decl.name) {
            return Err(invalid(format!("invalid pipeline name `{}`", decl.name)));
        }
        if decl.steps.is_empty() {
            return Err(invalid("no [[step]] tables".into()));
        }
        let mut names = BTreeMap::new();
        for (i, s) in decl.steps.iter().enumerate() {
            if !is_safe_name(&s.name) {
                return Err(invalid(format!("invalid step name `{}`", s.name)));
            }
            if names.insert(s.name.clone(), i).is_some() {
                return Err(invalid(format!("step `{}` is declared twice", s.name)));
            }
        }
        let mut params = Vec::new();
        for s in &decl.steps {
            for need in &s.needs {
                if !names.contains_key(need) {
                    return Err(invalid(format!(
                        "step `{}` needs unknown step `{need}`",
                        s.name
                    )));
                }
            }
            let p = parse_params(s)
                .map_err(|e| invalid(format!("step `{}` ({}): {e}", s.name, s.kind.as_str())))?;
            params.push(p);
            if matches!(s.kind, StepKind::Evaluate | StepKind::Publish) && decl.model.is_none() {
                return Err(invalid(format!(
                    "step `{}` ({}) needs the pipeline's `model = \"...\"`",
                    s.name,
                    s.kind.as_str()
                )));
            }
        }
        if let Some(model) = &decl.model {
            if !is_safe_name(model) {
                return Err(invalid(format!("invalid model name `{model}`")));
            }
        }
        // Kahn's algorithm; among ready steps the declaration order decides.
        let n = decl.steps.len();
        let mut order = Vec::with_capacity(n);
        let mut done = vec![false; n];
        while order.len() < n {
            let next =
                (0..n).find(|&i| !done[i] && decl.steps[i].needs.iter().all(|d| done[names[d]]));
            match next {
                Some(i) => {
                    done[i] = true;
                    order.push(i);
                }
                None => {
                    let stuck: Vec<&str> = (0..n)
                        .filter(|&i| !done[i])
                        .map(|i| decl.steps[i].name.as_str())
                        .collect();
                    return Err(invalid(format!(
                        "the steps {stuck:?} depend on each other in a cycle"
                    )));
                }
            }
        }
        Ok(Pipeline {
            file: path.to_path_buf(),
            file_sha256: sha256_hex(text.as_bytes()),
            decl,
            order,
            params,
        })
    }

    /// Transitive dependencies of step `i` (indices).
    fn ancestors(&self, i: usize) -> BTreeSet<usize> {
        let index = |name: &str| {
            self.decl
                .steps
                .iter()
                .position(|s| s.name == name)
                .expect("needs were checked at load. This is a bug.")
        };
        let mut seen = BTreeSet::new();
        let mut stack: Vec<usize> = self.decl.steps[i].needs.iter().map(|n| index(n)).collect();
        while let Some(j) = stack.pop() {
            if seen.insert(j) {
                stack.extend(self.decl.steps[j].needs.iter().map(|n| index(n)));
            }
        }
        seen
    }
}

fn parse_params(step: &StepDecl) -> Result<Params, String> {
    let value = toml::Value::Table(step.params.clone());
    fn typed<T: serde::de::DeserializeOwned>(v: toml::Value) -> Result<T, String> {
        T::deserialize(v).map_err(|e| e.to_string().trim().to_string())
    }
    Ok(match step.kind {
        StepKind::Dataset => Params::Dataset(typed(value)?),
        StepKind::Ingest => {
            let p: IngestParams = typed(value)?;
            if !p.schema.is_empty() {
                SchemaSpec::parse(&p.schema).map_err(|e| e.to_string())?;
            }
            Params::Ingest(p)
        }
        StepKind::Validate => Params::Validate(typed(value)?),
        StepKind::Join => Params::Join(typed(value)?),
        StepKind::Production => Params::Production(typed(value)?),
        StepKind::Train => {
            let spec: TrainSpec = typed(value)?;
            spec.config().map_err(|e| e.to_string())?;
            Params::Train(spec)
        }
        StepKind::Evaluate => Params::Evaluate(typed(value)?),
        StepKind::Gate => Params::Gate(typed(value)?),
        StepKind::Publish => Params::Publish(typed(value)?),
    })
}

/// Everything a step run needs.
struct Context<'a> {
    pipeline: &'a Pipeline,
    store: FeatureStore,
    runs: PathBuf,
    repository: ModelRepository,
    mlflow_uri: Option<String>,
    code: CodeRevision,
    code_dir: PathBuf,
    run_id: String,
    trigger_firing: Option<String>,
    /// Progress bars for long steps (not in quiet runs).
    progress: bool,
}

/// Outputs of the dependencies a step sees, by step name.
type Inputs<'a> = Vec<(&'a str, &'a StepOutput)>;
/// Identities of the dependencies' outputs, by step name.
type Identities<'a> = BTreeMap<&'a str, &'a str>;

fn one<'a, T>(
    inputs: &Inputs<'a>,
    what: &str,
    pick: impl Fn(&'a StepOutput) -> Option<T>,
) -> Result<T, StepError> {
    let found: Vec<(&str, T)> = inputs
        .iter()
        .filter_map(|(name, o)| pick(o).map(|t| (*name, t)))
        .collect();
    match found.len() {
        1 => Ok(found
            .into_iter()
            .next()
            .expect("found has one element. This is a bug.")
            .1),
        0 => Err(fatal(format!(
            "no step it needs produces {what}; add one to `needs`"
        ))),
        _ => {
            // The nearest one wins when several ancestors produce the same kind (validate passes
            // on the dataset of ingest): the last in execution order is the most derived.
            Ok(found
                .into_iter()
                .last()
                .expect("found has several elements. This is a bug.")
                .1)
        }
    }
}

fn dataset_input(inputs: &Inputs<'_>) -> Result<String, StepError> {
    one(inputs, "a dataset", |o| match o {
        StepOutput::Dataset { id, .. } => Some(id.clone()),
        _ => None,
    })
}

fn model_input(inputs: &Inputs<'_>) -> Result<(PathBuf, String), StepError> {
    one(inputs, "a trained model", |o| match o {
        StepOutput::Model {
            dir,
            weights_sha256,
            ..
        } => Some((dir.clone(), weights_sha256.clone())),
        _ => None,
    })
}

fn evaluation_input<'a>(inputs: &Inputs<'a>) -> Result<&'a Evaluation, StepError> {
    one(inputs, "an evaluation", |o| match o {
        StepOutput::Evaluation(e) => Some(&**e),
        _ => None,
    })
}

fn gate_input<'a>(inputs: &Inputs<'a>) -> Result<&'a GateResult, StepError> {
    one(inputs, "a gate decision", |o| match o {
        StepOutput::Gate(g) => Some(g),
        _ => None,
    })
}

/// Names and sizes of a model's prediction-log segments (all versions): what a production
/// step's output depends on.
fn log_listing(dir: &Path) -> Result<Vec<(String, u64)>, StepError> {
    let mut listing = Vec::new();
    let Ok(versions) = std::fs::read_dir(dir) else {
        return Ok(listing);
    };
    for version in versions.flatten() {
        let Ok(segments) = std::fs::read_dir(version.path()) else {
            continue;
        };
        for segment in segments.flatten() {
            let size = segment.metadata().map(|m| m.len()).unwrap_or(0);
            listing.push((
                format!(
                    "{}/{}",
                    version.file_name().to_string_lossy(),
                    segment.file_name().to_string_lossy()
                ),
                size,
            ));
        }
    }
    listing.sort();
    Ok(listing)
}

/// `step:NAME` refers to the dataset produced by step NAME; anything else is a store reference.
fn dataset_ref(reference: &str, inputs: &Inputs<'_>) -> Result<String, StepError> {
    match reference.strip_prefix("step:") {
        None => Ok(reference.to_string()),
        Some(step) => inputs
            .iter()
            .find(|(name, _)| *name == step)
            .and_then(|(_, o)| match o {
                StepOutput::Dataset { id, .. } => Some(id.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                fatal(format!(
                    "`{reference}`: step `{step}` is not a dataset step this one needs"
                ))
            }),
    }
}

impl Context<'_> {
    /// What besides parameters and inputs the step reads, for its cache key.
    fn key_extra(&self, i: usize, inputs: &Inputs<'_>) -> Result<Value, StepError> {
        let decl = &self.pipeline.decl;
        Ok(match &self.pipeline.params[i] {
            Params::Dataset(p) => {
                let v = self.store.resolve(&p.dataset)?;
                serde_json::json!({ "resolved": v.id })
            }
            Params::Ingest(p) => {
                let (sha, _) =
                    sha256_file(&p.source).map_err(|e| format!("{}: {e}", p.source.display()))?;
                serde_json::json!({ "source_sha256": sha, "store": self.store.location() })
            }
            Params::Join(p) => {
                // Resolve every reference now: a new version of an input means a new join.
                let mut resolved = vec![self.store.resolve(&dataset_ref(&p.labels, inputs)?)?.id];
                for v in &p.views {
                    resolved.push(self.store.resolve(&dataset_ref(&v.source, inputs)?)?.id);
                }
                serde_json::json!({ "resolved": resolved })
            }
            Params::Production(p) => {
                // New requests or labels change the log's segments: a new combination.
                let model = decl.model.as_deref().unwrap_or_default();
                serde_json::json!({
                    "model": model,
                    "repository": self.repository.describe(),
                    "log": log_listing(&p.log_dir.join(model))?,
                    "since": production_since(p.since.as_deref())?,
                })
            }
            Params::Evaluate(_) => {
                let (_, sha) = model_input(inputs)?;
                let model = decl.model.as_deref().unwrap_or_default();
                let baseline = gate::current_baseline(&self.repository, model, &sha)?;
                serde_json::json!({ "repository": self.repository.describe(), "model": model, "baseline": baseline })
            }
            Params::Publish(_) => {
                serde_json::json!({ "repository": self.repository.describe(), "model": decl.model })
            }
            Params::Validate(_) | Params::Train(_) | Params::Gate(_) => Value::Null,
        })
    }

    /// Whether a cached output can still be used as it is.
    fn still_valid(&self, output: &StepOutput) -> bool {
        match output {
            StepOutput::Dataset { id, .. } => self.store.get(id).is_ok(),
            StepOutput::Model {
                dir,
                weights_sha256,
                ..
            } => sha256_file(&dir.join(WEIGHTS_FILE)).is_ok_and(|(s, _)| s == *weights_sha256),
            StepOutput::Evaluation(_) | StepOutput::Gate(_) => true,
            StepOutput::Publish { published, .. } => match published {
                None => true,
                Some(p) => gate::published_weights_sha256(&self.repository, &p.model, p.version)
                    .is_ok_and(|sha| sha.as_deref() == Some(p.weights_sha256.as_str())),
            },
        }
    }

    fn execute(
        &self,
        i: usize,
        inputs: &Inputs<'_>,
        log: &mut dyn FnMut(String),
    ) -> Result<StepOutput, StepError> {
        let decl = &self.pipeline.decl;
        let step = &decl.steps[i];
        match &self.pipeline.params[i] {
            Params::Dataset(p) => {
                let v = self.store.resolve(&p.dataset)?;
                Ok(StepOutput::Dataset {
                    id: v.id,
                    rows: v.rows,
                })
            }
            Params::Ingest(p) => {
                let store = self.store.clone();
                let mut opts = IngestOptions::new(&p.dataset);
                opts.format = p.format;
                opts.description = p.description.clone();
                opts.csv_header = p.csv_header;
                if let Some(d) = p.delimiter {
                    opts.csv_delimiter = Some(
                        u8::try_from(d)
                            .map_err(|_| fatal(format!("delimiter {d:?} is not a single byte")))?,
                    );
                }
                if !p.schema.is_empty() {
                    opts.schema = Some(SchemaSpec::parse(&p.schema)?);
                }
                // Bad input files do not get better by retrying.
                let c = store
                    .ingest(&p.source, &opts)
                    .map_err(|e| fatal(e.to_string()))?;
                log(format!(
                    "{} {} as {}@{} ({} rows)",
                    if c.new_content {
                        "stored"
                    } else {
                        "reused identical"
                    },
                    p.source.display(),
                    p.dataset,
                    c.seq,
                    c.version.rows
                ));
                Ok(StepOutput::Dataset {
                    id: c.version.id,
                    rows: c.version.rows,
                })
            }
            Params::Validate(expect) => {
                let id = dataset_input(inputs)?;
                let version = self.store.get(&id)?;
                let report = validate(&self.store, &version, expect)?;
                if !report.passed() {
                    return Err(fatal(format!(
                        "validation of dataset {} failed ({} of {} checks):\n  - {}",
                        version.short_id(),
                        report.problems.len(),
                        report.checks,
                        report.problems.join("\n  - ")
                    )));
                }
                log(format!("{} checks passed", report.checks));
                Ok(StepOutput::Dataset {
                    id: version.id,
                    rows: version.rows,
                })
            }
            Params::Join(p) => {
                let mut spec = JoinSpec {
                    labels: dataset_ref(&p.labels, inputs)?,
                    label_timestamp: p.label_timestamp.clone(),
                    views: p.views.clone(),
                };
                for v in &mut spec.views {
                    v.source = dataset_ref(&v.source, inputs)?;
                }
                let (c, views) = build_training_set(&self.store, &spec, &p.output, &p.description)?;
                for v in views {
                    log(format!(
                        "view {}: {} matched, {} without earlier features, {} expired",
                        v.view, v.matched, v.unmatched, v.expired
                    ));
                }
                Ok(StepOutput::Dataset {
                    id: c.version.id,
                    rows: c.version.rows,
                })
            }
            Params::Production(p) => {
                let model = decl.model.as_deref().ok_or_else(|| {
                    fatal("a production step needs the pipeline's `model`".into())
                })?;
                let training = dataset_input(inputs)?;
                let since = production_since(p.since.as_deref())?;
                let (version, exported) = crate::monitoring::export_serving_log(
                    &self.store,
                    &self.repository,
                    &p.log_dir,
                    model,
                    p.version,
                    (since, None),
                    true,
                    &format!("{model}-production"),
                )
                .map_err(|e| fatal(format!("{e:#}")))?;
                log(format!(
                    "{} labelled production rows of {model} version {version} as {}",
                    exported.labelled,
                    exported.committed.version.short_id()
                ));
                let name = p
                    .output
                    .clone()
                    .unwrap_or_else(|| format!("{model}-retraining"));
                let combined = crate::production::combine(
                    &self.store,
                    &training,
                    &exported.committed.version.id,
                    p.combine,
                    p.weight,
                    &name,
                )
                .map_err(|e| fatal(format!("{e:#}")))?;
                log(format!(
                    "{}: {} training rows and {} production rows as {name}@{}",
                    p.combine.as_str(),
                    combined.training_rows,
                    combined.production_rows,
                    combined.committed.seq
                ));
                Ok(StepOutput::Dataset {
                    id: combined.committed.version.id,
                    rows: combined.committed.version.rows,
                })
            }
            Params::Train(spec) => {
                let dataset = dataset_input(inputs)?;
                let mut tags = BTreeMap::new();
                tags.insert("nereid.pipeline".to_string(), decl.name.clone());
                tags.insert("nereid.pipeline_run".to_string(), self.run_id.clone());
                tags.insert("nereid.step".to_string(), step.name.clone());
                let tracking = TrackingOptions {
                    tracker: Tracker::new(&self.runs),
                    experiment: decl.experiment.clone().unwrap_or_else(|| decl.name.clone()),
                    mlflow_uri: self.mlflow_uri.clone(),
                    code_dir: self.code_dir.clone(),
                    tags,
                    progress: self.progress,
                };
                let outcome = train_from_dataset(&self.store, &dataset, spec, &tracking)?;
                log(format!(
                    "run {}: {} epochs (best {}), weights {}",
                    outcome.record.id,
                    outcome
                        .record
                        .metrics
                        .get("epochs_run")
                        .copied()
                        .unwrap_or(0.0),
                    outcome
                        .record
                        .metrics
                        .get("best_epoch")
                        .copied()
                        .unwrap_or(0.0),
                    &outcome.info.weights_sha256[..12]
                ));
                Ok(StepOutput::Model {
                    run_id: outcome.record.id,
                    dir: outcome.model_dir,
                    weights_sha256: outcome.info.weights_sha256,
                    dataset_version: outcome.info.dataset_version,
                    metrics: outcome.record.metrics,
                })
            }
            Params::Evaluate(_) => {
                let (dir, _) = model_input(inputs)?;
                let model = decl.model.as_deref().unwrap_or_default();
                let e = gate::evaluate(&self.store, &dir, &self.repository, model)?;
                Ok(StepOutput::Evaluation(Box::new(e)))
            }
            Params::Gate(cfg) => {
                let e = evaluation_input(inputs)?;
                let g = gate::gate(e, cfg).map_err(|e| fatal(e.to_string()))?;
                Ok(StepOutput::Gate(g))
            }
            Params::Publish(p) => {
                let g = gate_input(inputs)?;
                if !g.passed {
                    return Ok(StepOutput::Publish {
                        published: None,
                        reason: format!("the gate rejected the candidate: {}", g.reason),
                    });
                }
                let (dir, _) = model_input(inputs)?;
                let e = evaluation_input(inputs).ok();
                let config = PublishConfig {
                    model: decl.model.clone().unwrap_or_default(),
                    input_name: p.input_name.clone(),
                    output_name: p.output_name.clone(),
                    max_batch_size: p.max_batch_size,
                    server_url: p.server_url.clone(),
                    server_header: p.server_header.clone(),
                    server_header_env: p.server_header_env.clone(),
                    onnx: p.onnx,
                };
                let published = gate::publish(
                    &self.store,
                    &dir,
                    &self.repository,
                    &config,
                    &self.code,
                    e,
                    Some(g),
                    Some(&gate::RunRef {
                        id: &self.run_id,
                        runs: &std::fs::canonicalize(&self.runs)
                            .unwrap_or_else(|_| self.runs.clone()),
                        trigger_firing: self.trigger_firing.as_deref(),
                    }),
                )?;
                Ok(StepOutput::Publish {
                    published: Some(published),
                    reason: g.reason.clone(),
                })
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    step: String,
    kind: StepKind,
    pipeline_run: String,
    created_at: String,
    identity: String,
    output: StepOutput,
}

/// Runs a pipeline file. `Ok` carries the run record whatever the run's status; `Err` means the
/// file could not be loaded or the runs directory not written.
pub fn run_pipeline_file(path: &Path, options: &RunOptions) -> Result<PipelineRun, RunnerError> {
    let pipeline = Pipeline::load(path)?;
    run_pipeline(&pipeline, options)
}

/// Runs a loaded pipeline (see the module docs).
pub fn run_pipeline(pipeline: &Pipeline, options: &RunOptions) -> Result<PipelineRun, RunnerError> {
    let decl = &pipeline.decl;
    let runs = options.runs.clone().unwrap_or_else(|| decl.runs.clone());
    let store_root = options.store.clone().unwrap_or_else(|| decl.store.clone());
    let repository = options
        .repository
        .clone()
        .unwrap_or_else(|| decl.repository.clone());
    let repository = ModelRepository::open(&repository).map_err(|e| RunnerError::Invalid {
        path: pipeline.file.clone(),
        message: format!("model repository {repository}: {e}"),
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunnerError::Io { path, source }
    };
    for dir in [runs.join(PIPELINE_DIR), runs.join(CACHE_DIR)] {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let code_dir = pipeline
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let code = CodeRevision::detect(&code_dir);
    let run_id = new_run_id();
    let mut run = PipelineRun {
        format: PIPELINE_FORMAT,
        id: run_id.clone(),
        pipeline: decl.name.clone(),
        file: pipeline.file.display().to_string(),
        file_sha256: pipeline.file_sha256.clone(),
        status: PipelineStatus::Running,
        started_at: now_rfc3339(),
        ended_at: None,
        trigger_firing: std::env::var(TRIGGER_FIRING_ENV)
            .ok()
            .filter(|f| !f.is_empty()),
        code: code.clone(),
        steps: pipeline
            .order
            .iter()
            .map(|&i| StepRecord {
                name: decl.steps[i].name.clone(),
                kind: decl.steps[i].kind,
                status: StepStatus::Pending,
                attempts: 0,
                started_at: None,
                ended_at: None,
                duration_ms: None,
                cache_key: None,
                summary: None,
                output: None,
                error: None,
                log: Vec::new(),
            })
            .collect(),
        outcome: String::new(),
    };
    let record_path = runs.join(PIPELINE_DIR).join(format!("{run_id}.json"));
    let save = |run: &PipelineRun| {
        write_atomic(&record_path, &to_json_pretty(run)).map_err(io(&record_path))
    };
    save(&run)?;
    let say = |line: &str| {
        if !options.quiet {
            eprintln!("[{}] {line}", decl.name);
        }
    };
    say(&format!("run {run_id} of {}", pipeline.file.display()));

    // The store is created by an ingest step if it does not exist yet.
    let store = match FeatureStore::open_at(&store_root) {
        Ok(s) => s,
        Err(_) => {
            FeatureStore::open_or_create_at(&store_root).map_err(|e| RunnerError::Invalid {
                path: pipeline.file.clone(),
                message: format!("feature store {store_root}: {e}"),
            })?
        }
    };
    let ctx = Context {
        pipeline,
        store,
        runs: runs.clone(),
        repository,
        mlflow_uri: options
            .mlflow_uri
            .clone()
            .or_else(|| decl.mlflow_uri.clone())
            .or_else(|| {
                std::env::var("MLFLOW_TRACKING_URI")
                    .ok()
                    .filter(|s| !s.is_empty())
            }),
        code,
        code_dir,
        run_id: run_id.clone(),
        trigger_firing: run.trigger_firing.clone(),
        progress: !options.quiet,
    };

    let mut outputs: BTreeMap<usize, (StepOutput, String)> = BTreeMap::new();
    let mut failed: BTreeSet<usize> = BTreeSet::new();
    for (pos, &i) in pipeline.order.iter().enumerate() {
        let step = &decl.steps[i];
        let label = format!("{} ({})", step.name, step.kind.as_str());
        let ancestors = pipeline.ancestors(i);
        if let Some(&bad) = ancestors.iter().find(|a| failed.contains(a)) {
            failed.insert(i);
            let rec = &mut run.steps[pos];
            rec.status = StepStatus::Skipped;
            rec.summary = Some(format!("skipped: `{}` failed", decl.steps[bad].name));
            say(&format!(
                "{label}: skipped (`{}` failed)",
                decl.steps[bad].name
            ));
            save(&run)?;
            continue;
        }
        // Inputs in execution order, so that `one` prefers the most derived output.
        let inputs: Inputs<'_> = pipeline
            .order
            .iter()
            .filter(|j| ancestors.contains(j))
            .filter_map(|j| {
                outputs
                    .get(j)
                    .map(|(o, _)| (decl.steps[*j].name.as_str(), o))
            })
            .collect();
        let identities: Identities<'_> = ancestors
            .iter()
            .filter_map(|j| {
                outputs
                    .get(j)
                    .map(|(_, id)| (decl.steps[*j].name.as_str(), id.as_str()))
            })
            .collect();
        let started = Instant::now();
        run.steps[pos].started_at = Some(now_rfc3339());
        run.steps[pos].status = StepStatus::Running;
        save(&run)?;

        let mut log_lines = Vec::new();
        let result = run_step(&ctx, i, &inputs, &identities, options, &mut |line| {
            say(&format!("{label}: {line}"));
            log_lines.push(line);
        });
        let rec = &mut run.steps[pos];
        rec.log = log_lines;
        rec.ended_at = Some(now_rfc3339());
        rec.duration_ms = Some(started.elapsed().as_millis() as u64);
        match result {
            Ok(done) => {
                rec.attempts = done.attempts;
                rec.cache_key = Some(done.key);
                rec.status = if done.cached {
                    StepStatus::Cached
                } else {
                    StepStatus::Succeeded
                };
                rec.summary = Some(done.output.summary());
                say(&format!(
                    "{label}: {} — {}",
                    if done.cached {
                        "cached, nothing to do"
                    } else {
                        "done"
                    },
                    done.output.summary()
                ));
                rec.output = Some(done.output.clone());
                outputs.insert(i, (done.output, done.identity));
            }
            Err((attempts, key, message)) => {
                rec.attempts = attempts;
                rec.cache_key = key;
                rec.status = StepStatus::Failed;
                rec.error = Some(message.clone());
                say(&format!(
                    "{label}: FAILED after {attempts} attempt(s): {message}"
                ));
                failed.insert(i);
            }
        }
        save(&run)?;
    }

    run.ended_at = Some(now_rfc3339());
    run.status = if failed.is_empty() {
        PipelineStatus::Succeeded
    } else {
        PipelineStatus::Failed
    };
    run.outcome = outcome_line(&run);
    save(&run)?;
    say(&run.outcome);
    Ok(run)
}

fn outcome_line(run: &PipelineRun) -> String {
    if let Some(f) = run.steps.iter().find(|s| s.status == StepStatus::Failed) {
        return format!(
            "failed at step `{}`: {}",
            f.name,
            f.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    let cached = run
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Cached)
        .count();
    let head = if run.fully_cached() {
        format!("nothing to do: all {} steps were cached", run.steps.len())
    } else {
        format!("succeeded ({} of {} steps cached)", cached, run.steps.len())
    };
    match run.steps.iter().rev().find_map(|s| match &s.output {
        Some(o @ StepOutput::Publish { .. }) => Some(o.summary()),
        _ => None,
    }) {
        Some(p) => format!("{head}; {p}"),
        None => head,
    }
}

struct StepDone {
    output: StepOutput,
    identity: String,
    key: String,
    cached: bool,
    attempts: u32,
}

fn run_step(
    ctx: &Context<'_>,
    i: usize,
    inputs: &Inputs<'_>,
    identities: &Identities<'_>,
    options: &RunOptions,
    log: &mut dyn FnMut(String),
) -> Result<StepDone, (u32, Option<String>, String)> {
    let decl = &ctx.pipeline.decl;
    let step = &decl.steps[i];
    let retries = step.retries.unwrap_or(decl.retries);
    let mut attempts = 0;
    let mut key = None;
    loop {
        attempts += 1;
        let result = (|| -> Result<StepDone, StepError> {
            let k = cache_key(ctx, i, inputs, identities)?;
            key = Some(k.clone());
            let cache_path = ctx.runs.join(CACHE_DIR).join(format!("{k}.json"));
            if !options.no_cache {
                if let Ok(text) = std::fs::read(&cache_path) {
                    match serde_json::from_slice::<CacheEntry>(&text) {
                        Ok(entry) if ctx.still_valid(&entry.output) => {
                            return Ok(StepDone {
                                identity: entry.identity,
                                output: entry.output,
                                key: k,
                                cached: true,
                                attempts,
                            });
                        }
                        Ok(_) => log("cached output no longer exists; running again".into()),
                        Err(e) => log(format!("ignoring unreadable cache entry: {e}")),
                    }
                }
            }
            let output = ctx.execute(i, inputs, log)?;
            let entry = CacheEntry {
                key: k.clone(),
                step: step.name.clone(),
                kind: step.kind,
                pipeline_run: ctx.run_id.clone(),
                created_at: now_rfc3339(),
                identity: output.identity(),
                output,
            };
            write_atomic(&cache_path, &to_json_pretty(&entry))
                .map_err(|e| format!("{}: {e}", cache_path.display()))?;
            Ok(StepDone {
                identity: entry.identity,
                output: entry.output,
                key: k,
                cached: false,
                attempts,
            })
        })();
        match result {
            Ok(done) => return Ok(done),
            Err(e) if e.retriable && attempts <= retries => {
                log(format!(
                    "attempt {attempts} failed: {}; retrying in {} ms",
                    e.message, decl.retry_delay_ms
                ));
                std::thread::sleep(Duration::from_millis(decl.retry_delay_ms));
            }
            Err(e) => return Err((attempts, key, e.message)),
        }
    }
}

fn cache_key(
    ctx: &Context<'_>,
    i: usize,
    inputs: &Inputs<'_>,
    identities: &Identities<'_>,
) -> Result<String, StepError> {
    let step = &ctx.pipeline.decl.steps[i];
    let material = serde_json::json!({
        "format": PIPELINE_FORMAT,
        "kind": step.kind,
        "params": serde_json::to_value(&ctx.pipeline.params[i]).unwrap_or(Value::Null),
        "inputs": identities,
        "extra": ctx.key_extra(i, inputs)?,
    });
    Ok(sha256_hex(material.to_string().as_bytes()))
}

/// The pipeline runs recorded under `runs`, oldest first.
pub fn list_runs(runs: &Path) -> Result<Vec<PipelineRun>, RunnerError> {
    list_json_ids(&runs.join(PIPELINE_DIR))?
        .iter()
        .map(|id| read_run(&runs.join(PIPELINE_DIR).join(format!("{id}.json"))))
        .collect()
}

/// A pipeline run by id or unique id prefix.
pub fn get_run(runs: &Path, reference: &str) -> Result<PipelineRun, RunnerError> {
    let ids = list_json_ids(&runs.join(PIPELINE_DIR))?;
    if let Some(id) = ids.iter().find(|id| *id == reference) {
        return read_run(&runs.join(PIPELINE_DIR).join(format!("{id}.json")));
    }
    let matches: Vec<&String> = ids.iter().filter(|id| id.starts_with(reference)).collect();
    match matches.as_slice() {
        [] => Err(RunnerError::NotFound(reference.to_string())),
        [one] => read_run(&runs.join(PIPELINE_DIR).join(format!("{one}.json"))),
        _ => Err(RunnerError::Ambiguous {
            reference: reference.to_string(),
            candidates: matches.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

fn read_run(path: &Path) -> Result<PipelineRun, RunnerError> {
    let text = std::fs::read(path).map_err(|source| RunnerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| RunnerError::BadRecord {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Pipeline, RunnerError> {
        Pipeline::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn orders_steps_and_rejects_bad_files() {
        let p = load(
            r#"
            name = "p"
            model = "m"
            [[step]]
            name = "train"
            kind = "train"
            needs = ["data"]
            features = ["a"]
            label = "y"
            [[step]]
            name = "data"
            kind = "dataset"
            dataset = "d"
            "#,
        )
        .expect("valid");
        let names: Vec<&str> = p
            .order
            .iter()
            .map(|&i| p.decl.steps[i].name.as_str())
            .collect();
        assert_eq!(names, ["data", "train"]);

        let cycle = load(
            r#"
            name = "p"
            [[step]]
            name = "a"
            kind = "dataset"
            dataset = "d"
            needs = ["b"]
            [[step]]
            name = "b"
            kind = "dataset"
            dataset = "d"
            needs = ["a"]
            "#,
        )
        .expect_err("cycle");
        assert!(cycle.to_string().contains("cycle"), "{cycle}");

        let unknown = load(
            r#"
            name = "p"
            [[step]]
            name = "a"
            kind = "dataset"
            datset = "d"
            "#,
        )
        .expect_err("typo");
        assert!(unknown.to_string().contains("datset"), "{unknown}");

        let no_model = load(
            r#"
            name = "p"
            [[step]]
            name = "e"
            kind = "evaluate"
            "#,
        )
        .expect_err("model");
        assert!(no_model.to_string().contains("model"), "{no_model}");

        let bad_activation = load(
            r#"
            name = "p"
            [[step]]
            name = "t"
            kind = "train"
            features = ["a"]
            label = "y"
            activation = "swish"
            "#,
        )
        .expect_err("activation");
        assert!(
            bad_activation.to_string().contains("swish"),
            "{bad_activation}"
        );
    }
}
