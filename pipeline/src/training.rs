//! Training from a dataset version, tracked: the glue between the feature store, [`crate::train`]
//! and [`crate::tracking`].
//!
//! Data flow: dataset version -> chosen feature columns cast to f32 (row-major, in the given
//! order, which becomes the model's input order) + the label column, encoded as class indices
//! for classification (distinct values sorted: strings lexicographically, integers and booleans
//! numerically) or cast to f32 for regression -> [`crate::train::train`] with the run's seed ->
//! artifacts in the run's folder:
//!
//! - `model.safetensors`: the weights ([`crate::model`] contract);
//! - `labels.txt` (classification only): one class name per output, in output order;
//! - `model.json` ([`ModelInfo`]): task, architecture, feature and label columns, classes, dataset
//!   version, the rows of each split, and metrics; what evaluation and publishing need.
//!
//! The run record gets params, per-epoch losses (`epoch_train_loss`, `epoch_validation_loss`,
//! step = epoch), final metrics of the kept weights (`train_loss`, `test_accuracy` or
//! `test_rmse`/`test_mae`/`test_r2`, ...),
//! artifact hashes, dataset version, code revision and seed, and is mirrored to MLflow when a
//! tracking URI is given. Everything is deterministic given the dataset, the spec and the seed
//! (see [`crate::train`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type};
use serde::{Deserialize, Serialize};

use crate::model::{Activation, ArchitectureSpec};
use crate::profile::{reference_profile_batch, Profile};
use crate::publish::LABELS_FILE;
use crate::store::{FeatureStore, StoreError};
use crate::tracking::{CodeRevision, MetricPoint, RunRecord, RunStatus, Tracker, TrackingError};
use crate::train::{
    train_observed, Metrics, SplitMetrics, Targets, Task, TrainConfig, TrainError, TrainedModel,
};
use crate::util::{to_json_pretty, write_atomic};

/// Weights file of a run.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// [`ModelInfo`] file of a run.
pub const MODEL_INFO_FILE: &str = "model.json";
/// The run's model as ONNX (input `INPUT`, output `PROBABILITIES` or `PREDICTION`), for ONNX
/// Runtime, Triton's ONNX backend or any ONNX tool.
pub const ONNX_FILE: &str = "model.onnx";

/// What to train: data columns and hyperparameters (the TOML `train` step and `nereid train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// `classification` (default) or `regression`.
    #[serde(default)]
    pub task: Task,
    /// Feature columns, in model input order.
    pub features: Vec<String>,
    /// Classification: the class label column (strings, integers or booleans). Regression: the
    /// numeric target column.
    pub label: String,
    /// Hidden layer widths; empty trains a single layer (softmax or linear regression).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// `relu`, `gelu`, `tanh` or `sigmoid`.
    #[serde(default = "default_activation")]
    pub activation: String,
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default = "default_patience")]
    pub patience: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_fraction")]
    pub validation_fraction: f64,
    #[serde(default = "default_fraction")]
    pub test_fraction: f64,
    #[serde(default = "default_true")]
    pub standardize: bool,
    /// Skip rows with a null feature or label instead of failing.
    #[serde(default)]
    pub drop_null_rows: bool,
}

fn default_activation() -> String {
    "relu".into()
}
fn default_epochs() -> usize {
    TrainConfig::default().epochs
}
fn default_learning_rate() -> f64 {
    TrainConfig::default().learning_rate
}
fn default_patience() -> Option<usize> {
    TrainConfig::default().patience
}
fn default_fraction() -> f64 {
    0.2
}
fn default_true() -> bool {
    true
}

impl TrainSpec {
    /// A spec with the defaults of [`TrainConfig`].
    pub fn new(features: Vec<String>, label: impl Into<String>) -> TrainSpec {
        TrainSpec {
            task: Task::Classification,
            features,
            label: label.into(),
            hidden: Vec::new(),
            activation: default_activation(),
            epochs: default_epochs(),
            learning_rate: default_learning_rate(),
            weight_decay: 0.0,
            batch_size: None,
            patience: default_patience(),
            seed: 0,
            validation_fraction: 0.2,
            test_fraction: 0.2,
            standardize: true,
            drop_null_rows: false,
        }
    }

