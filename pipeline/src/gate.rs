//! Evaluation, the promotion gate, and publishing a trained run into a model repository.
//!
//! Flow: a candidate (a training run's artifact folder, see [`crate::training`]) ->
//! [`evaluate`]: the candidate and the currently published version of the model (the newest
//! numeric version whose weights differ from the candidate's) run on the *same* rows, the
//! candidate's test split of its dataset version -> [`gate`]: the candidate passes only if it is
//! better than that baseline by more than the configured margin (or there is no baseline) ->
//! [`publish`]: the weights (as safetensors, and as ONNX unless `onnx = false`) plus
//! `reference.json` (the training data's profile, for drift
//! monitors) and `lineage.json` (dataset version, run id, code revision, metrics, gate result)
//! become the next version, atomically, in a local directory or an object store (see
//! [`crate::repository`]); then, if a server URL is configured, the server is asked to load the
//! model (`POST {url}/v2/repository/models/{model}/load`).
//!
//! Publishing is idempotent: a version whose `model.safetensors` has the candidate's hash is
//! reused rather than published twice, so a retried or re-run publish step does no harm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::{ArchitectureSpec, DenseModel};
use crate::publish::{PublishError, CONFIG_FILE, LABELS_FILE, MODEL_FILE};
use crate::repository::ModelRepository;
use crate::store::FeatureStore;
use crate::tracking::CodeRevision;
use crate::train::{score, Quality, SplitMetrics, Task};
use crate::training::{training_data, ModelInfo, TrainingError, WEIGHTS_FILE};
use crate::util::{now_rfc3339, sha256_file, to_json_pretty, write_atomic};

/// Drift reference shipped with a published version.
pub use nereid_monitor::reference::REFERENCE_FILE;
/// Provenance shipped with a published version.
pub const LINEAGE_FILE: &str = "lineage.json";
/// The version's model as ONNX (see [`PublishConfig::onnx`]).
pub const ONNX_FILE: &str = "model.onnx";

/// Why evaluation, gating or publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Invalid(String),

    #[error("{0}")]
    Config(String),

    #[error(transparent)]
    Training(#[from] TrainingError),

    #[error(transparent)]
    Store(#[from] crate::store::StoreError),

    #[error(transparent)]
    Publish(#[from] PublishError),

    #[error(transparent)]
    Model(#[from] crate::model::ModelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("published version {version} of `{model}`, but the server at {url} did not load it: {message}")]
    ServerLoad {
        model: String,
        version: u64,
        url: String,
        message: String,
    },
}

type Result<T, E = GateError> = std::result::Result<T, E>;

/// A model's metrics on the evaluation rows: loss and accuracy for a classifier, loss (MSE),
/// RMSE, MAE and R² for a regressor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub rows: usize,
    pub loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
}

impl From<SplitMetrics> for EvalMetrics {
    fn from(m: SplitMetrics) -> Self {
        let mut out = EvalMetrics {
            rows: m.rows,
            loss: f64::from(m.loss),
            accuracy: None,
            rmse: None,
            mae: None,
            r2: None,
        };
        match m.quality {
            Quality::Classification { accuracy } => out.accuracy = Some(f64::from(accuracy)),
            Quality::Regression { rmse, mae, r2 } => {
                out.rmse = Some(f64::from(rmse));
                out.mae = Some(f64::from(mae));
                out.r2 = Some(f64::from(r2));
            }
        }
        out
    }
}

/// Reads one metric; `None` where the task has no such metric.
type PickMetric = fn(&EvalMetrics) -> Option<f64>;

/// The metrics a gate can decide on: name, value, and whether higher is better.
const GATE_METRICS: &[(&str, PickMetric, bool)] = &[
    ("accuracy", |m| m.accuracy, true),
    ("loss", |m| Some(m.loss), false),
    ("rmse", |m| m.rmse, false),
    ("mae", |m| m.mae, false),
    ("r2", |m| m.r2, true),
];

impl EvalMetrics {
    /// `"accuracy 0.9667 loss 0.0812"` or `"rmse 1.2 mae 0.9 r2 0.95"`.
    pub fn summary(&self) -> String {
        match (self.accuracy, self.rmse, self.mae, self.r2) {
            (Some(a), ..) => format!("accuracy {a:.4} loss {:.4}", self.loss),
            (None, Some(rmse), Some(mae), Some(r2)) => {
                format!("rmse {rmse:.4} mae {mae:.4} r2 {r2:.4}")
            }
            _ => format!("loss {:.4}", self.loss),
        }
    }
}

/// The published version the candidate was compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub version: u64,
    pub weights_sha256: String,
    /// `None` when it could not be evaluated on these rows (see `incomparable`).
    pub metrics: Option<EvalMetrics>,
    /// Why the baseline cannot be compared (different inputs or classes, unreadable files).
    pub incomparable: Option<String>,
}

/// Candidate and baseline on the same rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    #[serde(default)]
    pub task: Task,
    pub model: String,
    pub candidate_run: String,
    pub candidate_weights_sha256: String,
    pub dataset_version: String,
    pub candidate: EvalMetrics,
    /// The version that already holds exactly the candidate's weights, if any.
    #[serde(default)]
    pub candidate_published_as: Option<u64>,
    pub baseline: Option<Baseline>,
}

