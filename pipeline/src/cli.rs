//! The `nereid features`, `nereid train` and `nereid pipeline` commands: clap types and blocking
//! entry points that the `nereid` binary calls (from `spawn_blocking` in async code).
//!
//! Each command prints human-readable text to stdout, or one JSON document with `--json`;
//! progress of long work goes to stderr. Failures come back as `anyhow` errors with the context a
//! user needs; a failed verification or pipeline run is an error too, so the exit status tells.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use crate::join::{build_training_set, FeatureView, JoinSpec};
use crate::profile::{diff_profiles, ColumnProfile, ProfileDiff};
use crate::runner::{get_run, list_runs, run_pipeline_file, PipelineRun, RunOptions};
use crate::store::{DatasetVersion, FeatureStore, IngestOptions, SchemaSpec, SourceFormat};
use crate::tracking::Tracker;
use crate::train::Task;
use crate::training::{train_from_dataset, TrackingOptions, TrainSpec};

/// Where the feature store is, and the output format.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Feature-store directory, or URL (`s3://bucket/prefix`, `gs://...`, `az://...`,
    /// `file:///...`; credentials from the provider's environment variables). `ingest` creates it.
    #[arg(long, env = "NEREID_FEATURE_STORE", default_value = "feature-store")]
    pub store: String,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `nereid features ...`: the feature store.
