//! `/metrics` on the metrics port: Prometheus text with Triton's `nv_*` names and labels.
//!
//! Everything is read at scrape time from the per-version statistics that also feed the
//! statistics extension, so the two always agree (average batch size = `nv_inference_count /
//! nv_inference_exec_count`, as in the extension). Families are built with the `prometheus`
//! crate's data model and written by its text encoder; labels are sorted as prometheus-cpp
//! sorts them (`model`, `reason`, `version`).

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile,
    Summary,
};
use prometheus::{Encoder, TextEncoder};

use crate::model::ModelVersion;
use crate::stats::{FailureReason, Snapshot};
use crate::Infer;

/// Quantiles of `nv_inference_request_summary_us` (Triton's defaults).
const QUANTILES: [f64; 5] = [0.5, 0.9, 0.95, 0.99, 0.999];

#[derive(Clone)]
struct MetricsState {
    infer: Infer,
    /// The previous `/proc/stat` reading, so utilisation covers the time since the last scrape.
    cpu: Arc<Mutex<Option<CpuTimes>>>,
}

pub fn router(infer: Infer) -> Router {
    let state = MetricsState {
        infer,
        cpu: Arc::new(Mutex::new(None)),
    };
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<MetricsState>, request: Request<axum::body::Body>) -> Response {
    if request.uri().path() != "/metrics" {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if request.method() != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response();
    }
    let families = gather(&state);
    let mut body = Vec::new();
    if let Err(err) = TextEncoder::new().encode(&families, &mut body) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to encode metrics: {err}"),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    let mut c = Counter::default();
    c.set_value(value);
    metric.set_counter(c);
    metric
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    let mut g = Gauge::default();
    g.set_value(value);
    metric.set_gauge(g);
    metric
}

/// Builds one family's series for a model, given its `model`/`version` labels.
type PerModel<'a> = dyn Fn(&ModelSample, &[(&str, &str)]) -> Vec<Metric> + 'a;

struct ModelSample {
    name: String,
    version: String,
    snapshot: Snapshot,
    pending: u64,
    load_secs: f64,
    max_batch_size: u64,
}

type CounterFamily = (&'static str, &'static str, fn(&Snapshot) -> f64);

const COUNTERS: [CounterFamily; 13] = [
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes", |s| s.success.count as f64),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)", |s| s.inference_count as f64),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)", |s| s.execution_count as f64),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds (includes cached requests)", |s| (s.success.ns / 1000) as f64),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds (includes cached requests)", |s| (s.queue.ns / 1000) as f64),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds (does not include cached requests)", |s| (s.compute_input.ns / 1000) as f64),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds (does not include cached requests)", |s| (s.compute_infer.ns / 1000) as f64),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds (does not include cached requests)", |s| (s.compute_output.ns / 1000) as f64),
    ("nv_cache_num_hits_per_model", "Number of response cache hits per model", |s| s.cache_hit.count as f64),
    ("nv_cache_num_misses_per_model", "Number of response cache misses per model", |s| s.cache_miss.count as f64),
    ("nv_cache_hit_duration_per_model", "Cumulative time requests spend retrieving a cached response per model on cache hits (microseconds)", |s| (s.cache_hit.ns / 1000) as f64),
    ("nv_cache_miss_duration_per_model", "Cumulative time requests spend looking up and inserting responses into the cache on a cache miss (microseconds)", |s| (s.cache_miss.ns / 1000) as f64),
    ("nereid_device_resident_inputs", "Batch inputs a GPU instance read straight from its device memory, left there by an earlier ensemble step on the same GPU", |s| s.device_inputs as f64),
];

fn sample(model: &ModelVersion) -> ModelSample {
    ModelSample {
        name: model.name.clone(),
        version: model.version.to_string(),
        snapshot: model.stats.snapshot(),
        pending: model.pending(),
        load_secs: model.load_duration.as_secs_f64(),
        max_batch_size: model.config.max_batch_size.max(1) as u64,
    }
}