/// Which metric decides, and by how much the candidate must win.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// `accuracy` (higher is better) or `loss` (lower is better) for classifiers; `rmse`, `mae`,
    /// `loss` (lower is better) or `r2` (higher is better) for regressors. Default: `accuracy`
    /// for classifiers, `rmse` for regressors.
    #[serde(default)]
    pub metric: Option<String>,
    /// The candidate must beat the baseline by more than this (in the metric's units).
    #[serde(default)]
    pub min_improvement: f64,
    /// Publish over a baseline that cannot be compared (e.g. other classes) instead of failing.
    #[serde(default)]
    pub replace_incomparable: bool,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            metric: None,
            min_improvement: 0.0,
            replace_incomparable: false,
        }
    }
}

/// The gate's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub passed: bool,
    pub reason: String,
    pub metric: String,
    pub candidate: f64,
    pub baseline: Option<f64>,
    pub baseline_version: Option<u64>,
    /// Candidate better by this much (positive is better, whatever the metric's direction).
    pub improvement: Option<f64>,
    pub min_improvement: f64,
}

/// The `lineage.json` of a published version, when it has one that reads.
fn published_lineage(repo: &ModelRepository, model: &str, version: u64) -> Result<Option<Lineage>> {
    let Some(path) = repo.version_file(model, version, LINEAGE_FILE)? else {
        return Ok(None);
    };
    Ok(std::fs::read(path)
        .ok()
        .and_then(|text| serde_json::from_slice::<Lineage>(&text).ok()))
}

/// The SHA-256 of a published version's weights, `None` when it has none. Its `lineage.json`
/// says, when the pipeline published it (versions are immutable, and it spares downloading the
/// weights of every version of a remote repository); otherwise the weights are hashed.
pub fn published_weights_sha256(
    repo: &ModelRepository,
    model: &str,
    version: u64,
) -> Result<Option<String>> {
    if let Some(lineage) = published_lineage(repo, model, version)? {
        return Ok(Some(lineage.weights_sha256));
    }
    let Some(weights) = repo.version_file(model, version, MODEL_FILE)? else {
        return Ok(None);
    };
    Ok(sha256_file(&weights).ok().map(|(sha, _)| sha))
}

/// The newest published version of `model` whose weights are not `exclude_sha256`, with its hash.
pub fn current_baseline(
    repo: &ModelRepository,
    model: &str,
    exclude_sha256: &str,
) -> Result<Option<(u64, String)>> {
    for version in repo.versions(model)?.into_iter().rev() {
        match published_weights_sha256(repo, model, version)? {
            Some(sha) if sha != exclude_sha256 => return Ok(Some((version, sha))),
            _ => {}
        }
    }
    Ok(None)
}

/// The published version of `model` whose weights have this hash, if any.
pub fn published_version_with(
    repo: &ModelRepository,
    model: &str,
    sha256: &str,
) -> Result<Option<u64>> {
    for version in repo.versions(model)?.into_iter().rev() {
        if published_weights_sha256(repo, model, version)?.is_some_and(|sha| sha == sha256) {
            return Ok(Some(version));
        }
    }
    Ok(None)
}