#[derive(Debug, Clone, Subcommand)]
pub enum FeaturesCommand {
    /// Ingest a CSV, Parquet or JSON-lines file as a dataset version (identical content is reused).
    Ingest(IngestArgs),
    /// List datasets, or the versions of one dataset.
    Versions(VersionsArgs),
    /// Show a dataset version: lineage, files, schema and statistics.
    Show(ShowArgs),
    /// Compare two dataset versions: schema and statistics.
    Diff(DiffArgs),
    /// Re-hash and re-check dataset versions (all by default); fails on any tampering.
    Verify(VerifyArgs),
    /// Build a training set by a point-in-time-correct join and store it as a dataset version.
    Join(JoinArgs),
    /// Write a dataset version to a CSV or Parquet file (by the output's extension), e.g. to
    /// read it with pandas.
    Export(ExportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// `NAME` (latest), `NAME@SEQ`, `NAME@ID-PREFIX` or an id prefix.
    pub version: String,
    /// The file to write: `.csv` or `.parquet` (replaced atomically if it exists).
    #[arg(long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub common: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// The file to ingest (.csv, .tsv, .parquet, .jsonl/.ndjson).
    pub file: PathBuf,
    /// Dataset name (default: the file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Source format (default: from the file extension).
    #[arg(long, value_enum)]
    pub format: Option<SourceFormat>,
    /// Explicit schema instead of inference, `name:type,...` (types: int64, float64, utf8, bool,
    /// date32, timestamp, `timestamp[ms]`, ... or Arrow's notation). Column names must match.
    #[arg(long)]
    pub schema: Option<String>,
    /// Free text stored with the version.
    #[arg(long, default_value = "")]
    pub description: String,
    /// CSV: the first line is data, not column names (columns are then column_1, column_2, ...).
    #[arg(long)]
    pub no_header: bool,
    /// CSV delimiter (one byte; default `,`, or tab for .tsv).
    #[arg(long)]
    pub delimiter: Option<char>,
    /// Parent version(s) this one derives from (references).
    #[arg(long = "parent")]
    pub parents: Vec<String>,
    #[command(flatten)]
    pub common: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VersionsArgs {
    /// A dataset name; without it, every dataset is listed.
    pub name: Option<String>,
    #[command(flatten)]
    pub common: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// `NAME` (latest), `NAME@SEQ`, `NAME@ID-PREFIX` or an id prefix.
    pub version: String,
    #[command(flatten)]
    pub common: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The "before" version.
    pub a: String,
    /// The "after" version.
    pub b: String,
    #[command(flatten)]
    pub common: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Versions to verify; none verifies the whole store (and its index).
    pub versions: Vec<String>,
    #[command(flatten)]
    pub common: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// Name of the resulting dataset.
    #[arg(long)]
    pub name: String,
    /// A TOML file with the join spec (`labels`, `label_timestamp`, `[[views]]`); replaces the
    /// single-view flags below.
    #[arg(long, conflicts_with_all = ["labels", "features"])]
    pub spec: Option<PathBuf>,
    /// The entity/label table (dataset reference).
    #[arg(long, required_unless_present = "spec")]
    pub labels: Option<String>,
    /// Time column of the label table.
    #[arg(long, default_value = "timestamp")]
    pub label_timestamp: String,
    /// The feature table (dataset reference).
    #[arg(long, required_unless_present = "spec")]
    pub features: Option<String>,
    /// Entity key column(s), present in both tables.
    #[arg(long = "entity", value_delimiter = ',')]
    pub entities: Vec<String>,
    /// Event-time column of the feature table.
    #[arg(long, default_value = "timestamp")]
    pub feature_timestamp: String,
    /// Column with the time each feature row became available (late data is then not used early).
    #[arg(long)]
    pub created_timestamp: Option<String>,
    /// Feature columns to take (default: all but keys and times).
    #[arg(long, value_delimiter = ',')]
    pub feature_columns: Vec<String>,
    /// Ignore feature rows older than this at the label time (e.g. `7d`, `12h`).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Name of the view (and column prefix with --prefix).
    #[arg(long, default_value = "features")]
    pub view_name: String,
    /// Name the feature columns `<view>__<feature>`.
    #[arg(long)]
    pub prefix: bool,
    #[arg(long, default_value = "")]
    pub description: String,
    #[command(flatten)]
    pub common: StoreArgs,
}

/// `nereid train`: train a classifier or regressor from a dataset version and record the run.
/// `--task`: a [`Task`] by name, the names listed in `--help`.
pub(crate) fn task_parser() -> impl clap::builder::TypedValueParser<Value = Task> {
    clap::builder::TypedValueParser::try_map(
        clap::builder::PossibleValuesParser::new(["classification", "regression"]),
        |s| s.parse::<Task>(),
    )
}

#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Dataset version to train on (any reference).
    #[arg(long)]
    pub dataset: String,
    /// What to predict: class probabilities or a numeric target.
    #[arg(
        long,
        default_value_t = Task::Classification,
        value_parser = task_parser()
    )]
    pub task: Task,
    /// Feature columns, in model input order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub features: Vec<String>,
    /// Label column: class labels (strings, integers or booleans), or the numeric target of a
    /// regression.
    #[arg(long)]
    pub label: String,
    /// Hidden layer widths (e.g. `16` or `32,16`); none trains a single layer (softmax or
    /// linear regression).
    #[arg(long, value_delimiter = ',')]
    pub hidden: Vec<usize>,
    /// Hidden activation: relu, gelu, tanh, sigmoid.
    #[arg(long, default_value = "relu")]
    pub activation: String,
    #[arg(long, default_value_t = 500)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.01)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Rows per step (default: full batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Early-stopping patience in epochs; 0 disables early stopping.
    #[arg(long, default_value_t = 50)]
    pub patience: usize,
    /// Seed of the split, initial weights and batch order: same data + flags + seed = same weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.2)]
    pub validation_fraction: f64,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Do not standardise inputs.
    #[arg(long)]
    pub no_standardize: bool,
    /// Skip rows with null features or labels instead of failing.
    #[arg(long)]
    pub drop_null_rows: bool,
    /// Runs directory (run records and artifacts).
    #[arg(long, env = "NEREID_RUNS_DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Experiment name (also the MLflow experiment).
    #[arg(long, default_value = "default")]
    pub experiment: String,
    /// Mirror the run to this MLflow tracking server (http only).
    #[arg(long, env = "MLFLOW_TRACKING_URI")]
    pub mlflow_uri: Option<String>,
    #[command(flatten)]
    pub common: StoreArgs,
}