    /// The trainer's config.
    pub fn config(&self) -> Result<TrainConfig, TrainError> {
        let activation = match self.activation.as_str() {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            other => {
                return Err(TrainError::InvalidConfig(format!(
                    "activation `{other}`: use relu, gelu, tanh or sigmoid"
                )))
            }
        };
        Ok(TrainConfig {
            hidden: self.hidden.clone(),
            activation,
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            batch_size: self.batch_size,
            patience: self.patience,
            seed: self.seed,
            validation_fraction: self.validation_fraction,
            test_fraction: self.test_fraction,
            standardize: self.standardize,
        })
    }

    /// The params recorded in the run record (and MLflow), as strings.
    pub fn params(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).expect("TrainSpec serialises. This is a bug.");
        let mut params = BTreeMap::new();
        if let serde_json::Value::Object(map) = value {
            for (k, v) in map {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                params.insert(k, text);
            }
        }
        params
    }
}

/// Why training from a dataset failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("dataset {dataset}: {message}")]
    Data { dataset: String, message: String },

    #[error(transparent)]
    Store(#[from] StoreError),

    /// Boxed: a training error is large and these errors are rare.
    #[error(transparent)]
    Train(Box<TrainError>),

    #[error(transparent)]
    Tracking(#[from] TrackingError),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("run {run_id} failed: {message}")]
    RunFailed { run_id: String, message: String },
}

impl From<TrainError> for TrainingError {
    fn from(e: TrainError) -> Self {
        TrainingError::Train(Box::new(e))
    }
}

/// A dataset version as a feature matrix and targets.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingData {
    /// Row-major, `features.len() / n_features` rows.
    pub features: Vec<f32>,
    pub n_features: usize,
    pub target: TargetData,
    /// Rows of the dataset kept (after dropping rows with nulls), in order.
    pub rows: Vec<usize>,
    /// The feature and label columns of the kept rows (for the reference profile).
    pub columns: RecordBatch,
}

/// The label column of the kept rows, as training needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetData {
    Classes {
        labels: Vec<u32>,
        /// Class names, index = label value.
        classes: Vec<String>,
    },
    /// One value per row.
    Values(Vec<f32>),
}

impl TargetData {
    /// Class names (empty for regression).
    pub fn classes(&self) -> &[String] {
        match self {
            TargetData::Classes { classes, .. } => classes,
            TargetData::Values(_) => &[],
        }
    }

    pub fn targets(&self) -> Targets<'_> {
        match self {
            TargetData::Classes { labels, classes } => Targets::Classes {
                labels,
                n_classes: classes.len(),
            },
            TargetData::Values(values) => Targets::Values {
                values,
                n_outputs: 1,
            },
        }
    }

    /// The targets of the given rows, in the tensor form [`crate::train::score`] takes.
    pub fn tensor_of(&self, rows: &[usize]) -> Option<candle_core::Result<candle_core::Tensor>> {
        let device = &candle_core::Device::Cpu;
        Some(match self {
            TargetData::Classes { labels, .. } => {
                let y: Vec<u32> = rows
                    .iter()
                    .map(|&r| labels.get(r).copied())
                    .collect::<Option<_>>()?;
                candle_core::Tensor::from_vec(y, rows.len(), device)
            }
            TargetData::Values(values) => {
                let y: Vec<f32> = rows
                    .iter()
                    .map(|&r| values.get(r).copied())
                    .collect::<Option<_>>()?;
                candle_core::Tensor::from_vec(y, (rows.len(), 1), device)
            }
        })
    }
}

fn data_err(dataset: &str, message: String) -> TrainingError {
    TrainingError::Data {
        dataset: dataset.to_string(),
        message,
    }
}

