//! The monitors' side of the lifecycle: a reference profile for a model version from a dataset
//! version (`nereid monitor reference`), the prediction log exported as a dataset version for
//! retraining on production data (`nereid monitor export`), and a served model's drift report
//! in a terminal (`nereid monitor report`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arrow::array::{
    ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
    UInt32Builder, UInt64Builder,
};
use clap::{Args, Subcommand};
use nereid_monitor::log::{read_log, Record};
use nereid_monitor::monitor::read_number;
use nereid_monitor::performance::Truth;
use nereid_monitor::reference::{
    InputColumns, PredictionReference, REFERENCE_FILE, REFERENCE_FORMAT,
};
use nereid_monitor::{Layout, Monitor, MonitorConfig, Predicted, Reference, Task};
use nereid_protocol::inference::ModelConfig;
use nereid_protocol::{bytes_elements, DataType, Tensor};

use crate::profile::reference_profile_batch;
use crate::publish::CONFIG_FILE;
use crate::repository::ModelRepository;
use crate::store::{Committed, Derivation, FeatureStore};
use crate::util::write_atomic;

/// `nereid monitor ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum MonitorCommand {
    /// Write a model version's reference.json from a dataset version, so that the version is
    /// monitored (reload it, or let a polling server find it).
    Reference(ReferenceArgs),
    /// Store the prediction log of a model version (requests, predictions, feedback labels) as
    /// a dataset version, with lineage to the version's reference dataset.
    Export(ExportArgs),
    /// Print a served model's latest drift report, data quality and live performance.
    Report(ReportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReferenceArgs {
    /// The dataset version (`NAME`, `NAME@SEQ`, or an id prefix).
    #[arg(long)]
    pub dataset: String,
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub version: u64,
    /// The model repository.
    #[arg(long, default_value = "model-repo")]
    pub repository: PathBuf,
    /// Feature store directory or URL.
    #[arg(long, env = "NEREID_FEATURE_STORE", default_value = "feature-store")]
    pub store: String,
    /// For a model with one input of N elements per row: the N dataset columns, in element
    /// order (default: the first N columns other than the label and prediction columns).
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// The label column, if the dataset has one (predictions are compared with its
    /// distribution when there is no prediction column).
    #[arg(long)]
    pub label: Option<String>,
    /// A column holding the model's own predictions on these rows.
    #[arg(long)]
    pub prediction_column: Option<String>,
    /// What the model predicts.
    #[arg(
        long,
        default_value_t = Task::Classification,
        value_parser = crate::cli::task_parser()
    )]
    pub task: Task,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub model: String,
    /// The version whose log to export (default: the newest version with a log).
    #[arg(long)]
    pub version: Option<u64>,
    /// Start of the time range: RFC 3339 (`2026-12-01T00:00:00Z`) or an age (`24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// End of the time range (same forms; default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only rows that have a feedback label.
    #[arg(long)]
    pub labelled_only: bool,
    /// The prediction log root the server writes (`--prediction-log-dir`).
    #[arg(
        long,
        env = "NEREID_PREDICTION_LOG_DIR",
        default_value = "prediction-log"
    )]
    pub log_dir: PathBuf,
    /// The model repository, a directory or URL (for the version's config and reference.json).
    #[arg(long, default_value = "model-repo")]
    pub repository: String,
    /// Feature store directory or URL.
    #[arg(long, env = "NEREID_FEATURE_STORE", default_value = "feature-store")]
    pub store: String,
    /// Dataset name (default: `<model>-predictions`).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// A header to send, `NAME:VALUE`, repeatable (auth tokens, a restricted API's header).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub version: Option<u64>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run_monitor(cmd: MonitorCommand) -> anyhow::Result<()> {
    match cmd {
        MonitorCommand::Reference(a) => {
            let store = FeatureStore::open_at(&a.store).context("opening the feature store")?;
            let config = read_model_config(&ModelRepository::local(&a.repository), &a.model)?;
            let version_dir = a.repository.join(&a.model).join(a.version.to_string());
            if !version_dir.is_dir() {
                bail!("{} does not exist", version_dir.display());
            }
            let reference = reference_from_dataset(
                &store,
                &a.dataset,
                &config,
                &ReferenceOptions {
                    features: a.features,
                    label: a.label,
                    prediction_column: a.prediction_column,
                    task: a.task,
                },
            )?;
            let path = version_dir.join(REFERENCE_FILE);
            let json = serde_json::to_vec_pretty(&reference)?;
            write_atomic(&path, &json).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({} rows of {}, columns {})",
                path.display(),
                reference.profile.rows,
                reference.dataset_version,
                reference
                    .input_columns()
                    .iter()
                    .flat_map(|i| i.columns.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("reload the model to start monitoring it (a polling server finds it on its next scan)");
            Ok(())
        }
        MonitorCommand::Export(a) => {
            let now = now_ms();
            let since = a.since.as_deref().map(|s| parse_time(s, now)).transpose()?;
            let until = a.until.as_deref().map(|s| parse_time(s, now)).transpose()?;
            let store =
                FeatureStore::open_or_create_at(&a.store).context("opening the feature store")?;
            let name = a.name.unwrap_or_else(|| format!("{}-predictions", a.model));
            let repository = ModelRepository::open(&a.repository)?;
            let (version, exported) = export_serving_log(
                &store,
                &repository,
                &a.log_dir,
                &a.model,
                a.version,
                (since, until),
                a.labelled_only,
                &name,
            )?;
            println!(
                "stored {name}@{}  {}  ({} rows, {} labelled) from the log of {} version {version}",
                exported.committed.seq,
                exported.committed.version.id,
                exported.rows,
                exported.labelled,
                a.model
            );
            Ok(())
        }
        MonitorCommand::Report(a) => report(&a),
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339, or an age before `now_ms` (`24h`, `30m`, `7d`).
pub fn parse_time(text: &str, now_ms: u64) -> anyhow::Result<u64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return u64::try_from(t.timestamp_millis())
            .map_err(|_| anyhow::anyhow!("{text} is before 1970"));
    }
    match humantime::parse_duration(text) {
        Ok(age) => Ok(now_ms.saturating_sub(age.as_millis() as u64)),
        Err(_) => bail!(
            "'{text}' is neither an RFC 3339 time (2026-12-01T00:00:00Z) nor an age (24h, 7d)"
        ),
    }
}