/// `nereid pipeline ...`: run pipeline files and inspect their runs.
#[derive(Debug, Clone, Subcommand)]
pub enum PipelineCommand {
    /// Run a pipeline file; unchanged steps are cache hits and do no work.
    Run(PipelineRunArgs),
    /// List recorded pipeline runs.
    List(PipelineListArgs),
    /// Show one pipeline run: steps, cache hits, attempts, outputs, errors and logs.
    Show(PipelineShowArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PipelineRunArgs {
    /// The pipeline TOML file.
    pub file: PathBuf,
    /// Override the file's feature store (directory or URL).
    #[arg(long)]
    pub store: Option<String>,
    /// Override the file's runs directory.
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Override the file's model repository (directory or URL).
    #[arg(long)]
    pub repository: Option<String>,
    /// Mirror training runs to this MLflow tracking server.
    #[arg(long, env = "MLFLOW_TRACKING_URI")]
    pub mlflow_uri: Option<String>,
    /// Run every step even if a cached output exists.
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineListArgs {
    #[arg(long, env = "NEREID_RUNS_DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineShowArgs {
    /// Run id or unique prefix (`latest` for the newest).
    pub run: String,
    #[arg(long, env = "NEREID_RUNS_DIR", default_value = "runs")]
    pub runs_dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn open_store(args: &StoreArgs) -> anyhow::Result<FeatureStore> {
    FeatureStore::open_at(&args.store)
        .with_context(|| "opening the feature store (--store / NEREID_FEATURE_STORE)")
}

/// Runs a `nereid features` command.
pub fn run_features(cmd: FeaturesCommand) -> anyhow::Result<()> {
    match cmd {
        FeaturesCommand::Ingest(a) => ingest(a),
        FeaturesCommand::Versions(a) => versions(a),
        FeaturesCommand::Show(a) => {
            let store = open_store(&a.common)?;
            let v = store.resolve(&a.version)?;
            if a.common.json {
                return print_json(&v);
            }
            print_version(&store, &v);
            Ok(())
        }
        FeaturesCommand::Diff(a) => {
            let store = open_store(&a.common)?;
            let va = store.resolve(&a.a)?;
            let vb = store.resolve(&a.b)?;
            let diff = diff_profiles(&va.profile, &vb.profile);
            if a.common.json {
                return print_json(&serde_json::json!({ "a": va.id, "b": vb.id, "diff": diff }));
            }
            print_diff(&va, &vb, &diff);
            Ok(())
        }
        FeaturesCommand::Verify(a) => verify(a),
        FeaturesCommand::Join(a) => join(a),
        FeaturesCommand::Export(a) => {
            let store = open_store(&a.common)?;
            let v = store.resolve(&a.version)?;
            let rows = export_version(&store, &v, &a.output)?;
            if a.common.json {
                return print_json(&serde_json::json!({
                    "version": v.id, "name": v.name, "output": a.output, "rows": rows,
                }));
            }
            println!(
                "wrote {} {} ({rows} rows) to {}",
                v.name,
                v.short_id(),
                a.output.display()
            );
            Ok(())
        }
    }
}

fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .context("cannot derive a dataset name from the file name; pass --name")?,
    };
    let store = FeatureStore::open_or_create_at(&a.common.store)?;
    let mut opts = IngestOptions::new(name);
    opts.format = a.format;
    opts.description = a.description.clone();
    opts.csv_header = !a.no_header;
    opts.parents = a
        .parents
        .iter()
        .map(|p| store.resolve(p).map(|v| v.id))
        .collect::<Result<_, _>>()?;
    if let Some(d) = a.delimiter {
        opts.csv_delimiter = Some(
            u8::try_from(d)
                .ok()
                .context("--delimiter must be one byte")?,
        );
    }
    if let Some(s) = &a.schema {
        opts.schema = Some(SchemaSpec::parse(&[s])?);
    }
    let spinner = (!a.common.json).then(|| {
        crate::util::spinner(format!(
            "ingesting {} into {}",
            a.file.display(),
            store.location()
        ))
    });
    let c = store.ingest(&a.file, &opts);
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    let c = c?;
    if a.common.json {
        return print_json(&serde_json::json!({
            "id": c.version.id,
            "name": opts.name,
            "seq": c.seq,
            "rows": c.version.rows,
            "new_content": c.new_content,
            "new_index_entry": c.new_index_entry,
        }));
    }
    println!(
        "{} {}@{}  {}  ({} rows, {} columns)",
        if !c.new_content && !c.new_index_entry {
            "unchanged"
        } else if c.new_content {
            "stored"
        } else {
            "reused"
        },
        opts.name,
        c.seq,
        c.version.id,
        c.version.rows,
        c.version.schema.len()
    );
    Ok(())
}

fn versions(a: VersionsArgs) -> anyhow::Result<()> {
    let store = open_store(&a.common)?;
    match &a.name {
        None => {
            let mut rows = Vec::new();
            for name in store.datasets()? {
                let history = store.history(&name)?;
                if let Some(last) = history.last() {
                    rows.push((name, history.len(), last.clone()));
                }
            }
            if a.common.json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|(n, count, last)| serde_json::json!({ "name": n, "versions": count, "latest": last }))
                    .collect();
                return print_json(&list);
            }
            if rows.is_empty() {
                println!("no datasets in {}", store.location());
            }
            println!(
                "{:<24} {:>8}  {:<14} CREATED",
                "DATASET", "VERSIONS", "LATEST"
            );
            for (name, count, last) in rows {
                println!(
                    "{name:<24} {count:>8}  {:<14} {}",
                    &last.id[..12],
                    last.created_at
                );
            }
        }
        Some(name) => {
            let history = store.history(name)?;
            if history.is_empty() {
                bail!("no dataset `{name}` in {}", store.location());
            }
            let mut out = Vec::new();
            for e in &history {
                out.push((e.clone(), store.get(&e.id)?));
            }
            if a.common.json {
                let list: Vec<_> = out
                    .iter()
                    .map(|(e, v)| {
                        serde_json::json!({
                            "seq": e.seq, "id": e.id, "indexed_at": e.created_at, "rows": v.rows,
                            "description": v.description, "parents": v.parents,
                        })
                    })
                    .collect();
                return print_json(&list);
            }
            println!(
                "{:<6} {:<14} {:>9}  {:<25} DESCRIPTION",
                "SEQ", "ID", "ROWS", "INDEXED"
            );
            for (e, v) in out {
                println!(
                    "{:<6} {:<14} {:>9}  {:<25} {}{}",
                    format!("@{}", e.seq),
                    &e.id[..12],
                    v.rows,
                    e.created_at,
                    v.description,
                    if v.parents.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (parents: {})",
                            v.parents
                                .iter()
                                .map(|p| &p[..12])
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
            }
        }
    }
    Ok(())
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn column_line(c: &ColumnProfile) -> String {
    let mut s = format!(
        "  {:<22} {:<18} {:>8} {:>7}",
        c.name, c.data_type, c.count, c.nulls
    );
    if let Some(n) = &c.numeric {
        s.push_str(&format!(
            "  min {} p50 {} max {} mean {} std {}",
            fmt_num(n.min),
            fmt_num(n.quantile(0.5)),
            fmt_num(n.max),
            fmt_num(n.mean),
            fmt_num(n.std)
        ));
    }
    if let Some(cat) = &c.categorical {
        let top: Vec<String> = cat
            .frequencies
            .iter()
            .take(5)
            .map(|(v, n)| format!("{v}={n}"))
            .collect();
        s.push_str(&format!(
            "  {} distinct: {}{}",
            cat.distinct,
            top.join(" "),
            if cat.frequencies.len() > 5 || cat.other > 0 {
                " ..."
            } else {
                ""
            }
        ));
    }
    if let Some(t) = &c.temporal {
        s.push_str(&format!(
            "  {} .. {}",
            t.min.as_deref().unwrap_or("-"),
            t.max.as_deref().unwrap_or("-")
        ));
    }
    s
}

fn print_version(store: &FeatureStore, v: &DatasetVersion) {
    println!("dataset version {}", v.id);
    println!("  name         {}", v.name);
    println!("  created      {}", v.created_at);
    if !v.description.is_empty() {
        println!("  description  {}", v.description);
    }
    println!("  rows         {}", v.rows);
    let derivation = serde_json::to_string(&v.derivation).unwrap_or_default();
    println!("  derivation   {derivation}");
    if v.parents.is_empty() {
        println!("  parents      none");
    }
    for p in &v.parents {
        let name = store
            .get(p)
            .map(|pv| pv.name)
            .unwrap_or_else(|_| "?".into());
        println!("  parent       {p} ({name})");
    }
    for f in &v.files {
        println!(
            "  file         {} {} bytes sha256 {}",
            f.path, f.bytes, f.sha256
        );
    }
    println!(
        "\n  {:<22} {:<18} {:>8} {:>7}  STATISTICS",
        "COLUMN", "TYPE", "COUNT", "NULLS"
    );
    for c in &v.profile.columns {
        println!("{}", column_line(c));
    }
}

fn print_diff(a: &DatasetVersion, b: &DatasetVersion, d: &ProfileDiff) {
    println!(
        "{} ({}) -> {} ({})",
        &a.id[..12],
        a.name,
        &b.id[..12],
        b.name
    );
    println!("  rows: {} -> {}", d.rows.0, d.rows.1);
    for c in &d.added {
        println!("  + column {c}");
    }
    for c in &d.removed {
        println!("  - column {c}");
    }
    let mut unchanged = 0;
    for c in &d.columns {
        if !c.changed() {
            unchanged += 1;
            continue;
        }
        let mut parts = Vec::new();
        if let Some((x, y)) = &c.data_type {
            parts.push(format!("type {x} -> {y}"));
        }
        if c.null_fraction.0 != c.null_fraction.1 {
            parts.push(format!(
                "nulls {:.1}% -> {:.1}%",
                c.null_fraction.0 * 100.0,
                c.null_fraction.1 * 100.0
            ));
        }
        for (label, pair) in [
            ("mean", c.mean),
            ("std", c.std),
            ("min", c.min),
            ("max", c.max),
        ] {
            if let Some((x, y)) = pair {
                if x != y {
                    parts.push(format!(
                        "{label} {} -> {}",
                        fmt_num(Some(x)),
                        fmt_num(Some(y))
                    ));
                }
            }
        }
        if let Some(s) = c.mean_shift_std {
            if s != 0.0 {
                parts.push(format!("mean shift {s:+.2} std"));
            }
        }
        if !c.new_categories.is_empty() {
            parts.push(format!("new categories {:?}", c.new_categories));
        }
        if !c.missing_categories.is_empty() {
            parts.push(format!("missing categories {:?}", c.missing_categories));
        }
        if let Some(s) = c.max_share_change {
            if s > 0.0 {
                parts.push(format!("largest category share change {:.1} pp", s * 100.0));
            }
        }
        println!("  ~ {}: {}", c.name, parts.join(", "));
    }
    println!("  {unchanged} column(s) unchanged");
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let store = open_store(&a.common)?;
    let reports = if a.versions.is_empty() {
        store.verify_all()?
    } else {
        a.versions
            .iter()
            .map(|r| store.resolve(r).map(|v| store.verify(&v)))
            .collect::<Result<Vec<_>, _>>()?
    };
    let bad = reports.iter().filter(|r| !r.ok).count();
    if a.common.json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            if r.ok {
                println!("ok       {}", r.id);
            } else {
                println!("CORRUPT  {}", r.id);
                for p in &r.problems {
                    println!("           {p}");
                }
            }
        }
    }
    if bad > 0 {
        bail!(
            "{bad} of {} dataset version(s) failed verification",
            reports.len()
        );
    }
    if !a.common.json {
        println!("{} dataset version(s) verified", reports.len());
    }
    Ok(())
}