/// Extracts features and targets for `task`; `dataset` names the data in errors.
pub fn training_data(
    batch: &RecordBatch,
    dataset: &str,
    features: &[String],
    label: &str,
    task: Task,
    drop_null_rows: bool,
) -> Result<TrainingData, TrainingError> {
    if features.is_empty() {
        return Err(data_err(dataset, "no feature columns chosen".into()));
    }
    let available = || {
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let get = |name: &str| -> Result<ArrayRef, TrainingError> {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            data_err(
                dataset,
                format!("no column `{name}` (columns: {})", available()),
            )
        })
    };
    let mut feature_arrays = Vec::new();
    for name in features {
        let array = get(name)?;
        let t = array.data_type();
        if !(t.is_numeric() || *t == DataType::Boolean) {
            return Err(data_err(
                dataset,
                format!("feature `{name}` is {t}; features must be numeric or boolean (encode categories first)"),
            ));
        }
        let f = cast(&array, &DataType::Float32).map_err(|e| data_err(dataset, e.to_string()))?;
        feature_arrays.push(f);
    }
    if features.contains(&label.to_string()) {
        return Err(data_err(
            dataset,
            format!("`{label}` is both a feature and the label"),
        ));
    }
    let label_array = get(label)?;

    // Rows with a null anywhere are dropped or refused.
    let n = batch.num_rows();
    let null_row = |i: usize| label_array.is_null(i) || feature_arrays.iter().any(|a| a.is_null(i));
    let nulls = (0..n).filter(|&i| null_row(i)).count();
    if nulls > 0 && !drop_null_rows {
        return Err(data_err(
            dataset,
            format!("{nulls} of {n} rows have a null feature or label; clean the data or set drop_null_rows"),
        ));
    }
    let rows: Vec<usize> = (0..n).filter(|&i| !null_row(i)).collect();
    if rows.is_empty() {
        return Err(data_err(dataset, "no rows left to train on".into()));
    }

    let target = match task {
        Task::Classification => class_targets(&label_array, &rows, dataset, label)?,
        Task::Regression => {
            let t = label_array.data_type();
            if !t.is_numeric() {
                return Err(data_err(
                    dataset,
                    format!("target `{label}` is {t}; regression needs a numeric target"),
                ));
            }
            let values = cast(&label_array, &DataType::Float32)
                .map_err(|e| data_err(dataset, e.to_string()))?;
            let values = values.as_primitive::<Float32Type>();
            let values: Vec<f32> = rows.iter().map(|&i| values.value(i)).collect();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(data_err(
                    dataset,
                    format!(
                        "target `{label}` is {} in row {}; regression targets must be finite",
                        values[i], rows[i]
                    ),
                ));
            }
            TargetData::Values(values)
        }
    };

    let mut matrix = Vec::with_capacity(rows.len() * features.len());
    let columns: Vec<_> = feature_arrays
        .iter()
        .map(|a| a.as_primitive::<Float32Type>())
        .collect();
    for &i in &rows {
        for c in &columns {
            matrix.push(c.value(i));
        }
    }
    let idx = arrow::array::UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
    let mut names: Vec<String> = features.to_vec();
    names.push(label.to_string());
    let selected = batch
        .project(
            &names
                .iter()
                .map(|n| batch.schema().index_of(n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| data_err(dataset, e.to_string()))?,
        )
        .map_err(|e| data_err(dataset, e.to_string()))?;
    let kept = arrow::compute::take_record_batch(&selected, &idx)
        .map_err(|e| data_err(dataset, e.to_string()))?;
    Ok(TrainingData {
        features: matrix,
        n_features: features.len(),
        target,
        rows,
        columns: kept,
    })
}

/// Encodes the label column of the kept `rows` as class indices.
fn class_targets(
    label_array: &ArrayRef,
    rows: &[usize],
    dataset: &str,
    label: &str,
) -> Result<TargetData, TrainingError> {
    let (classes, label_of): (Vec<String>, Vec<String>) = match label_array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s =
                cast(label_array, &DataType::Utf8).map_err(|e| data_err(dataset, e.to_string()))?;
            let s = s.as_string::<i32>();
            let values: Vec<String> = rows.iter().map(|&i| s.value(i).to_string()).collect();
            let mut classes = values.clone();
            classes.sort();
            classes.dedup();
            (classes, values)
        }
        t if t.is_integer() || *t == DataType::Boolean => {
            let ints = cast(label_array, &DataType::Int64)
                .map_err(|e| data_err(dataset, e.to_string()))?;
            let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
            let mut distinct: Vec<i64> = rows.iter().map(|&i| ints.value(i)).collect();
            distinct.sort_unstable();
            distinct.dedup();
            let name = |v: i64| {
                if *t == DataType::Boolean {
                    (v != 0).to_string()
                } else {
                    v.to_string()
                }
            };
            (
                distinct.iter().map(|&v| name(v)).collect(),
                rows.iter().map(|&i| name(ints.value(i))).collect(),
            )
        }
        t => {
            return Err(data_err(
                dataset,
                format!(
                    "label `{label}` is {t}; a classifier needs string, integer or boolean labels \
                     (use task = \"regression\" for a numeric target)"
                ),
            ))
        }
    };
    if classes.len() < 2 {
        return Err(data_err(
            dataset,
            format!(
                "label `{label}` has {} distinct value(s); a classifier needs at least 2",
                classes.len()
            ),
        ));
    }
    let labels: Vec<u32> = label_of
        .iter()
        .map(|v| classes.binary_search(v).map(|i| i as u32))
        .collect::<Result<_, _>>()
        .expect("every label value is among the sorted distinct values. This is a bug.");
    Ok(TargetData::Classes { labels, classes })
}