/// Exports the prediction log of `model` (of `version`, or of the newest logged version) in the
/// time range `(since, until)` (Unix ms) as dataset version `name`; returns the version exported.
#[allow(clippy::too_many_arguments)]
pub fn export_serving_log(
    store: &FeatureStore,
    repository: &ModelRepository,
    log_dir: &Path,
    model: &str,
    version: Option<u64>,
    (since_ms, until_ms): (Option<u64>, Option<u64>),
    labelled_only: bool,
    name: &str,
) -> anyhow::Result<(u64, Exported)> {
    let version = match version {
        Some(v) => v,
        None => newest_logged_version(log_dir, model)?,
    };
    let config = read_model_config(repository, model)?;
    let reference = repository
        .version_file(model, version, REFERENCE_FILE)?
        .map(|path| Reference::read(&path))
        .transpose()?;
    let exported = export_log(
        store,
        &ExportSpec {
            log_dir: log_dir.join(model).join(version.to_string()),
            model: model.to_string(),
            version,
            config: config.clone(),
            reference,
            since_ms,
            until_ms,
            labelled_only,
            name: name.to_string(),
            labels: read_labels(repository, model, &config),
        },
    )?;
    Ok((version, exported))
}

fn newest_logged_version(log_dir: &Path, model: &str) -> anyhow::Result<u64> {
    let dir = log_dir.join(model);
    let mut versions: Vec<u64> = std::fs::read_dir(&dir)
        .with_context(|| format!("no prediction log for model '{model}' in {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions.pop().ok_or_else(|| {
        anyhow::anyhow!(
            "no version of '{model}' has a prediction log in {}",
            dir.display()
        )
    })
}

fn read_model_config(repository: &ModelRepository, model: &str) -> anyhow::Result<ModelConfig> {
    let path = repository
        .model_file(model, CONFIG_FILE)?
        .ok_or_else(|| anyhow::anyhow!("{}/{model} has no {CONFIG_FILE}", repository.describe()))?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = nereid_protocol::config::parse_pbtxt(&text, &path.display().to_string())
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if config.name.is_empty() {
        config.name = model.to_string();
    }
    Ok(config)
}