/// The spec a published version runs under: its `lineage.json` if we wrote it, else the model's
/// `config.pbtxt` parameters.
fn published_spec(
    repo: &ModelRepository,
    model: &str,
    version: u64,
) -> std::result::Result<ArchitectureSpec, String> {
    if let Some(l) = published_lineage(repo, model, version).map_err(|e| e.to_string())? {
        return ArchitectureSpec::from_parameters(|k| l.architecture.get(k).cloned())
            .map_err(|e| e.to_string());
    }
    let path = repo
        .model_file(model, CONFIG_FILE)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}/{model} has no {CONFIG_FILE}", repo.describe()))?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = nereid_protocol::config::parse_pbtxt(&text, &path.display().to_string())
        .map_err(|e| e.to_string())?;
    ArchitectureSpec::from_parameters(|k| config.parameters.get(k).map(|p| p.string_value.clone()))
        .map_err(|e| e.to_string())
}

/// Evaluates the candidate in `candidate_dir` and the current version of `model` in `repo` on
/// the candidate's test rows.
pub fn evaluate(
    store: &FeatureStore,
    candidate_dir: &Path,
    repo: &ModelRepository,
    model: &str,
) -> Result<Evaluation> {
    let info = ModelInfo::read(candidate_dir)?;
    if info.test_rows.is_empty() {
        return Err(GateError::Invalid(format!(
            "run {} has no test split (test_fraction = 0): nothing to evaluate on",
            info.run_id
        )));
    }
    let version = store.get(&info.dataset_version)?;
    let batch = store.read(&version)?;
    // Drop-null rows exactly as training did, so positions line up.
    let data = training_data(
        &batch,
        version.short_id(),
        &info.features,
        &info.label,
        info.task,
        true,
    )?;
    if data.rows != info.dataset_rows || data.target.classes() != info.classes.as_slice() {
        return Err(GateError::Invalid(format!(
            "dataset {} no longer yields the rows/classes run {} was trained on",
            version.short_id(),
            info.run_id
        )));
    }
    let n = data.n_features;
    let outside = |r: usize| GateError::Invalid(format!("test row {r} is outside the dataset"));
    let mut x = Vec::with_capacity(info.test_rows.len() * n);
    for &r in &info.test_rows {
        let row = data
            .features
            .get(r * n..(r + 1) * n)
            .ok_or_else(|| outside(r))?;
        x.extend_from_slice(row);
    }
    let rows = info.test_rows.len();
    let x = Tensor::from_vec(x, (rows, n), &Device::Cpu)?;
    let y = data
        .target
        .tensor_of(&info.test_rows)
        .ok_or_else(|| GateError::Invalid("a test row is outside the dataset".into()))??;
    let task = info.task;

    let spec = info.spec()?;
    let candidate_model = DenseModel::load(&candidate_dir.join(WEIGHTS_FILE), spec, &Device::Cpu)?;
    let candidate = EvalMetrics::from(score(&candidate_model, &x, &y, task)?);

    let baseline = match current_baseline(repo, model, &info.weights_sha256)? {
        None => None,
        Some((version, weights_sha256)) => {
            let attempt = || -> std::result::Result<EvalMetrics, String> {
                let spec = published_spec(repo, model, version)?;
                let weights = repo
                    .version_file(model, version, MODEL_FILE)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("it has no {MODEL_FILE}"))?;
                let m =
                    DenseModel::load(&weights, spec, &Device::Cpu).map_err(|e| e.to_string())?;
                if m.input_features() != n || m.output_features() != info.outputs() {
                    return Err(format!(
                        "it maps {} inputs to {} outputs, the candidate {} to {}",
                        m.input_features(),
                        m.output_features(),
                        n,
                        info.outputs()
                    ));
                }
                let lineage = published_lineage(repo, model, version).map_err(|e| e.to_string())?;
                if let Some(theirs) = lineage.map(|l| l.task) {
                    if theirs != task {
                        return Err(format!(
                            "it is a {theirs} model, the candidate a {task} model"
                        ));
                    }
                }
                let labels_path = repo
                    .model_file(model, LABELS_FILE)
                    .map_err(|e| e.to_string())?;
                if let (Task::Classification, Some(labels_path)) = (task, labels_path) {
                    if let Ok(text) = std::fs::read_to_string(&labels_path) {
                        let labels: Vec<&str> = text.lines().collect();
                        if labels != info.classes {
                            return Err(format!(
                                "its classes are {labels:?}, the candidate's {:?}",
                                info.classes
                            ));
                        }
                    }
                }
                score(&m, &x, &y, task)
                    .map(EvalMetrics::from)
                    .map_err(|e| e.to_string())
            };
            let (metrics, incomparable) = match attempt() {
                Ok(m) => (Some(m), None),
                Err(e) => (None, Some(e)),
            };
            Some(Baseline {
                version,
                weights_sha256,
                metrics,
                incomparable,
            })
        }
    };
    Ok(Evaluation {
        task,
        model: model.to_string(),
        candidate_run: info.run_id.clone(),
        candidate_weights_sha256: info.weights_sha256.clone(),
        dataset_version: info.dataset_version.clone(),
        candidate,
        candidate_published_as: published_version_with(repo, model, &info.weights_sha256)?,
        baseline,
    })
}