fn join(a: JoinArgs) -> anyhow::Result<()> {
    let store = open_store(&a.common)?;
    let spec = match &a.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<JoinSpec>(&text)
                .with_context(|| format!("join spec {}", path.display()))?
        }
        None => {
            if a.entities.is_empty() {
                bail!("--entity is required (the key column(s) shared by both tables)");
            }
            JoinSpec {
                labels: a.labels.clone().context("--labels is required")?,
                label_timestamp: a.label_timestamp.clone(),
                views: vec![FeatureView {
                    name: a.view_name.clone(),
                    source: a.features.clone().context("--features is required")?,
                    entities: a.entities.clone(),
                    timestamp: a.feature_timestamp.clone(),
                    created_timestamp: a.created_timestamp.clone(),
                    features: a.feature_columns.clone(),
                    ttl: a.ttl.clone(),
                    prefix: a.prefix,
                }],
            }
        }
    };
    let (c, views) = build_training_set(&store, &spec, &a.name, &a.description)?;
    if a.common.json {
        return print_json(&serde_json::json!({
            "id": c.version.id, "name": a.name, "seq": c.seq, "rows": c.version.rows,
            "parents": c.version.parents, "views": views,
        }));
    }
    println!(
        "{} {}@{}  {}  ({} rows, {} columns)",
        if c.new_content { "stored" } else { "reused" },
        a.name,
        c.seq,
        c.version.id,
        c.version.rows,
        c.version.schema.len()
    );
    for v in views {
        println!(
            "  view {}: {} rows matched, {} without a feature row at or before their time, {} expired (TTL)",
            v.view, v.matched, v.unmatched, v.expired
        );
    }
    Ok(())
}