/// Everything evaluation and publishing need to know about a trained model (`model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    #[serde(default)]
    pub task: Task,
    pub run_id: String,
    pub dataset_version: String,
    /// `nereid.*` config parameters naming the architecture.
    pub architecture: BTreeMap<String, String>,
    pub features: Vec<String>,
    pub label: String,
    /// Class names in output order (empty for regression).
    pub classes: Vec<String>,
    /// Positions (in the dataset's kept rows) of each split.
    pub train_rows: Vec<usize>,
    pub validation_rows: Vec<usize>,
    pub test_rows: Vec<usize>,
    /// Dataset row numbers that were kept (null rows dropped), in order.
    pub dataset_rows: Vec<usize>,
    pub metrics: BTreeMap<String, f64>,
    /// SHA-256 of `model.safetensors`.
    pub weights_sha256: String,
    /// The training data's statistics (feature columns in input order, the label, then the
    /// model's own predictions on the same rows under `prediction_column`).
    pub reference: Profile,
    /// The reference profile's column of the model's predictions (empty in runs recorded
    /// before predictions were profiled).
    #[serde(default)]
    pub prediction_column: String,
}

impl ModelInfo {
    pub fn spec(&self) -> Result<ArchitectureSpec, crate::model::ModelError> {
        ArchitectureSpec::from_parameters(|k| self.architecture.get(k).cloned())
    }

    /// Model outputs per row: one per class, or the one regression target.
    pub fn outputs(&self) -> usize {
        match self.task {
            Task::Classification => self.classes.len(),
            Task::Regression => 1,
        }
    }

    pub fn read(dir: &Path) -> Result<ModelInfo, TrainingError> {
        let path = dir.join(MODEL_INFO_FILE);
        let text = std::fs::read(&path).map_err(|source| TrainingError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| TrainingError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }
}

/// Final metrics as flat `split_metric` keys.
pub fn flat_metrics(metrics: &Metrics) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut put = |split: &str, m: &Option<SplitMetrics>| {
        if let Some(m) = m {
            for (name, value) in m.named() {
                out.insert(format!("{split}_{name}"), f64::from(value));
            }
            out.insert(format!("{split}_rows"), m.rows as f64);
        }
    };
    put("train", &Some(metrics.train));
    put("validation", &metrics.validation);
    put("test", &metrics.test);
    out
}

/// Where a tracked training run goes.
#[derive(Debug, Clone)]
pub struct TrackingOptions {
    pub tracker: Tracker,
    /// Experiment name (MLflow experiment too).
    pub experiment: String,
    /// Mirror to this MLflow tracking server.
    pub mlflow_uri: Option<String>,
    /// Where to ask git for the code revision.
    pub code_dir: PathBuf,
    /// Extra tags for the record.
    pub tags: BTreeMap<String, String>,
    /// Show a progress bar of the epochs on stderr (drawn only when stderr is a terminal).
    pub progress: bool,
}

/// A finished, tracked run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub record: RunRecord,
    pub model_dir: PathBuf,
    pub info: ModelInfo,
}