/// Applies the gate to an evaluation.
pub fn gate(evaluation: &Evaluation, config: &GateConfig) -> Result<GateResult> {
    let metric = config
        .metric
        .clone()
        .unwrap_or_else(|| match evaluation.task {
            Task::Classification => "accuracy".to_string(),
            Task::Regression => "rmse".to_string(),
        });
    // The metrics this task's evaluation has.
    let usable: Vec<&str> = GATE_METRICS
        .iter()
        .filter(|(_, pick, _)| pick(&evaluation.candidate).is_some())
        .map(|(name, _, _)| *name)
        .collect();
    let Some(&(_, pick, higher_is_better)) = GATE_METRICS
        .iter()
        .find(|(name, pick, _)| *name == metric && pick(&evaluation.candidate).is_some())
    else {
        return Err(GateError::Invalid(format!(
            "gate metric `{metric}` does not apply to a {} model: use {}",
            evaluation.task,
            usable.join(", ")
        )));
    };
    // A baseline without the metric (e.g. another task's) cannot be compared on it.
    let pick = |m: &EvalMetrics| pick(m).unwrap_or(f64::NAN);
    if !(config.min_improvement.is_finite() && config.min_improvement >= 0.0) {
        return Err(GateError::Invalid(format!(
            "min_improvement must be finite and >= 0, got {}",
            config.min_improvement
        )));
    }
    let candidate = pick(&evaluation.candidate);
    let mut result = GateResult {
        passed: false,
        reason: String::new(),
        metric: metric.clone(),
        candidate,
        baseline: None,
        baseline_version: None,
        improvement: None,
        min_improvement: config.min_improvement,
    };
    match &evaluation.baseline {
        None => {
            result.passed = true;
            result.reason = match evaluation.candidate_published_as {
                Some(v) => format!(
                    "the candidate is version {v} of `{}` already (identical weights); {} = {candidate:.4}",
                    evaluation.model, metric
                ),
                None => format!(
                    "no published version of `{}` to compare with; {} = {candidate:.4}",
                    evaluation.model, metric
                ),
            };
        }
        Some(b) => {
            result.baseline_version = Some(b.version);
            match (&b.metrics, &b.incomparable) {
                (Some(m), _) => {
                    let base = pick(m);
                    let improvement = if higher_is_better {
                        candidate - base
                    } else {
                        base - candidate
                    };
                    result.baseline = Some(base);
                    result.improvement = Some(improvement);
                    result.passed = improvement > config.min_improvement;
                    result.reason = format!(
                        "{} {candidate:.4} vs {base:.4} of version {} on the same {} rows: {} by {improvement:+.4} (must be > {})",
                        metric,
                        b.version,
                        evaluation.candidate.rows,
                        if result.passed { "better" } else { "not better" },
                        config.min_improvement
                    );
                }
                (None, why) => {
                    let why = why.clone().unwrap_or_default();
                    result.passed = config.replace_incomparable;
                    result.reason = format!(
                        "version {} cannot be compared with the candidate ({why}); {}",
                        b.version,
                        if config.replace_incomparable {
                            "replace_incomparable is set, so the candidate replaces it"
                        } else {
                            "set replace_incomparable = true to replace it anyway"
                        }
                    );
                }
            }
        }
    }
    Ok(result)
}