/// The class labels of a model's outputs that name a `label_filename`.
pub fn read_labels(
    repository: &ModelRepository,
    model: &str,
    config: &ModelConfig,
) -> BTreeMap<String, Vec<String>> {
    config
        .output
        .iter()
        .filter(|o| !o.label_filename.is_empty())
        .filter_map(|o| {
            let path = repository.model_file(model, &o.label_filename).ok()??;
            let text = std::fs::read_to_string(path).ok()?;
            Some((o.name.clone(), text.lines().map(str::to_owned).collect()))
        })
        .collect()
}

/// How `reference_from_dataset` maps dataset columns to the model.
#[derive(Debug, Clone, Default)]
pub struct ReferenceOptions {
    pub features: Vec<String>,
    pub label: Option<String>,
    pub prediction_column: Option<String>,
    pub task: Task,
}

/// A reference profile of dataset version `dataset` for a model with `config`: a single input
/// of N elements maps to N columns (`features`, or the first N others); several inputs map to
/// the columns of the same names (case-insensitive).
pub fn reference_from_dataset(
    store: &FeatureStore,
    dataset: &str,
    config: &ModelConfig,
    options: &ReferenceOptions,
) -> anyhow::Result<Reference> {
    let version = store.resolve(dataset)?;
    let batch = store.read(&version)?;
    let schema = batch.schema();
    let find = |name: &str| -> anyhow::Result<String> {
        schema
            .fields()
            .iter()
            .find(|f| f.name() == name)
            .or_else(|| {
                schema
                    .fields()
                    .iter()
                    .find(|f| f.name().eq_ignore_ascii_case(name))
            })
            .map(|f| f.name().clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "dataset {dataset} has no column '{name}' (it has {})",
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    };
    let label = options.label.as_deref().map(find).transpose()?;
    let prediction_column = options.prediction_column.as_deref().map(find).transpose()?;
    let layout = Layout::from_config(config, BTreeMap::new());
    // One input of several elements (or with named features): its elements are columns. Else
    // every input is one column of the same name.
    let one_input = match layout.inputs.as_slice() {
        [only] if only.per_row != Some(1) || !options.features.is_empty() => Some(only),
        _ => None,
    };
    let inputs: Vec<InputColumns> = match one_input {
        Some(only) => {
            let n = only.per_row.ok_or_else(|| {
                anyhow::anyhow!("input '{}' has a variable shape; it cannot be mapped to columns", only.name)
            })?;
            let columns = if options.features.is_empty() {
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|c| Some(c) != label.as_ref() && Some(c) != prediction_column.as_ref())
                    .take(n)
                    .collect::<Vec<_>>()
            } else {
                options
                    .features
                    .iter()
                    .map(|f| find(f))
                    .collect::<anyhow::Result<Vec<_>>>()?
            };
            if columns.len() != n {
                bail!(
                    "input '{}' has {n} elements per row but {} columns were chosen ({}); name them with --features",
                    only.name,
                    columns.len(),
                    columns.join(", ")
                );
            }
            vec![InputColumns {
                name: only.name.clone(),
                columns,
            }]
        }
        None => layout
            .inputs
            .iter()
            .map(|i| {
                match i.per_row {
                    Some(1) => {}
                    None => bail!(
                        "input '{}' has a variable shape; it cannot be mapped to columns",
                        i.name
                    ),
                    Some(_) => bail!(
                        "input '{}' has more than one element per row; with several inputs each must be one column",
                        i.name
                    ),
                }
                Ok(InputColumns {
                    name: i.name.clone(),
                    columns: vec![find(&i.name)?],
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let mut keep: Vec<String> = inputs.iter().flat_map(|i| i.columns.clone()).collect();
    keep.extend(label.clone());
    keep.extend(prediction_column.clone());
    let indices = keep
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<Vec<_>, _>>()?;
    let profile = reference_profile_batch(&batch.project(&indices)?)?;
    let classes = match (&label, options.task) {
        (Some(l), Task::Classification) => profile
            .columns
            .iter()
            .find(|c| &c.name == l)
            .and_then(|c| c.categorical.as_ref())
            .map(|c| {
                let mut names: Vec<String> = c.frequencies.iter().map(|(k, _)| k.clone()).collect();
                names.sort();
                names
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let prediction = prediction_column.map(|column| PredictionReference {
        output: match layout.outputs.as_slice() {
            [only] => only.name.clone(),
            _ => String::new(),
        },
        column,
    });
    let single = inputs.len() == 1;
    let reference = Reference {
        format: REFERENCE_FORMAT,
        task: options.task,
        dataset_version: version.id.clone(),
        input_name: if single {
            inputs[0].name.clone()
        } else {
            String::new()
        },
        features: if single {
            inputs[0].columns.clone()
        } else {
            Vec::new()
        },
        label: label.unwrap_or_default(),
        classes,
        profile,
        inputs: if single { Vec::new() } else { inputs },
        prediction: prediction.filter(|p| !p.output.is_empty()),
    };
    reference
        .check()
        .map_err(|e| anyhow::anyhow!("the reference is inconsistent: {e}"))?;
    Ok(reference)
}

/// What to export.
pub struct ExportSpec {
    pub log_dir: PathBuf,
    pub model: String,
    pub version: u64,
    pub config: ModelConfig,
    pub reference: Option<Reference>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub labelled_only: bool,
    pub name: String,
    /// Class labels of outputs with a `label_filename` (see [`read_labels`]).
    pub labels: BTreeMap<String, Vec<String>>,
}

pub struct Exported {
    pub committed: Committed,
    pub rows: usize,
    pub labelled: usize,
}

/// One column of the export, filled row by row.
enum Builder {
    Number(Float64Builder),
    Text(StringBuilder),
}

impl Builder {
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Number(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
        }
    }
}

/// Reads the log in `spec.log_dir` and stores it as a dataset version: one row per request row
/// with `request_id`, `row`, `timestamp`, `model_version`, the feature columns (named as in
/// the reference, else `<input>_<element>`), `prediction` and the feedback `label` (null
/// where none came).
pub fn export_log(store: &FeatureStore, spec: &ExportSpec) -> anyhow::Result<Exported> {
    let layout = Layout::from_config(&spec.config, spec.labels.clone());
    // Columns: (input, element, name, numeric?)
    let mut features: Vec<(String, usize, usize, String, bool)> = Vec::new();
    match &spec.reference {
        Some(r) => {
            for mapping in r.input_columns() {
                let per_row = mapping.columns.len();
                let numeric = layout
                    .inputs
                    .iter()
                    .find(|i| i.name == mapping.name)
                    .is_some_and(|i| i.datatype != DataType::Bytes);
                for (e, c) in mapping.columns.iter().enumerate() {
                    features.push((mapping.name.clone(), e, per_row, c.clone(), numeric));
                }
            }
        }
        None => {
            for i in &layout.inputs {
                let Some(n) = i.per_row else { continue };
                for e in 0..n {
                    let name = if n == 1 {
                        i.name.clone()
                    } else {
                        format!("{}_{e}", i.name)
                    };
                    features.push((i.name.clone(), e, n, name, i.datatype != DataType::Bytes));
                }
            }
        }
    }
    let monitor = spec
        .reference
        .as_ref()
        .map(|r| {
            Monitor::new(
                &spec.model,
                spec.version,
                r,
                &MonitorConfig::default(),
                &layout,
            )
        })
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let task = spec
        .reference
        .as_ref()
        .map_or(Task::Classification, |r| r.task);

    // Feedback first: labels by request id.
    let mut truths: HashMap<String, Vec<Truth>> = HashMap::new();
    read_log(&spec.log_dir, |record| {
        if let Record::Feedback { id, truth, .. } = record {
            truths.insert(id, truth);
        }
    })
    .with_context(|| format!("reading the prediction log in {}", spec.log_dir.display()))?;

    let mut request_id = StringBuilder::new();
    let mut row_col = UInt32Builder::new();
    let mut time_col = TimestampMillisecondBuilder::new().with_timezone("UTC");
    let mut version_col = UInt64Builder::new();
    let mut feature_cols: Vec<Builder> = features
        .iter()
        .map(|f| {
            if f.4 {
                Builder::Number(Float64Builder::new())
            } else {
                Builder::Text(StringBuilder::new())
            }
        })
        .collect();
    let mut prediction = match task {
        Task::Classification => Builder::Text(StringBuilder::new()),
        Task::Regression => Builder::Number(Float64Builder::new()),
    };
    let mut label = match task {
        Task::Classification => Builder::Text(StringBuilder::new()),
        Task::Regression => Builder::Number(Float64Builder::new()),
    };
    let (mut rows, mut labelled) = (0usize, 0usize);
    let summary = read_log(&spec.log_dir, |record| {
        let Record::Prediction {
            time_ms,
            id,
            inputs,
            outputs,
        } = record
        else {
            return;
        };
        if spec.since_ms.is_some_and(|s| time_ms < s) || spec.until_ms.is_some_and(|u| time_ms > u)
        {
            return;
        }
        let predicted = monitor
            .as_ref()
            .map(|m| m.predictions_of(&inputs, &outputs))
            .unwrap_or_default();
        let batch_rows = if layout.batched {
            inputs
                .first()
                .and_then(|t| t.shape.first())
                .copied()
                .unwrap_or(0)
                .max(0) as usize
        } else {
            1
        };
        let truth = truths.get(&id);
        for r in 0..batch_rows {
            let t = truth.and_then(|t| t.get(r));
            if spec.labelled_only && t.is_none() {
                continue;
            }
            rows += 1;
            labelled += usize::from(t.is_some());
            request_id.append_value(&id);
            row_col.append_value(r as u32);
            time_col.append_value(time_ms as i64);
            version_col.append_value(spec.version);
            for ((input, element, per_row, _, _), builder) in features.iter().zip(&mut feature_cols)
            {
                let tensor = inputs.iter().find(|x| &x.name == input);
                append_cell(builder, tensor, r * per_row + element);
            }
            match (&mut prediction, predicted.get(r)) {
                (Builder::Text(b), Some(Predicted::Class { name, .. })) => b.append_value(name),
                (Builder::Number(b), Some(Predicted::Value(v))) => b.append_value(*v),
                (Builder::Text(b), _) => b.append_null(),
                (Builder::Number(b), _) => b.append_null(),
            }
            match (&mut label, t) {
                (Builder::Text(b), Some(Truth::Class(c))) => b.append_value(c),
                (Builder::Number(b), Some(Truth::Value(v))) => b.append_value(*v),
                (Builder::Text(b), _) => b.append_null(),
                (Builder::Number(b), _) => b.append_null(),
            }
        }
    })?;
    if rows == 0 {
        bail!(
            "the prediction log in {} has no {}rows in that time range ({} records read)",
            spec.log_dir.display(),
            if spec.labelled_only { "labelled " } else { "" },
            summary.records
        );
    }
    let label_name = spec
        .reference
        .as_ref()
        .map(|r| r.label.clone())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "label".into());
    let mut columns: Vec<(String, ArrayRef)> = vec![
        ("request_id".into(), Arc::new(request_id.finish())),
        ("row".into(), Arc::new(row_col.finish())),
        ("timestamp".into(), Arc::new(time_col.finish())),
        ("model_version".into(), Arc::new(version_col.finish())),
    ];
    for (f, mut b) in features.iter().zip(feature_cols) {
        columns.push((f.3.clone(), b.finish()));
    }
    columns.push(("prediction".into(), prediction.finish()));
    columns.push((label_name, label.finish()));
    let batch = RecordBatch::try_from_iter(columns)?;
    let parents: Vec<String> = spec
        .reference
        .as_ref()
        .map(|r| r.dataset_version.clone())
        .filter(|p| store.get(p).is_ok())
        .into_iter()
        .collect();
    let how = format!(
        "prediction log of model {} version {} ({} rows{}{})",
        spec.model,
        spec.version,
        rows,
        spec.since_ms
            .map_or(String::new(), |s| format!(", from {s} ms")),
        spec.until_ms
            .map_or(String::new(), |u| format!(", until {u} ms")),
    );
    let committed = store.commit_batch(
        &spec.name,
        &batch,
        &format!("requests served by {} version {}", spec.model, spec.version),
        &parents,
        Derivation::Derived { how },
    )?;
    Ok(Exported {
        committed,
        rows,
        labelled,
    })
}

fn append_cell(builder: &mut Builder, tensor: Option<&Tensor>, index: usize) {
    match (builder, tensor) {
        (Builder::Number(b), Some(t)) => match read_number(t, index) {
            Some(v) => b.append_value(v),
            None => b.append_null(),
        },
        (Builder::Text(b), Some(t)) => {
            match bytes_elements(&t.data)
                .nth(index)
                .and_then(|e| e.ok())
                .and_then(|e| std::str::from_utf8(e).ok())
            {
                Some(s) => b.append_value(s),
                None => b.append_null(),
            }
        }
        (Builder::Number(b), None) => b.append_null(),
        (Builder::Text(b), None) => b.append_null(),
    }
}

/// `nereid monitor report`: the server's drift JSON as a terminal table.
fn report(a: &ReportArgs) -> anyhow::Result<()> {
    let path = match a.version {
        Some(v) => format!("/v2/models/{}/versions/{v}/drift", a.model),
        None => format!("/v2/models/{}/drift", a.model),
    };
    let url = format!("{}{path}", a.url.trim_end_matches('/'));
    let body = crate::triggers::cli::server_call(reqwest::Method::GET, &url, &a.headers)?;
    if a.json {
        println!("{body}");
        return Ok(());
    }
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    print!("{}", render_report(&doc)?);
    Ok(())
}

/// The terminal table of a drift JSON document.
pub fn render_report(doc: &serde_json::Value) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let num = |v: &serde_json::Value| match v.as_f64() {
        Some(x) if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e5) => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    };
    writeln!(
        out,
        "{} version {} · {} · sample rate {} · {} samples, {} dropped",
        doc["model"].as_str().unwrap_or("?"),
        doc["version"].as_str().unwrap_or("?"),
        doc["monitoring"]["window"].as_str().unwrap_or("?"),
        num(&doc["monitoring"]["sample_rate"]),
        doc["samples"],
        doc["dropped"]
    )?;
    let latest = &doc["latest"];
    if latest.is_null() {
        writeln!(out, "no window has closed yet")?;
    } else {
        let d = &latest["dataset_drift"];
        writeln!(
            out,
            "window {} ({} rows): dataset drift {} ({} of {} features, share {} vs {}){}",
            latest["window"]["index"],
            latest["window"]["rows"],
            if d["drift"].as_bool() == Some(true) {
                "YES"
            } else {
                "no"
            },
            d["drifted"],
            d["columns"],
            num(&d["share"]),
            num(&d["drift_share"]),
            match latest["prediction_drift"].as_bool() {
                Some(true) => " · prediction drift YES",
                Some(false) => " · prediction drift no",
                None => "",
            }
        )?;
        let mut rows = vec![[
            "column".to_string(),
            "role".into(),
            "test".into(),
            "score".into(),
            "threshold".into(),
            "verdict".into(),
            "quality".into(),
        ]];
        for c in latest["columns"].as_array().into_iter().flatten() {
            let test = &c["test"];
            let failures: Vec<&str> =
                ["missing", "out_of_range", "unseen_categories", "wrong_type"]
                    .into_iter()
                    .filter(|k| c["quality"][k]["failed"].as_bool() == Some(true))
                    .collect();
            rows.push([
                c["name"].as_str().unwrap_or("?").to_string(),
                c["role"].as_str().unwrap_or("?").to_string(),
                test["method"].as_str().unwrap_or("-").to_string(),
                num(&test["score"]),
                num(&test["threshold"]),
                match test["drift"].as_bool() {
                    Some(true) => "DRIFT".into(),
                    Some(false) => "ok".into(),
                    None => c["error"].as_str().unwrap_or("-").to_string(),
                },
                if failures.is_empty() {
                    "ok".into()
                } else {
                    failures.join(",")
                },
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            writeln!(out, "  {}", line.join("  ").trim_end())?;
        }
    }
    let p = &doc["performance"]["total"];
    if p["labelled"].as_u64().unwrap_or(0) > 0 {
        let mut parts = vec![format!("{} labelled", p["labelled"])];
        for (key, name) in [
            ("accuracy", "accuracy"),
            ("macro_f1", "macro F1"),
            ("mae", "MAE"),
            ("rmse", "RMSE"),
            ("r2", "R²"),
        ] {
            if !p[key].is_null() {
                parts.push(format!("{name} {}", num(&p[key])));
            }
        }
        writeln!(out, "live performance: {}", parts.join(" · "))?;
    } else {
        writeln!(out, "live performance: no feedback yet")?;
    }
    Ok(out)
}