/// Runs `nereid train`.
pub fn run_train(a: TrainArgs) -> anyhow::Result<()> {
    let store = open_store(&a.common)?;
    let spec = TrainSpec {
        task: a.task,
        features: a.features.clone(),
        label: a.label.clone(),
        hidden: a.hidden.clone(),
        activation: a.activation.clone(),
        epochs: a.epochs,
        learning_rate: a.learning_rate,
        weight_decay: a.weight_decay,
        batch_size: a.batch_size,
        patience: (a.patience > 0).then_some(a.patience),
        seed: a.seed,
        validation_fraction: a.validation_fraction,
        test_fraction: a.test_fraction,
        standardize: !a.no_standardize,
        drop_null_rows: a.drop_null_rows,
    };
    let tracking = TrackingOptions {
        tracker: Tracker::new(&a.runs_dir),
        experiment: a.experiment.clone(),
        mlflow_uri: a.mlflow_uri.clone().filter(|s| !s.is_empty()),
        code_dir: PathBuf::from("."),
        tags: Default::default(),
        progress: !a.common.json,
    };
    eprintln!("training on {} ...", a.dataset);
    let outcome = train_from_dataset(&store, &a.dataset, &spec, &tracking)?;
    if a.common.json {
        return print_json(&outcome.record);
    }
    let r = &outcome.record;
    println!("run {} ({})", r.id, r.status.as_str());
    println!(
        "  dataset      {}",
        r.dataset_version.as_deref().unwrap_or("-")
    );
    println!("  code         {}", r.code.describe());
    println!("  task         {}", outcome.info.task);
    if !outcome.info.classes.is_empty() {
        println!("  classes      {}", outcome.info.classes.join(", "));
    }
    for (k, v) in &r.metrics {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            println!("  {k:<20} {}", *v as i64);
        } else {
            println!("  {k:<20} {v:.4}");
        }
    }
    println!("  weights      sha256 {}", outcome.info.weights_sha256);
    println!("  artifacts    {}", outcome.model_dir.display());
    if let Some(m) = &r.mlflow {
        match (&m.run_id, &m.error) {
            (Some(id), _) => println!("  mlflow       run {id} at {}", m.tracking_uri),
            (None, Some(e)) => println!("  mlflow       NOT mirrored: {e}"),
            _ => {}
        }
    }
    Ok(())
}

