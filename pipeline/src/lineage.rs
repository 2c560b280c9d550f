//! Lineage from a served model version down to its sources: the version's `lineage.json` ->
//! the pipeline run that published it -> the trigger firing that started the run (if one did)
//! -> the dataset versions it trained on, parent by parent, down to the files they were read
//! from. The server adds the request (`GET /v2/lineage/{request_id}`) and the firing's details;
//! `nereid lineage` prints the chain.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::gate::{Lineage, LINEAGE_FILE};
use crate::runner::get_run;
use crate::store::{Derivation, FeatureStore};
use crate::triggers::cli::{server_call, text};

/// Most dataset versions followed up the parents (lineage graphs are small; this bounds a
/// corrupt catalog).
const MAX_DATASETS: usize = 64;

/// The chain below `<repo>/<model>/<version>` as JSON: `model_version` (its lineage.json),
/// `pipeline_run` (id, status, times, outcome, steps), `trigger_firing` (its id) and
/// `datasets` (the trained-on version first, then its ancestors). A part that cannot be read
/// (no record, a store that is gone) says why instead.
pub fn version_lineage(repository: &Path, model: &str, version: u64) -> anyhow::Result<Value> {
    let path = repository
        .join(model)
        .join(version.to_string())
        .join(LINEAGE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "model '{model}' version {version} has no lineage ({} is missing: it was not published by a pipeline)",
            path.display()
        )
    })?;
    let lineage: Lineage =
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))?;
    let pipeline_run = match (&lineage.pipeline_run, &lineage.runs) {
        (Some(id), Some(runs)) => match get_run(runs, id) {
            Ok(run) => json!({
                "id": run.id,
                "pipeline": run.pipeline,
                "file": run.file,
                "status": run.status.as_str(),
                "started_at": run.started_at,
                "ended_at": run.ended_at,
                "outcome": run.outcome,
                "trigger_firing": run.trigger_firing,
                "steps": run.steps.iter().map(|s| json!({
                    "name": s.name,
                    "kind": s.kind.as_str(),
                    "status": s.status.as_str(),
                    "summary": s.summary,
                })).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"id": id, "error": e.to_string()}),
        },
        (Some(id), None) => {
            json!({"id": id, "error": "the version does not say where its run's record is"})
        }
        (None, _) => Value::Null,
    };
    let datasets = match &lineage.store {
        Some(location) => dataset_chain(location, &lineage.dataset_version),
        None => vec![
            json!({"id": lineage.dataset_version, "error": "the version does not say which feature store holds it"}),
        ],
    };
    Ok(json!({
        "model_version": {
            "model": model,
            "version": version,
            "published_at": lineage.published_at,
            "weights_sha256": lineage.weights_sha256,
            "training_run": lineage.training_run,
            "code": lineage.code,
            "gate": lineage.gate.as_ref().map(|g| g.reason.clone()),
        },
        "pipeline_run": pipeline_run,
        "trigger_firing": lineage.trigger_firing,
        "store": lineage.store,
        "datasets": datasets,
    }))
}

/// `dataset` and its ancestors, breadth first.
fn dataset_chain(location: &str, dataset: &str) -> Vec<Value> {
    let store = match FeatureStore::open_at(location) {
        Ok(s) => s,
        Err(e) => {
            return vec![json!({"id": dataset, "error": format!("feature store {location}: {e}")})]
        }
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([dataset.to_string()]);
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) || out.len() == MAX_DATASETS {
            continue;
        }
        match store.get(&id) {
            Ok(v) => {
                let source = match &v.derivation {
                    Derivation::Ingest { source, .. } => format!("ingested from {source}"),
                    Derivation::Join { .. } => "point-in-time join".to_string(),
                    Derivation::Derived { how } => how.clone(),
                };
                queue.extend(v.parents.iter().cloned());
                out.push(json!({
                    "id": v.id,
                    "name": v.name,
                    "created_at": v.created_at,
                    "rows": v.rows,
                    "source": source,
                    "parents": v.parents,
                }));
            }
            Err(e) => out.push(json!({"id": id, "error": e.to_string()})),
        }
    }
    out
}

#[derive(Debug, Clone, Args)]
pub struct LineageArgs {
    /// A request id (as the response's `id`, or the one the client sent): the chain of the
    /// version that served it. Leave it out and give --model for a version's chain.
    pub request_id: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: the version (default: the one served).
    #[arg(long)]
    pub version: Option<u64>,
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// A header to send, `NAME:VALUE`, repeatable (auth tokens, a restricted API's header).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Print the server's JSON instead of the chain.
    #[arg(long)]
    pub json: bool,
}

/// `nereid lineage`.
pub fn run_lineage(a: LineageArgs) -> anyhow::Result<()> {
    let base = a.url.trim_end_matches('/');
    let url = match (&a.request_id, &a.model, a.version) {
        (Some(id), None, None) => format!("{base}/v2/lineage/{id}"),
        (None, Some(m), Some(v)) => format!("{base}/v2/models/{m}/versions/{v}/lineage"),
        (None, Some(m), None) => format!("{base}/v2/models/{m}/lineage"),
        _ => anyhow::bail!("give a request id, or --model (and --version), not both"),
    };
    let body = server_call(reqwest::Method::GET, &url, &a.headers)?;
    if a.json {
        println!("{body}");
        return Ok(());
    }
    print!("{}", render(&serde_json::from_str(&body)?));
    Ok(())
}

/// The chain, one link per line.
pub fn render(doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if let Some(r) = doc.get("request").filter(|r| r.is_object()) {
        let _ = writeln!(
            out,
            "request {} served by {} version {} at {}",
            text(&r["id"]),
            text(&r["model"]),
            text(&r["version"]),
            text(&r["time"])
        );
    }
    let v = &doc["model_version"];
    let _ = writeln!(
        out,
        "model {} version {}: published {}, weights {}, training run {}",
        text(&v["model"]),
        text(&v["version"]),
        text(&v["published_at"]),
        text(&v["weights_sha256"])
            .chars()
            .take(12)
            .collect::<String>(),
        text(&v["training_run"])
    );
    let run = &doc["pipeline_run"];
    if run.is_object() {
        match run.get("error") {
            Some(e) => {
                let _ = writeln!(out, "  <- pipeline run {}: {}", text(&run["id"]), text(e));
            }
            None => {
                let _ = writeln!(
                    out,
                    "  <- pipeline run {} ({}, {}): {}",
                    text(&run["id"]),
                    text(&run["pipeline"]),
                    text(&run["status"]),
                    text(&run["outcome"])
                );
            }
        }
    } else {
        out.push_str("  <- no pipeline run recorded\n");
    }
    let firing = &doc["trigger_firing"];
    if firing.is_object() {
        let _ = writeln!(
            out,
            "  <- trigger {} firing {}: {}",
            text(&firing["trigger"]),
            text(&firing["id"]),
            text(&firing["reason"]["summary"])
        );
    } else if firing.is_string() {
        let _ = writeln!(out, "  <- trigger firing {}", text(firing));
    }
    for d in doc["datasets"].as_array().into_iter().flatten() {
        match d.get("error") {
            Some(e) => {
                let _ = writeln!(out, "  <- dataset {}: {}", text(&d["id"]), text(e));
            }
            None => {
                let _ = writeln!(
                    out,
                    "  <- dataset {} {} ({} rows): {}",
                    text(&d["name"]),
                    text(&d["id"]).chars().take(12).collect::<String>(),
                    text(&d["rows"]),
                    text(&d["source"])
                );
            }
        }
    }
    out
}