fn gather(state: &MetricsState) -> Vec<MetricFamily> {
    let models: Vec<ModelSample> = state
        .infer
        .registry()
        .all_ready()
        .iter()
        .map(|m| sample(m))
        .collect();
    let per_model = |f: &PerModel| -> Vec<Metric> {
        models
            .iter()
            .flat_map(|m| f(m, &[("model", &m.name), ("version", &m.version)]))
            .collect()
    };

    let mut families = Vec::new();
    for (name, help, value) in COUNTERS {
        families.push(family(
            name,
            help,
            MetricType::COUNTER,
            per_model(&|m, l| vec![counter(l, value(&m.snapshot))]),
        ));
    }
    families.push(family(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes",
        MetricType::COUNTER,
        per_model(&|m, _| {
            FailureReason::ALL
                .iter()
                .zip(m.snapshot.failures)
                .map(|(reason, count)| {
                    counter(
                        &[
                            ("model", &m.name),
                            ("reason", reason.label()),
                            ("version", &m.version),
                        ],
                        count as f64,
                    )
                })
                .collect()
        }),
    ));
    families.push(family(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        MetricType::GAUGE,
        per_model(&|m, l| vec![gauge(l, m.pending as f64)]),
    ));
    families.push(family(
        "nv_model_load_duration_secs",
        "Model load time in seconds",
        MetricType::GAUGE,
        per_model(&|m, l| vec![gauge(l, m.load_secs)]),
    ));
    families.push(family(
        "nv_inference_request_summary_us",
        "Summary of inference request duration in microseconds (includes cached requests)",
        MetricType::SUMMARY,
        per_model(&|m, l| vec![latency_summary(&m.snapshot, l)]),
    ));
    families.push(family(
        "nereid_batch_size",
        "Batch sizes of model executions",
        MetricType::HISTOGRAM,
        per_model(&|m, l| vec![batch_histogram(&m.snapshot, m.max_batch_size, l)]),
    ));

    if let Some(cache) = state.infer.response_cache() {
        families.extend(cache_families(&cache.totals()));
    }
    families.extend(monitor_families(&state.infer.registry().all_ready()));
    if let Ok(triggers) = state.infer.triggers() {
        families.extend(trigger_families(
            &triggers.counters(),
            triggers.status().triggers,
        ));
    }

    // GPU gauges where the driver's NVML library loads; a scrape never fails because of it.
    if let Some(gpus) = nereid_kernels::nvml::sample().filter(|g| !g.is_empty()) {
        let per_gpu = |value: fn(&nereid_kernels::nvml::GpuSample) -> f64| -> Vec<Metric> {
            gpus.iter()
                .map(|g| gauge(&[("gpu_uuid", &g.uuid)], value(g)))
                .collect()
        };
        families.push(family(
            "nv_gpu_utilization",
            "GPU utilization rate [0.0 - 1.0)",
            MetricType::GAUGE,
            per_gpu(|g| g.utilization),
        ));
        families.push(family(
            "nv_gpu_memory_total_bytes",
            "GPU total memory, in bytes",
            MetricType::GAUGE,
            per_gpu(|g| g.memory_total_bytes as f64),
        ));
        families.push(family(
            "nv_gpu_memory_used_bytes",
            "GPU used memory, in bytes",
            MetricType::GAUGE,
            per_gpu(|g| g.memory_used_bytes as f64),
        ));
    }
    let cpu = cpu_utilization(&state.cpu);
    families.push(family(
        "nv_cpu_utilization",
        "CPU utilization rate [0.0 - 1.0]",
        MetricType::GAUGE,
        vec![gauge(&[], cpu)],
    ));
    if let Some((total, used)) = memory() {
        families.push(family(
            "nv_cpu_memory_total_bytes",
            "CPU total memory (RAM), in bytes",
            MetricType::GAUGE,
            vec![gauge(&[], total as f64)],
        ));
        families.push(family(
            "nv_cpu_memory_used_bytes",
            "CPU used memory (RAM), in bytes",
            MetricType::GAUGE,
            vec![gauge(&[], used as f64)],
        ));
    }
    families
}