/// How to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Model name in the repository.
    pub model: String,
    /// Input and output tensor names of the generated `config.pbtxt`; the output defaults to
    /// `PROBABILITIES` for classifiers and `PREDICTION` for regressors.
    #[serde(default = "default_input")]
    pub input_name: String,
    #[serde(default)]
    pub output_name: Option<String>,
    #[serde(default = "default_max_batch")]
    pub max_batch_size: u32,
    /// Server to tell about the new version: `POST {url}/v2/repository/models/{m}/load` on a
    /// server in explicit mode; a server that polls its repository (which refuses the load API)
    /// is waited on until the version is ready instead.
    #[serde(default)]
    pub server_url: Option<String>,
    /// For a server whose repository API is restricted (`--http-restricted-api`): the header
    /// it expects, and the environment variable that holds the header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_header_env: Option<String>,
    /// Ship the version's model as ONNX too (`model.onnx` next to `model.safetensors`), so that
    /// it also runs on Triton's ONNX backend, Nereid's `onnxruntime` and any ONNX tool.
    #[serde(default = "default_onnx")]
    pub onnx: bool,
}

/// Whether a published version carries `model.onnx` unless told otherwise.
pub(crate) fn default_onnx() -> bool {
    true
}

/// Default input tensor name of a published model (also the pipeline's `publish` step's).
pub(crate) fn default_input() -> String {
    "INPUT".into()
}
/// Default `max_batch_size` of a published model (also the pipeline's `publish` step's).
pub(crate) fn default_max_batch() -> u32 {
    64
}

impl PublishConfig {
    pub fn new(model: impl Into<String>) -> Self {
        PublishConfig {
            model: model.into(),
            input_name: default_input(),
            output_name: None,
            max_batch_size: default_max_batch(),
            server_url: None,
            server_header: None,
            server_header_env: None,
            onnx: default_onnx(),
        }
    }
}

/// `lineage.json` of a published version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub format: u32,
    #[serde(default)]
    pub task: Task,
    /// The version is the folder's name (known only at the atomic rename).
    pub model: String,
    pub published_at: String,
    pub dataset_version: String,
    /// The dataset version's parents (e.g. the inputs of a point-in-time join).
    pub dataset_parents: Vec<String>,
    pub training_run: String,
    pub pipeline_run: Option<String>,
    /// Where the pipeline run's record is (`<runs>/pipeline/<id>.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<PathBuf>,
    /// The trigger firing that started the run, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_firing: Option<String>,
    /// The feature store that holds the dataset versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub code: CodeRevision,
    pub architecture: BTreeMap<String, String>,
    pub features: Vec<String>,
    pub label: String,
    pub classes: Vec<String>,
    pub weights_sha256: String,
    pub training_metrics: BTreeMap<String, f64>,
    pub evaluation: Option<Evaluation>,
    pub gate: Option<GateResult>,
}

/// `reference.json` of a published version: what drift monitors compare live inputs with.
pub use nereid_monitor::reference::{PredictionReference, Reference, REFERENCE_FORMAT};

/// The result of [`publish`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub model: String,
    pub version: u64,
    /// Where the version is: a path, or a URL in a remote repository.
    #[serde(alias = "path")]
    pub location: String,
    /// SHA-256 of the version's `model.safetensors`.
    pub weights_sha256: String,
    /// `false` when the same weights were already published as `version`.
    pub new_version: bool,
    /// Whether the server was asked to load it (and did).
    pub server_loaded: bool,
}

impl PublishConfig {
    /// The output tensor's name for a model of `task`.
    pub fn output_name(&self, task: Task) -> &str {
        match (&self.output_name, task) {
            (Some(name), _) => name,
            (None, Task::Classification) => "PROBABILITIES",
            (None, Task::Regression) => "PREDICTION",
        }
    }
}