/// Runs a `nereid pipeline` command.
pub fn run_pipeline(cmd: PipelineCommand) -> anyhow::Result<()> {
    match cmd {
        PipelineCommand::Run(a) => {
            let options = RunOptions {
                store: a.store.clone(),
                runs: a.runs_dir.clone(),
                repository: a.repository.clone(),
                mlflow_uri: a.mlflow_uri.clone().filter(|s| !s.is_empty()),
                no_cache: a.no_cache,
                quiet: false,
            };
            let run = run_pipeline_file(&a.file, &options)?;
            if a.json {
                print_json(&run)?;
            } else {
                print_run(&run, false);
            }
            if run.status != crate::runner::PipelineStatus::Succeeded {
                bail!("pipeline run {} failed: {}", run.id, run.outcome);
            }
            Ok(())
        }
        PipelineCommand::List(a) => {
            let runs = list_runs(&a.runs_dir)?;
            if a.json {
                return print_json(&runs);
            }
            if runs.is_empty() {
                println!("no pipeline runs in {}", a.runs_dir.display());
                return Ok(());
            }
            println!(
                "{:<26} {:<16} {:<10} {:<25} OUTCOME",
                "RUN", "PIPELINE", "STATUS", "STARTED"
            );
            for r in runs {
                println!(
                    "{:<26} {:<16} {:<10} {:<25} {}",
                    r.id,
                    r.pipeline,
                    r.status.as_str(),
                    r.started_at,
                    r.outcome
                );
            }
            Ok(())
        }
        PipelineCommand::Show(a) => {
            let run = if a.run == "latest" {
                list_runs(&a.runs_dir)?
                    .pop()
                    .with_context(|| format!("no pipeline runs in {}", a.runs_dir.display()))?
            } else {
                get_run(&a.runs_dir, &a.run)?
            };
            if a.json {
                return print_json(&run);
            }
            print_run(&run, true);
            Ok(())
        }
    }
}