/// Trains on dataset version `dataset` (any reference) and records the run.
///
/// The run record exists from the moment the data is resolved; a failure after that is recorded
/// as a `failed` run (and mirrored) before the error is returned.
pub fn train_from_dataset(
    store: &FeatureStore,
    dataset: &str,
    spec: &TrainSpec,
    tracking: &TrackingOptions,
) -> Result<TrainOutcome, TrainingError> {
    let version = store.resolve(dataset)?;
    let mut record = tracking.tracker.start(
        &tracking.experiment,
        spec.params(),
        Some(version.id.clone()),
        CodeRevision::detect(&tracking.code_dir),
        spec.seed,
    )?;
    record.tags = tracking.tags.clone();
    let dir = tracking.tracker.artifact_dir(&record.id);
    let result = run_training(store, &version, spec, &dir, &mut record, tracking.progress);
    match result {
        Ok(info) => {
            let artifacts: &[&str] = match info.task {
                Task::Classification => &[WEIGHTS_FILE, ONNX_FILE, LABELS_FILE, MODEL_INFO_FILE],
                Task::Regression => &[WEIGHTS_FILE, ONNX_FILE, MODEL_INFO_FILE],
            };
            tracking.tracker.record_artifacts(&mut record, artifacts)?;
            tracking
                .tracker
                .end(&mut record, RunStatus::Finished, None)?;
            mirror(tracking, &mut record)?;
            Ok(TrainOutcome {
                record,
                model_dir: dir,
                info,
            })
        }
        Err(e) => {
            let message = e.to_string();
            tracking
                .tracker
                .end(&mut record, RunStatus::Failed, Some(message.clone()))?;
            mirror(tracking, &mut record)?;
            Err(TrainingError::RunFailed {
                run_id: record.id,
                message,
            })
        }
    }
}

fn mirror(tracking: &TrackingOptions, record: &mut RunRecord) -> Result<(), TrackingError> {
    let Some(uri) = &tracking.mlflow_uri else {
        return Ok(());
    };
    record.mlflow = Some(match crate::mlflow::mirror_run(uri, record) {
        Ok(m) => crate::tracking::MlflowMirror {
            tracking_uri: uri.clone(),
            experiment_id: Some(m.experiment_id),
            run_id: Some(m.run_id),
            error: None,
        },
        Err(e) => {
            eprintln!("warning: run {} was not mirrored to MLflow: {e}", record.id);
            crate::tracking::MlflowMirror {
                tracking_uri: uri.clone(),
                experiment_id: None,
                run_id: None,
                error: Some(e.to_string()),
            }
        }
    });
    tracking.tracker.save(record)
}

