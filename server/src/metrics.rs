//! `/metrics` on the metrics port: Prometheus text with Triton's `nv_inference_*` names, read
//! at scrape time from the same per-version statistics that the statistics extension serves.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::Infer;

pub fn router(infer: Infer) -> Router {
    Router::new().fallback(handle).with_state(infer)
}

async fn handle(State(infer): State<Infer>, request: Request<axum::body::Body>) -> Response {
    if request.uri().path() != "/metrics" {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if request.method() != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        render(&infer),
    )
        .into_response()
}

/// One counter family: name, help, and the value read from a snapshot.
type Family = (
    &'static str,
    &'static str,
    fn(&crate::stats::Snapshot) -> u64,
);

const FAMILIES: [Family; 8] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", |s| s.success.count),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)", |s| s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)", |s| s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds (includes cached requests)", |s| (s.success.ns + s.fail.ns) / 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds (includes cached requests)", |s| s.queue.ns / 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds (does not include cached requests)", |s| s.compute_input.ns / 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds (does not include cached requests)", |s| s.compute_infer.ns / 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds (does not include cached requests)", |s| s.compute_output.ns / 1000),
];

fn render(infer: &Infer) -> String {
    let models: Vec<_> = infer
        .registry()
        .all_ready()
        .into_iter()
        .map(|m| (m.name.clone(), m.version, m.stats.snapshot()))
        .collect();
    let mut out = String::new();
    for (name, help, value) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (model, version, snapshot) in &models {
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",version=\"{version}\"}} {}",
                escape(model),
                value(snapshot)
            );
        }
    }
    let name = "nv_inference_request_failure";
    let _ = writeln!(
        out,
        "# HELP {name} Number of failed inference requests, all batch sizes\n# TYPE {name} counter"
    );
    for (model, version, snapshot) in &models {
        for reason in ["BACKEND", "CANCELED", "OTHER", "REJECTED"] {
            // Failures are not classified by reason yet; they are all counted as OTHER.
            let value = if reason == "OTHER" {
                snapshot.fail.count
            } else {
                0
            };
            let _ = writeln!(
                out,
                "{name}{{model=\"{}\",reason=\"{reason}\",version=\"{version}\"}} {value}",
                escape(model)
            );
        }
    }
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