/// Prints a pipeline run; `details` adds outputs' keys and step logs.
pub fn print_run(run: &PipelineRun, details: bool) {
    println!("pipeline run {} ({})", run.id, run.status.as_str());
    println!(
        "  pipeline   {} ({}, sha256 {})",
        run.pipeline,
        run.file,
        &run.file_sha256[..12]
    );
    println!("  code       {}", run.code.describe());
    println!(
        "  time       {} .. {}",
        run.started_at,
        run.ended_at.as_deref().unwrap_or("(running)")
    );
    println!(
        "\n  {:<14} {:<9} {:<10} {:>8} {:>9}  SUMMARY",
        "STEP", "KIND", "STATUS", "ATTEMPTS", "TIME"
    );
    for s in &run.steps {
        println!(
            "  {:<14} {:<9} {:<10} {:>8} {:>9}  {}",
            s.name,
            s.kind.as_str(),
            s.status.as_str(),
            s.attempts,
            s.duration_ms
                .map_or("-".to_string(), |d| format!("{:.2}s", d as f64 / 1000.0)),
            s.summary.as_deref().unwrap_or("")
        );
        if let Some(e) = &s.error {
            for line in e.lines() {
                println!("      error: {line}");
            }
        }
        if details {
            if let Some(k) = &s.cache_key {
                println!("      cache key {}", &k[..16]);
            }
            for line in &s.log {
                println!("      | {line}");
            }
        }
    }
    println!("\n  {}", run.outcome);
}

/// Writes a dataset version to `output` as CSV or Parquet (by extension); returns the rows.
pub fn export_version(
    store: &FeatureStore,
    version: &DatasetVersion,
    output: &Path,
) -> anyhow::Result<usize> {
    let batch = store.read(version)?;
    let extension = output
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match extension.as_deref() {
        Some("parquet") => crate::store::encode_parquet(&batch)?,
        Some("csv") => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            writer.write(&batch)?;
            writer.into_inner()
        }
        _ => bail!(
            "cannot tell the format of {}: name it .csv or .parquet",
            output.display()
        ),
    };
    crate::util::write_atomic(output, &bytes)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(batch.num_rows())
}

#[cfg(test)]
mod export_tests {
    use super::*;

    #[test]
    fn a_version_exports_as_csv_and_parquet_with_every_row() {
        let dir = tempfile::tempdir().expect("dir");
        let source = dir.path().join("d.csv");
        std::fs::write(&source, "a,b,c\n1,x,0.5\n2,y,\n3,,1.25\n").expect("csv");
        let store = FeatureStore::open_or_create(dir.path().join("store")).expect("store");
        store
            .ingest(&source, &IngestOptions::new("d"))
            .expect("ingest");
        let v = store.resolve("d").expect("version");

        // A bare file name writes into the working directory.
        let bare =
            std::path::PathBuf::from(format!("nereid-export-test-{}.csv", std::process::id()));
        let written = export_version(&store, &v, &bare);
        let _ = std::fs::remove_file(&bare);
        assert_eq!(written.expect("bare name"), 3);

        let csv = dir.path().join("out.csv");
        assert_eq!(export_version(&store, &v, &csv).expect("csv"), 3);
        assert_eq!(
            std::fs::read_to_string(&csv).expect("read"),
            "a,b,c\n1,x,0.5\n2,y,\n3,,1.25\n"
        );

        let parquet = dir.path().join("out.parquet");
        assert_eq!(export_version(&store, &v, &parquet).expect("parquet"), 3);
        let file = std::fs::File::open(&parquet).expect("open");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        let batches: Vec<_> = reader.map(|b| b.expect("batch")).collect();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(batches[0], store.read(&v).expect("read"));

        let err = export_version(&store, &v, &dir.path().join("out.xlsx")).expect_err("format");
        assert!(
            err.to_string().contains("name it .csv or .parquet"),
            "{err}"
        );
    }
}