/// The response cache as a whole (with `--cache-config`).
fn cache_families(totals: &crate::cache::CacheTotals) -> Vec<MetricFamily> {
    let one = |name: &str, help: &str, kind: MetricType, value: u64| {
        let metric = match kind {
            MetricType::GAUGE => gauge(&[], value as f64),
            _ => counter(&[], value as f64),
        };
        family(name, help, kind, vec![metric])
    };
    vec![
        one(
            "nv_cache_num_entries",
            "Number of responses stored in the response cache",
            MetricType::GAUGE,
            totals.entries,
        ),
        one(
            "nv_cache_num_lookups",
            "Number of response cache lookups",
            MetricType::COUNTER,
            totals.lookups,
        ),
        one(
            "nv_cache_num_hits",
            "Number of response cache hits",
            MetricType::COUNTER,
            totals.hits,
        ),
        one(
            "nv_cache_num_misses",
            "Number of response cache misses",
            MetricType::COUNTER,
            totals.misses,
        ),
        one(
            "nv_cache_num_evictions",
            "Number of response cache evictions",
            MetricType::COUNTER,
            totals.evictions,
        ),
        one(
            "nereid_cache_num_inserts",
            "Number of responses inserted into the response cache",
            MetricType::COUNTER,
            totals.inserts,
        ),
        one(
            "nereid_cache_bytes",
            "Bytes of output tensors held by the response cache",
            MetricType::GAUGE,
            totals.bytes,
        ),
        one(
            "nereid_cache_capacity_bytes",
            "Size of the response cache in bytes (--cache-config)",
            MetricType::GAUGE,
            totals.capacity,
        ),
    ]
}