/// The `config.pbtxt` of a published model: FP32 `[features]` in, FP32 `[outputs]` out (with the
/// class labels file for classifiers, which the classification extension reads).
pub fn config_pbtxt(info: &ModelInfo, config: &PublishConfig, comment: &str) -> String {
    let mut text = String::new();
    for line in comment.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&format!(
        "name: \"{}\"\nbackend: \"candle\"\nmax_batch_size: {}\n",
        config.model, config.max_batch_size
    ));
    text.push_str(&format!(
        "input [ {{ name: \"{}\" data_type: TYPE_FP32 dims: [ {} ] }} ]\n",
        config.input_name,
        info.features.len()
    ));
    let labels = match info.task {
        Task::Classification => format!(" label_filename: \"{LABELS_FILE}\""),
        Task::Regression => String::new(),
    };
    text.push_str(&format!(
        "output [ {{ name: \"{}\" data_type: TYPE_FP32 dims: [ {} ]{labels} }} ]\n",
        config.output_name(info.task),
        info.outputs()
    ));
    // ArchitectureSpec::to_parameters order, so the file reads like the hand-written ones.
    if let Ok(spec) = info.spec() {
        for (k, v) in spec.to_parameters() {
            text.push_str(&format!(
                "parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}\n"
            ));
        }
    }
    text.push_str("instance_group [ { count: 1 kind: KIND_CPU } ]\ndynamic_batching { }\n");
    text
}

/// The config a new version is published with: the generated one, set into the serving
/// configuration the repository already has for the model. What describes the model itself
/// (name, backend, inputs, outputs, `max_batch_size`, its architecture parameters) comes from the
/// candidate; how it is served (instance groups and their placement, dynamic batching, warm-up,
/// version policy, monitor and other parameters) stays as the operator set it. A model the
/// repository does not have yet gets the generated config as it is.
pub fn keep_serving_config(
    repo: &ModelRepository,
    model: &str,
    generated: &str,
    comment: &str,
) -> Result<String> {
    let header: String = comment.lines().map(|l| format!("# {l}\n")).collect();
    let Some(path) = repo.model_file(model, CONFIG_FILE)? else {
        return Ok(format!("{header}{generated}"));
    };
    let existing =
        std::fs::read_to_string(&path).map_err(|source| GateError::Io { path, source })?;
    let origin = format!("{}/{model}/{CONFIG_FILE}", repo.describe());
    let refuse = |e: nereid_protocol::Error| {
        GateError::Config(format!(
        "cannot keep the serving configuration of {origin} for the new version: {e}; fix or remove the file"
    ))
    };
    let mut merged = nereid_protocol::config::parse_pbtxt(&existing, &origin).map_err(refuse)?;
    let generated =
        nereid_protocol::config::parse_pbtxt(generated, "the generated config").map_err(refuse)?;
    merged.name = generated.name;
    merged.backend = generated.backend;
    merged.platform = generated.platform;
    merged.max_batch_size = generated.max_batch_size;
    merged.input = generated.input;
    merged.output = generated.output;
    // Architecture parameters are the candidate's; stale ones (a layer the new model does not
    // have) go. Every other parameter (nereid.monitor.*, user keys) stays.
    merged.parameters.retain(|key, _| {
        !crate::model::is_architecture_parameter(key) || generated.parameters.contains_key(key)
    });
    merged.parameters.extend(generated.parameters);
    if merged.instance_group.is_empty() {
        merged.instance_group = generated.instance_group;
    }
    // Parameters in key order, one per line, so that the file is the same on every publish.
    let mut parameters: Vec<(String, String)> = std::mem::take(&mut merged.parameters)
        .into_iter()
        .map(|(k, v)| (k, v.string_value))
        .collect();
    parameters.sort();
    let mut text = format!("{header}{}", nereid_protocol::config::to_pbtxt(&merged));
    for (key, value) in parameters {
        text.push_str(&format!(
            "parameters {{ key: {} value: {{ string_value: {} }} }}\n",
            pbtxt_string(&key),
            pbtxt_string(&value)
        ));
    }
    Ok(text)
}

/// A protobuf text-format string literal.
fn pbtxt_string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

/// A store location for the record: URLs as they are, local paths made absolute.
fn absolute_location(location: &str) -> String {
    match std::fs::canonicalize(location) {
        Ok(path) if !location.contains("://") => path.display().to_string(),
        _ => location.to_string(),
    }
}