fn run_training(
    store: &FeatureStore,
    version: &crate::store::DatasetVersion,
    spec: &TrainSpec,
    dir: &Path,
    record: &mut RunRecord,
    progress: bool,
) -> Result<ModelInfo, TrainingError> {
    let batch = store.read(version)?;
    let data = training_data(
        &batch,
        version.short_id(),
        &spec.features,
        &spec.label,
        spec.task,
        spec.drop_null_rows,
    )?;
    let cfg = spec.config()?;
    let bar = progress.then(|| crate::util::progress_bar(cfg.epochs as u64, "epochs"));
    let mut on_epoch = |e: &crate::train::EpochRecord| {
        if let Some(bar) = &bar {
            bar.set_position(e.epoch as u64);
            bar.set_message(match e.validation_loss {
                Some(v) => format!("loss {:.4}, validation {v:.4}", e.train_loss),
                None => format!("loss {:.4}", e.train_loss),
            });
        }
    };
    let model = train_observed(
        &data.features,
        data.n_features,
        data.target.targets(),
        &cfg,
        &mut on_epoch,
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let model = model?;
    for epoch in &model.history {
        record.history.push(MetricPoint {
            key: "epoch_train_loss".into(),
            step: epoch.epoch as u64,
            value: f64::from(epoch.train_loss),
        });
        if let Some(v) = epoch.validation_loss {
            record.history.push(MetricPoint {
                key: "epoch_validation_loss".into(),
                step: epoch.epoch as u64,
                value: f64::from(v),
            });
        }
    }
    let mut metrics = flat_metrics(&model.metrics);
    metrics.insert("epochs_run".into(), model.epochs_run as f64);
    metrics.insert("best_epoch".into(), model.best_epoch as f64);
    record.metrics = metrics.clone();
    write_artifacts(dir, version, spec, &data, &model, record, metrics)
}

/// `prediction`, or a name no column of `columns` has.
fn prediction_column_name(columns: &RecordBatch) -> String {
    let mut name = "prediction".to_string();
    while columns.schema().column_with_name(&name).is_some() {
        name.insert(0, '_');
    }
    name
}

/// `data.columns` plus the trained model's prediction for every row (the class name for
/// classifiers, the value for regressors), as drift monitors compare live predictions with.
fn predictions_batch(
    model: &TrainedModel,
    data: &TrainingData,
    column: &str,
) -> Result<RecordBatch, TrainingError> {
    use arrow::array::{Float64Array, StringArray};
    let rows = data.features.len() / data.n_features.max(1);
    let forward = || -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let dense = model.to_dense_model()?;
        let x = candle_core::Tensor::from_slice(
            &data.features,
            (rows, data.n_features),
            &candle_core::Device::Cpu,
        )?;
        Ok(dense.forward(&x)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let outputs = forward().map_err(|e| TrainingError::Data {
        dataset: String::new(),
        message: format!("cannot compute the model's predictions for the reference: {e}"),
    })?;
    let per_row = outputs.len() / rows.max(1);
    let predicted: ArrayRef = match &data.target {
        TargetData::Classes { classes, .. } => std::sync::Arc::new(StringArray::from(
            outputs
                .chunks(per_row.max(1))
                .map(|scores| {
                    let best = scores
                        .iter()
                        .enumerate()
                        .fold(
                            (0, f32::NEG_INFINITY),
                            |b, (i, v)| if *v > b.1 { (i, *v) } else { b },
                        )
                        .0;
                    classes
                        .get(best)
                        .cloned()
                        .unwrap_or_else(|| best.to_string())
                })
                .collect::<Vec<String>>(),
        )),
        TargetData::Values(_) => std::sync::Arc::new(Float64Array::from(
            outputs.iter().map(|v| f64::from(*v)).collect::<Vec<f64>>(),
        )),
    };
    let mut fields: Vec<(String, ArrayRef)> = data
        .columns
        .schema()
        .fields()
        .iter()
        .zip(data.columns.columns())
        .map(|(f, a)| (f.name().clone(), a.clone()))
        .collect();
    fields.push((column.to_string(), predicted));
    RecordBatch::try_from_iter(fields).map_err(|e| TrainingError::Data {
        dataset: String::new(),
        message: e.to_string(),
    })
}

fn write_artifacts(
    dir: &Path,
    version: &crate::store::DatasetVersion,
    spec: &TrainSpec,
    data: &TrainingData,
    model: &TrainedModel,
    record: &RunRecord,
    metrics: BTreeMap<String, f64>,
) -> Result<ModelInfo, TrainingError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainingError::Io { path, source }
    };
    let weights = dir.join(WEIGHTS_FILE);
    model.save_safetensors(&weights)?;
    let (weights_sha256, _) = crate::util::sha256_file(&weights).map_err(io(&weights))?;
    // The ONNX copy is exported from the saved file, so it is exactly what gets served.
    let onnx_failed = |message: String| TrainingError::Data {
        dataset: version.id.clone(),
        message: format!("exporting the model as ONNX: {message}"),
    };
    let saved = crate::model::DenseModel::load(&weights, model.spec, &candle_core::Device::Cpu)
        .map_err(|e| onnx_failed(e.to_string()))?;
    let output = match spec.task {
        Task::Classification => "PROBABILITIES",
        Task::Regression => "PREDICTION",
    };
    let onnx = saved
        .to_onnx("INPUT", output)
        .map_err(|e| onnx_failed(e.to_string()))?;
    let onnx_path = dir.join(ONNX_FILE);
    write_atomic(&onnx_path, &onnx).map_err(io(&onnx_path))?;
    let classes = data.target.classes();
    if !classes.is_empty() {
        let mut labels = classes.join("\n");
        labels.push('\n');
        let labels_path = dir.join(LABELS_FILE);
        write_atomic(&labels_path, labels.as_bytes()).map_err(io(&labels_path))?;
    }
    let prediction_column = prediction_column_name(&data.columns);
    let with_predictions = predictions_batch(model, data, &prediction_column)?;
    let reference =
        reference_profile_batch(&with_predictions).map_err(|e| TrainingError::Data {
            dataset: version.id.clone(),
            message: e.to_string(),
        })?;
    let info = ModelInfo {
        task: spec.task,
        run_id: record.id.clone(),
        dataset_version: version.id.clone(),
        architecture: model
            .spec
            .to_parameters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        features: spec.features.clone(),
        label: spec.label.clone(),
        classes: classes.to_vec(),
        train_rows: model.split.train.clone(),
        validation_rows: model.split.validation.clone(),
        test_rows: model.split.test.clone(),
        dataset_rows: data.rows.clone(),
        metrics,
        weights_sha256,
        reference,
        prediction_column,
    };
    let info_path = dir.join(MODEL_INFO_FILE);
    write_atomic(&info_path, &to_json_pretty(&info)).map_err(io(&info_path))?;
    Ok(info)
}