/// The monitors' families (`nereid_*`): drift of the latest closed window, data quality, live
/// performance from feedback, and the sampling counters. Label cardinality is bounded by the
/// columns of each monitored version.
fn monitor_families(models: &[std::sync::Arc<ModelVersion>]) -> Vec<MetricFamily> {
    let monitored: Vec<_> = models
        .iter()
        .filter_map(|m| Some((m.name.as_str(), m.version.to_string(), m.monitor.as_ref()?)))
        .collect();
    if monitored.is_empty() {
        return Vec::new();
    }
    let mut score = Vec::new();
    let mut detected = Vec::new();
    let mut dataset = Vec::new();
    let mut share = Vec::new();
    let mut quality: [(&str, &str, Vec<Metric>); 5] = [
        ("nereid_data_quality_missing_share", "Share of the latest window's rows with a missing (null, NaN or absent) value, per column", Vec::new()),
        ("nereid_data_quality_out_of_range_share", "Share of the latest window's numeric values outside the reference's range, per column", Vec::new()),
        ("nereid_data_quality_unseen_category_share", "Share of the latest window's categorical values the reference never had, per column", Vec::new()),
        ("nereid_data_quality_wrong_type_total", "Values in the latest window that could not be read as the column's type, per column", Vec::new()),
        ("nereid_data_quality_failed", "1 when a data-quality check of the latest window failed (check label), per column", Vec::new()),
    ];
    let mut live = Vec::new();
    let mut labelled = Vec::new();
    let mut samples = Vec::new();
    let mut dropped = Vec::new();
    let mut windows = Vec::new();
    for (model, version, monitor) in &monitored {
        let base = [("model", *model), ("version", version.as_str())];
        let (taken, lost) = monitor.counts();
        samples.push(counter(&base, taken as f64));
        dropped.push(counter(&base, lost as f64));
        windows.push(counter(&base, monitor.windows() as f64));
        if let Some(report) = monitor.latest() {
            dataset.push(gauge(
                &base,
                f64::from(u8::from(report.dataset_drift.drift)),
            ));
            share.push(gauge(&base, report.dataset_drift.share));
            for c in &report.columns {
                let per = [
                    ("feature", c.name.as_str()),
                    ("model", model),
                    ("version", version.as_str()),
                ];
                if let Some(t) = &c.test {
                    score.push(gauge(
                        &[
                            ("feature", c.name.as_str()),
                            ("method", t.method.name()),
                            ("model", model),
                            ("version", version.as_str()),
                        ],
                        t.score,
                    ));
                    detected.push(gauge(&per, f64::from(u8::from(t.drift))));
                }
                let q = &c.quality;
                quality[0].2.push(gauge(&per, q.missing.share));
                if let Some(o) = &q.out_of_range {
                    quality[1].2.push(gauge(&per, o.share));
                }
                if let Some(u) = &q.unseen_categories {
                    quality[2].2.push(gauge(&per, u.share));
                }
                quality[3].2.push(gauge(&per, q.wrong_type.count as f64));
                let mut checks = vec![
                    ("missing", q.missing.failed),
                    ("wrong_type", q.wrong_type.failed),
                ];
                if let Some(o) = &q.out_of_range {
                    checks.push(("out_of_range", o.failed));
                }
                if let Some(u) = &q.unseen_categories {
                    checks.push(("unseen_category", u.failed));
                }
                for (check, failed) in checks {
                    quality[4].2.push(gauge(
                        &[
                            ("check", check),
                            ("feature", c.name.as_str()),
                            ("model", model),
                            ("version", version.as_str()),
                        ],
                        f64::from(u8::from(failed)),
                    ));
                }
            }
        }
        let performance = monitor.performance();
        labelled.push(counter(&base, performance.total.labelled as f64));
        if performance.total.labelled > 0 {
            for (metric, value) in performance.total.named() {
                live.push(gauge(
                    &[
                        ("metric", metric.as_str()),
                        ("model", model),
                        ("version", version.as_str()),
                    ],
                    value,
                ));
            }
        }
    }
    let mut families = vec![
        family("nereid_drift_score", "Drift test score of each monitored column in the latest closed window (a p-value or a distance, see the method label)", MetricType::GAUGE, score),
        family("nereid_drift_detected", "1 when the latest closed window's test found drift in the column", MetricType::GAUGE, detected),
        family("nereid_dataset_drift", "1 when the share of drifted features in the latest closed window reached drift_share", MetricType::GAUGE, dataset),
        family("nereid_drift_share", "Share of features that drifted in the latest closed window", MetricType::GAUGE, share),
    ];
    for (name, help, metrics) in quality {
        families.push(family(name, help, MetricType::GAUGE, metrics));
    }
    families.extend([
        family("nereid_live_metric", "Live performance from ground-truth feedback since the version loaded (accuracy, macro_f1, precision/recall/f1 per class; mae, rmse, r2)", MetricType::GAUGE, live),
        family("nereid_feedback_labels_total", "Predictions labelled through feedback", MetricType::COUNTER, labelled),
        family("nereid_monitor_samples_total", "Requests handed to the model's monitor", MetricType::COUNTER, samples),
        family("nereid_monitor_samples_dropped_total", "Sampled requests dropped because the monitor's queue was full", MetricType::COUNTER, dropped),
        family("nereid_monitor_windows_total", "Monitor windows closed and tested", MetricType::COUNTER, windows),
    ]);
    // The text encoder refuses families without series (no window closed yet, no feedback).
    families.retain(|f| !f.get_metric().is_empty());
    families
}