/// The pipeline run a publish belongs to, for the version's lineage.
#[derive(Debug, Clone, Copy)]
pub struct RunRef<'a> {
    pub id: &'a str,
    /// The runs folder that holds its record.
    pub runs: &'a Path,
    pub trigger_firing: Option<&'a str>,
}

/// Publishes the candidate as the next version of `config.model` (or finds it already there),
/// then asks the server to load it when `config.server_url` is set.
#[allow(clippy::too_many_arguments)]
pub fn publish(
    store: &FeatureStore,
    candidate_dir: &Path,
    repo: &ModelRepository,
    config: &PublishConfig,
    code: &CodeRevision,
    evaluation: Option<&Evaluation>,
    gate_result: Option<&GateResult>,
    pipeline_run: Option<&RunRef<'_>>,
) -> Result<Published> {
    let info = ModelInfo::read(candidate_dir)?;
    let (version, new_version) =
        match published_version_with(repo, &config.model, &info.weights_sha256)? {
            Some(v) => (v, false),
            None => {
                let dataset = store.get(&info.dataset_version)?;
                let staging = tempfile_dir()?;
                let result = (|| -> Result<(u64, String)> {
                    let io = |p: &Path| {
                        let p = p.to_path_buf();
                        move |source| GateError::Io { path: p, source }
                    };
                    let weights = staging.join(MODEL_FILE);
                    std::fs::copy(candidate_dir.join(WEIGHTS_FILE), &weights)
                        .map_err(io(&weights))?;
                    if config.onnx {
                        let model = DenseModel::load(&weights, info.spec()?, &Device::Cpu)?;
                        let onnx =
                            model.to_onnx(&config.input_name, config.output_name(info.task))?;
                        let path = staging.join(ONNX_FILE);
                        write_atomic(&path, &onnx).map_err(io(&path))?;
                    }
                    let prediction = info
                        .reference
                        .columns
                        .iter()
                        .any(|c| c.name == info.prediction_column)
                        .then(|| PredictionReference {
                            output: config.output_name(info.task).to_string(),
                            column: info.prediction_column.clone(),
                        });
                    let reference = Reference {
                        format: REFERENCE_FORMAT,
                        task: info.task,
                        dataset_version: info.dataset_version.clone(),
                        input_name: config.input_name.clone(),
                        features: info.features.clone(),
                        label: info.label.clone(),
                        classes: info.classes.clone(),
                        profile: info.reference.clone(),
                        inputs: Vec::new(),
                        prediction,
                    };
                    let path = staging.join(REFERENCE_FILE);
                    write_atomic(&path, &to_json_pretty(&reference)).map_err(io(&path))?;
                    let lineage = Lineage {
                        format: 1,
                        task: info.task,
                        model: config.model.clone(),
                        published_at: now_rfc3339(),
                        dataset_version: info.dataset_version.clone(),
                        dataset_parents: dataset.parents.clone(),
                        training_run: info.run_id.clone(),
                        pipeline_run: pipeline_run.map(|r| r.id.to_string()),
                        runs: pipeline_run.map(|r| r.runs.to_path_buf()),
                        trigger_firing: pipeline_run
                            .and_then(|r| r.trigger_firing.map(str::to_string)),
                        store: Some(absolute_location(&store.location())),
                        code: code.clone(),
                        architecture: info.architecture.clone(),
                        features: info.features.clone(),
                        label: info.label.clone(),
                        classes: info.classes.clone(),
                        weights_sha256: info.weights_sha256.clone(),
                        training_metrics: info.metrics.clone(),
                        evaluation: evaluation.cloned(),
                        gate: gate_result.cloned(),
                    };
                    let path = staging.join(LINEAGE_FILE);
                    write_atomic(&path, &to_json_pretty(&lineage)).map_err(io(&path))?;
                    let comment = format!(
                        "Published by the nereid pipeline: training run {}, dataset version {}.",
                        info.run_id, info.dataset_version
                    );
                    let pbtxt = keep_serving_config(
                        repo,
                        &config.model,
                        &config_pbtxt(&info, config, ""),
                        &comment,
                    )?;
                    Ok(repo.publish_next_version(&config.model, &pbtxt, &info.classes, &staging)?)
                })();
                let _ = std::fs::remove_dir_all(&staging);
                (result?.0, true)
            }
        };
    let mut published = Published {
        model: config.model.clone(),
        version,
        location: repo.describe_version(&config.model, version),
        weights_sha256: info.weights_sha256.clone(),
        new_version,
        server_loaded: false,
    };
    if let Some(url) = &config.server_url {
        let header = match (&config.server_header, &config.server_header_env) {
            (Some(name), Some(env)) => Some((
                name.clone(),
                std::env::var(env).map_err(|_| {
                    GateError::Invalid(format!("server_header_env names {env}, which is not set"))
                })?,
            )),
            (None, None) => None,
            _ => {
                return Err(GateError::Invalid(
                    "server_header and server_header_env go together".into(),
                ))
            }
        };
        notify_server(url, &config.model, version, header.as_ref()).map_err(|message| {
            GateError::ServerLoad {
                model: config.model.clone(),
                version,
                url: url.clone(),
                message,
            }
        })?;
        published.server_loaded = true;
    }
    Ok(published)
}