/// The trigger families: firings by trigger and reason kind, suppressed firings, and the time
/// of the last firing. Every configured trigger has a series, at 0 before it first fires.
fn trigger_families(
    counters: &nereid_pipeline::triggers::Counters,
    triggers: Vec<nereid_pipeline::triggers::TriggerStatus>,
) -> Vec<MetricFamily> {
    let mut fired = Vec::new();
    let mut suppressed = Vec::new();
    let mut last = Vec::new();
    for t in &triggers {
        let id = t.id.as_str();
        let mut any = false;
        for ((trigger, reason), n) in &counters.fired {
            if trigger == id {
                any = true;
                fired.push(counter(&[("reason", reason), ("trigger", id)], *n as f64));
            }
        }
        if !any {
            fired.push(counter(&[("reason", t.kind), ("trigger", id)], 0.0));
        }
        let n = counters.suppressed.get(id).copied().unwrap_or(0);
        suppressed.push(counter(&[("trigger", id)], n as f64));
        if let Some(time) = counters.last_fired.get(id) {
            last.push(gauge(
                &[("trigger", id)],
                time.timestamp_millis() as f64 / 1000.0,
            ));
        }
    }
    let mut families = vec![
        family("nereid_trigger_fired_total", "Retraining trigger firings whose action started, by trigger and reason (drift, schedule, new_data, metric, manual)", MetricType::COUNTER, fired),
        family("nereid_trigger_suppressed_total", "Trigger episodes not fired because of the cooldown or a run still going", MetricType::COUNTER, suppressed),
        family("nereid_trigger_last_fired_timestamp_seconds", "Unix time of the trigger's last firing", MetricType::GAUGE, last),
    ];
    families.retain(|f| !f.get_metric().is_empty());
    families
}

fn latency_summary(snapshot: &Snapshot, pairs: &[(&str, &str)]) -> Metric {
    let histogram = &snapshot.request_latency_us;
    let mut summary = Summary::default();
    summary.set_sample_count(snapshot.success.count);
    summary.set_sample_sum((snapshot.success.ns / 1000) as f64);
    summary.set_quantile(
        QUANTILES
            .iter()
            .map(|&q| {
                let mut quantile = Quantile::default();
                quantile.set_quantile(q);
                let value = if histogram.is_empty() {
                    f64::NAN
                } else {
                    histogram.value_at_quantile(q) as f64
                };
                quantile.set_value(value);
                quantile
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    metric.set_summary(summary);
    metric
}

/// Buckets at powers of two up to `max_batch_size`, filled from the per-size execution counts.
fn batch_histogram(snapshot: &Snapshot, max_batch_size: u64, pairs: &[(&str, &str)]) -> Metric {
    let mut bounds = Vec::new();
    let mut bound = 1;
    while bound < max_batch_size {
        bounds.push(bound);
        bound *= 2;
    }
    bounds.push(max_batch_size);
    let buckets = bounds
        .iter()
        .map(|&upper| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(upper as f64);
            bucket.set_cumulative_count(
                snapshot
                    .batches
                    .range(..=upper)
                    .map(|(_, c)| c[1].count)
                    .sum(),
            );
            bucket
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_sample_count(snapshot.execution_count);
    histogram.set_sample_sum(snapshot.inference_count as f64);
    histogram.set_bucket(buckets);
    let mut metric = Metric::default();
    metric.set_label(labels(pairs));
    metric.set_histogram(histogram);
    metric
}

#[derive(Clone, Copy)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

fn read_cpu_times() -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().sum();
    // idle + iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

fn cpu_utilization(previous: &Mutex<Option<CpuTimes>>) -> f64 {
    let Some(now) = read_cpu_times() else {
        return 0.0;
    };
    let mut previous = previous.lock().unwrap_or_else(|p| p.into_inner());
    let (busy, total) = match *previous {
        Some(before) => (
            now.busy.saturating_sub(before.busy),
            now.total.saturating_sub(before.total),
        ),
        None => (now.busy, now.total),
    };
    *previous = Some(now);
    if total == 0 {
        0.0
    } else {
        busy as f64 / total as f64
    }
}

/// (total, used) bytes from `/proc/meminfo`, used = total - available.
fn memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total, total.saturating_sub(available)))
}