/// Writes `model.onnx` into version `version` of the model in `model_dir` (a Triton model
/// folder whose `config.pbtxt` names the architecture, one input and one output): the
/// `model.safetensors` there, exported by [`DenseModel::to_onnx`] under the config's tensor
/// names. Returns the file written.
pub fn export_version_onnx(model_dir: &Path, version: u64) -> Result<PathBuf> {
    let config_path = model_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|source| GateError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config = nereid_protocol::config::parse_pbtxt(&text, &config_path.display().to_string())
        .map_err(|e| GateError::Config(e.message))?;
    let (Some(input), Some(output)) = (config.input.first(), config.output.first()) else {
        return Err(GateError::Config(format!(
            "{} declares no input or no output",
            config_path.display()
        )));
    };
    let spec = ArchitectureSpec::from_parameters(|k| {
        config.parameters.get(k).map(|p| p.string_value.clone())
    })?;
    let dir = model_dir.join(version.to_string());
    let model = DenseModel::load(&dir.join(MODEL_FILE), spec, &Device::Cpu)?;
    let onnx = model.to_onnx(&input.name, &output.name)?;
    let path = dir.join(ONNX_FILE);
    write_atomic(&path, &onnx).map_err(|source| GateError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A private folder to assemble a version's files in; publishing then copies them into a
/// staging folder inside the model folder and renames that into place (or uploads them).
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("nereid-publish-{}", crate::util::new_run_id()));
    std::fs::create_dir_all(&dir).map_err(|source| GateError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// How long a polling server may take to show a published version (it loads a version once
/// two scans see it unchanged; Triton's and Nereid's default scan interval is 15 s).
const POLL_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Tells the server at `url` about `version` of `model`: the load API (Triton's explicit model
/// control), or, when the server polls its repository and so refuses that API, waiting until
/// `GET /v2/models/{model}/versions/{version}/ready` answers 200.
pub fn notify_server(
    url: &str,
    model: &str,
    version: u64,
    header: Option<&(String, String)>,
) -> std::result::Result<(), String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())?;
    let base = url.trim_end_matches('/');
    let with_header = |request: reqwest::blocking::RequestBuilder| match header {
        Some((name, value)) => request.header(name.as_str(), value.as_str()),
        None => request,
    };
    let endpoint = format!("{base}/v2/repository/models/{model}/load");
    let response = with_header(client.post(&endpoint))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().unwrap_or_default();
    if !body.contains("not allowed if polling is enabled") {
        return Err(format!("{endpoint} answered {status}: {body}"));
    }
    let ready = format!("{base}/v2/models/{model}/versions/{version}/ready");
    let deadline = std::time::Instant::now() + POLL_READY_TIMEOUT;
    loop {
        match with_header(client.get(&ready)).send() {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250))
            }
            Ok(r) => {
                return Err(format!(
                    "the server does not take load requests (it polls its repository or loads nothing at run time), and {ready} still answers {} after {} s",
                    r.status(),
                    POLL_READY_TIMEOUT.as_secs()
                ))
            }
            Err(e) => return Err(format!("{ready}: {e}")),
        }
    }
}
