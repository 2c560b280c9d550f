//! When a trigger fires: each trigger's state, fed observations (closed drift windows, live
//! metrics, dataset versions, the clock) and answering with decisions. Pure: no I/O and no clock
//! of its own, so every rule is tested with made-up times.
//!
//! Rules. A condition that becomes true starts an *episode*; an episode fires at most once, at
//! its start (a drift that lasts an hour fires once). When an episode starts while a run the
//! trigger started is still going, or within the cooldown after its last firing, the episode is
//! *suppressed*: recorded as such, never queued. Drift and metric episodes end when a window
//! (a value with enough labels) no longer meets the condition; a new serving version starts
//! over. Each schedule occurrence and each new dataset version is an episode of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nereid_monitor::performance::Metrics;
use nereid_monitor::DriftReport;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::config::{Condition, Threshold, Trigger};

/// Why a trigger fired (or would have): the kind and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// drift | schedule | new_data | metric | manual
    pub kind: String,
    /// One sentence with the numbers.
    pub summary: String,
    /// The same, for machines (windows, scores, dataset versions, ...).
    #[serde(default)]
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Fire,
    /// Not fired, and why (a run still going, or the cooldown).
    Suppress(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub trigger: String,
    pub verdict: Verdict,
    pub reason: Reason,
}

/// What the engine remembers per trigger; `Persisted` is the part that survives restarts.
#[derive(Debug, Clone, Default)]
struct State {
    persisted: Persisted,
    /// Version whose windows/metrics are being followed, and the last window counted.
    version: Option<u64>,
    last_window: u64,
    consecutive: u32,
    windows_in_episode: Vec<serde_json::Value>,
    /// End of the last window without drift: the drifted data starts after it (sliding windows
    /// overlap, so the first drifted window may begin before the change).
    last_clean_end_ms: Option<u64>,
    in_episode: bool,
    next_due: Option<DateTime<Utc>>,
    /// Firing id of the action still running.
    running: Option<String>,
}

/// Per-trigger state kept across restarts (in the record folder's `state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<DateTime<Utc>>,
    /// new_data: the newest dataset version (sequence number) seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_seq: Option<u64>,
}

/// The triggers of one file and their states.
#[derive(Debug, Default)]
pub struct Engine {
    triggers: Vec<Trigger>,
    states: BTreeMap<String, State>,
}

impl Engine {
    pub fn new(
        triggers: Vec<Trigger>,
        persisted: &BTreeMap<String, Persisted>,
        now: DateTime<Utc>,
    ) -> Engine {
        let mut engine = Engine::default();
        engine.replace(triggers, persisted, now);
        engine
    }

    /// Takes a new set of triggers (the file changed). A trigger whose id and definition are
    /// unchanged keeps its state; others start afresh (persisted parts restored).
    pub fn replace(
        &mut self,
        triggers: Vec<Trigger>,
        persisted: &BTreeMap<String, Persisted>,
        now: DateTime<Utc>,
    ) {
        let mut states = BTreeMap::new();
        for t in &triggers {
            let unchanged = self.trigger(&t.id).is_some_and(|old| old == t);
            let state = match self.states.remove(&t.id) {
                Some(s) if unchanged => s,
                old => {
                    let mut s = State {
                        persisted: persisted.get(&t.id).cloned().unwrap_or_default(),
                        ..State::default()
                    };
                    // A run in flight stays in flight whatever the file now says.
                    s.running = old.and_then(|o| o.running);
                    if let Condition::Schedule { cron, timezone } = &t.condition {
                        s.next_due = cron.next_after(now, *timezone);
                    }
                    s
                }
            };
            states.insert(t.id.clone(), state);
        }
        self.triggers = triggers;
        self.states = states;
    }

    pub fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }

    pub fn trigger(&self, id: &str) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.id == id)
    }

    /// The state worth keeping across restarts, per trigger.
    pub fn persisted(&self) -> BTreeMap<String, Persisted> {
        self.states
            .iter()
            .map(|(id, s)| (id.clone(), s.persisted.clone()))
            .collect()
    }

    pub fn last_fired(&self, id: &str) -> Option<DateTime<Utc>> {
        self.states.get(id).and_then(|s| s.persisted.last_fired)
    }

    pub fn running(&self, id: &str) -> Option<&str> {
        self.states.get(id).and_then(|s| s.running.as_deref())
    }

    /// Drift triggers: the last window counted (of the version followed).
    pub fn last_window(&self, id: &str) -> Option<u64> {
        self.states
            .get(id)
            .map(|s| s.last_window)
            .filter(|w| *w > 0)
    }

    pub fn next_due(&self, id: &str) -> Option<DateTime<Utc>> {
        self.states.get(id).and_then(|s| s.next_due)
    }

    /// The action of a fired decision started, as firing `firing`.
    pub fn started(&mut self, id: &str, firing: &str) {
        if let Some(s) = self.states.get_mut(id) {
            s.running = Some(firing.to_string());
        }
    }

    /// The action of firing `firing` finished (either way).
    pub fn finished(&mut self, id: &str, firing: &str) {
        if let Some(s) = self.states.get_mut(id) {
            if s.running.as_deref() == Some(firing) {
                s.running = None;
            }
        }
    }

    /// Models (and pinned versions) that drift and metric triggers watch.
    pub fn watched_models(&self) -> Vec<(String, Option<u64>)> {
        let mut out: Vec<(String, Option<u64>)> = self
            .triggers
            .iter()
            .filter_map(|t| match &t.condition {
                Condition::Drift { model, version, .. }
                | Condition::Metric { model, version, .. } => Some((model.clone(), *version)),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Datasets (store, name) that new_data triggers watch.
    pub fn watched_datasets(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .triggers
            .iter()
            .filter_map(|t| match &t.condition {
                Condition::NewData { dataset, store } => Some((store.clone(), dataset.clone())),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Closed drift windows of `model` version `version`, oldest first (windows already seen are
    /// skipped, so the caller may pass its whole history).
    pub fn observe_drift(
        &mut self,
        model: &str,
        version: u64,
        reports: &[Arc<DriftReport>],
        now: DateTime<Utc>,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for t in &self.triggers {
            let Condition::Drift {
                model: m,
                version: pinned,
                windows,
                features,
            } = &t.condition
            else {
                continue;
            };
            if m != model || pinned.is_some_and(|p| p != version) {
                continue;
            }
            let Some(state) = self.states.get_mut(&t.id) else {
                continue;
            };
            follow_version(state, version);
            for report in reports {
                if report.window.index <= state.last_window {
                    continue;
                }
                state.last_window = report.window.index;
                let drifted: Vec<&str> = if features.is_empty() {
                    if report.dataset_drift.drift {
                        report
                            .columns
                            .iter()
                            .filter(|c| c.drift())
                            .map(|c| c.name.as_str())
                            .collect()
                    } else {
                        Vec::new()
                    }
                } else {
                    report
                        .columns
                        .iter()
                        .filter(|c| c.drift() && features.contains(&c.name))
                        .map(|c| c.name.as_str())
                        .collect()
                };
                if drifted.is_empty() {
                    state.last_clean_end_ms = Some(report.window.end_ms);
                    state.consecutive = 0;
                    state.in_episode = false;
                    state.windows_in_episode.clear();
                    continue;
                }
                state.consecutive += 1;
                state.windows_in_episode.push(json!({
                    "window": report.window.index,
                    "rows": report.window.rows,
                    "start_ms": report.window.start_ms,
                    "end_ms": report.window.end_ms,
                    "drift_share": report.dataset_drift.share,
                    "drifted": report.columns.iter().filter(|c| c.drift()).map(|c| json!({
                        "feature": c.name,
                        "method": c.test.as_ref().map(|t| t.method),
                        "score": c.test.as_ref().map(|t| t.score),
                        "threshold": c.test.as_ref().map(|t| t.threshold),
                    })).collect::<Vec<_>>(),
                }));
                // The reason names the last `windows` windows; older ones are not kept.
                if state.windows_in_episode.len() > *windows as usize {
                    state.windows_in_episode.remove(0);
                }
                if state.in_episode || state.consecutive < *windows {
                    continue;
                }
                state.in_episode = true;
                let first = (report.window.index + 1).saturating_sub(u64::from(*windows));
                let what = if features.is_empty() {
                    format!(
                        "dataset drift (share {:.2} of columns; drifted: {})",
                        report.dataset_drift.share,
                        drifted.join(", ")
                    )
                } else {
                    format!("drift on {}", drifted.join(", "))
                };
                let details = json!({
                    "model": model,
                    "version": version,
                    "windows": state.windows_in_episode,
                    // From the end of the last window without drift (or the first drifted
                    // window's start) to the end of this one.
                    "data_window_ms": [
                        state
                            .last_clean_end_ms
                            .map(|end| end + 1)
                            .or_else(|| state.windows_in_episode.first().and_then(|w| w["start_ms"].as_u64())),
                        report.window.end_ms,
                    ],
                });
                let reason = Reason {
                    kind: "drift".into(),
                    summary: format!(
                        "{model} version {version}: {what} in {windows} consecutive window{} ({first}..{})",
                        if *windows == 1 { "" } else { "s" },
                        report.window.index
                    ),
                    details,
                };
                decisions.push(decide(t, state, reason, now));
            }
        }
        decisions
    }

    /// The live metrics of `model` version `version`: the latest complete window of labels when
    /// there is one, else every label so far.
    pub fn observe_metrics(
        &mut self,
        model: &str,
        version: u64,
        metrics: &Metrics,
        now: DateTime<Utc>,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let values: BTreeMap<String, f64> = metrics.named().into_iter().collect();
        for t in &self.triggers {
            let Condition::Metric {
                model: m,
                version: pinned,
                metric,
                threshold,
                min_labels,
            } = &t.condition
            else {
                continue;
            };
            if m != model || pinned.is_some_and(|p| p != version) {
                continue;
            }
            let Some(state) = self.states.get_mut(&t.id) else {
                continue;
            };
            follow_version(state, version);
            let Some(&value) = values.get(metric) else {
                continue;
            };
            if metrics.labelled < *min_labels {
                // Too few labels to say anything: the episode neither starts nor ends.
                continue;
            }
            if !threshold.crossed(value) {
                state.in_episode = false;
                continue;
            }
            if state.in_episode {
                continue;
            }
            state.in_episode = true;
            let reason = Reason {
                kind: "metric".into(),
                summary: format!(
                    "{model} version {version}: live {metric} {value:.4} {} over {} labelled predictions",
                    match threshold {
                        Threshold::Below(t) => format!("below {t}"),
                        Threshold::Above(t) => format!("above {t}"),
                    },
                    metrics.labelled
                ),
                details: json!({
                    "model": model,
                    "version": version,
                    "metric": metric,
                    "value": value,
                    "threshold": threshold.to_string(),
                    "labelled": metrics.labelled,
                    "data_window_ms": [metrics.start_ms, metrics.end_ms],
                }),
            };
            decisions.push(decide(t, state, reason, now));
        }
        decisions
    }

    /// The newest version (sequence number and id) of `dataset` in the store at `store`. The
    /// first observation of a trigger that has never seen the dataset only sets its baseline.
    pub fn observe_dataset(
        &mut self,
        store: &str,
        dataset: &str,
        latest_seq: u64,
        latest_id: &str,
        now: DateTime<Utc>,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for t in &self.triggers {
            let Condition::NewData {
                dataset: d,
                store: s,
            } = &t.condition
            else {
                continue;
            };
            if d != dataset || s != store {
                continue;
            }
            let Some(state) = self.states.get_mut(&t.id) else {
                continue;
            };
            let Some(seen) = state.persisted.seen_seq else {
                state.persisted.seen_seq = Some(latest_seq);
                continue;
            };
            if latest_seq <= seen {
                continue;
            }
            state.persisted.seen_seq = Some(latest_seq);
            let reason = Reason {
                kind: "new_data".into(),
                summary: format!(
                    "new version {dataset}@{latest_seq} ({}) in {store} (previously seen: @{seen})",
                    &latest_id[..latest_id.len().min(12)]
                ),
                details: json!({
                    "dataset": dataset,
                    "store": store,
                    "seq": latest_seq,
                    "version": latest_id,
                    "previous_seq": seen,
                }),
            };
            decisions.push(decide(t, state, reason, now));
        }
        decisions
    }

    /// Schedule triggers whose next occurrence is due at `now`.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for t in &self.triggers {
            let Condition::Schedule { cron, timezone } = &t.condition else {
                continue;
            };
            let Some(state) = self.states.get_mut(&t.id) else {
                continue;
            };
            let Some(due) = state.next_due else {
                continue;
            };
            if now < due {
                continue;
            }
            // Occurrences missed while the process was busy or down collapse into this one.
            state.next_due = cron.next_after(now, *timezone);
            let reason = Reason {
                kind: "schedule".into(),
                summary: format!(
                    "schedule '{}' ({}) due at {}",
                    cron.text,
                    timezone.name(),
                    due.with_timezone(timezone).to_rfc3339()
                ),
                details: json!({
                    "cron": cron.text,
                    "timezone": timezone.name(),
                    "due": due.to_rfc3339(),
                }),
            };
            decisions.push(decide(t, state, reason, now));
        }
        decisions
    }

    /// A manual firing (`nereid triggers fire`): ignores the cooldown, but not a run in flight.
    pub fn fire_manually(&mut self, id: &str, now: DateTime<Utc>) -> Option<Decision> {
        let t = self.triggers.iter().find(|t| t.id == id)?;
        let state = self.states.get_mut(id)?;
        let reason = Reason {
            kind: "manual".into(),
            summary: "fired by hand".into(),
            details: json!({}),
        };
        let verdict = match &state.running {
            Some(firing) => {
                Verdict::Suppress(format!("firing {firing} of this trigger is still running"))
            }
            None => {
                state.persisted.last_fired = Some(now);
                Verdict::Fire
            }
        };
        Some(Decision {
            trigger: t.id.clone(),
            verdict,
            reason,
        })
    }
}

/// A drift/metric trigger that follows the serving version starts over on a new version.
fn follow_version(state: &mut State, version: u64) {
    if state.version != Some(version) {
        state.version = Some(version);
        state.last_window = 0;
        state.consecutive = 0;
        state.in_episode = false;
        state.windows_in_episode.clear();
        state.last_clean_end_ms = None;
    }
}

fn decide(t: &Trigger, state: &mut State, reason: Reason, now: DateTime<Utc>) -> Decision {
    let verdict = if let Some(firing) = &state.running {
        Verdict::Suppress(format!("firing {firing} of this trigger is still running"))
    } else if let Some(last) = state.persisted.last_fired.filter(|last| {
        now.signed_duration_since(*last)
            .to_std()
            .map_or(true, |since| since < t.cooldown)
    }) {
        Verdict::Suppress(format!(
            "cooldown: fired {} ago, cooldown {}",
            humantime::format_duration(round_secs(
                now.signed_duration_since(last).to_std().unwrap_or_default()
            )),
            humantime::format_duration(t.cooldown)
        ))
    } else {
        state.persisted.last_fired = Some(now);
        Verdict::Fire
    };
    Decision {
        trigger: t.id.clone(),
        verdict,
        reason,
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triggers::config::TriggersFile;
    use std::path::Path;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn engine(toml: &str, now: DateTime<Utc>) -> Engine {
        let file = TriggersFile::parse(toml, Path::new("t.toml")).expect("triggers");
        Engine::new(file.triggers, &BTreeMap::new(), now)
    }

    fn window(index: u64, drift: bool, feature_drift: &[(&str, bool)]) -> Arc<DriftReport> {
        let columns: Vec<serde_json::Value> = feature_drift
            .iter()
            .map(|(name, d)| {
                let check = json!({"count": 0, "share": 0.0, "expected_share": 0.0, "p_value": 1.0, "failed": false});
                json!({
                    "name": name, "role": "feature", "column_type": "numeric", "source": "INPUT",
                    "test": {"method": "ks", "score": if *d { 0.001 } else { 0.5 }, "threshold": 0.05, "drift": d,
                             "score_kind": "p_value"},
                    "method_description": "",
                    "quality": {"rows": 200, "missing": check, "wrong_type": check},
                    "histogram": {"reference": [], "current": []}
                })
            })
            .collect();
        let drifted = feature_drift.iter().filter(|(_, d)| *d).count();
        let report = json!({
            "model": "m", "version": 1,
            "window": {"index": index, "spec": "", "start_ms": index * 1000, "end_ms": index * 1000 + 999, "rows": 200, "rows_tested": 200},
            "reference": {"dataset_version": "x", "rows": 100},
            "columns": columns,
            "dataset_drift": {"drift": drift, "share": drifted as f64 / feature_drift.len().max(1) as f64,
                              "drifted": drifted, "columns": feature_drift.len(), "drift_share": 0.5},
            "quality_failures": 0
        });
        match serde_json::from_value(report.clone()) {
            Ok(r) => Arc::new(r),
            Err(e) => panic!("{e}: {report}"),
        }
    }

    const DRIFT: &str = r#"
[[trigger]]
id = "d"
on = "drift"
model = "m"
windows = 2
cooldown = "10m"
action = { kind = "pipeline", file = "p.toml" }
"#;

    #[test]
    fn drift_fires_once_per_episode_after_n_consecutive_windows() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut e = engine(DRIFT, t0);
        let yes = |i| window(i, true, &[("a", true), ("b", false)]);
        let no = |i| window(i, false, &[("a", false), ("b", false)]);
        assert!(e.observe_drift("m", 1, &[no(1), yes(2)], t0).is_empty());
        let d = e.observe_drift("m", 1, &[no(1), yes(2), yes(3)], t0);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].verdict, Verdict::Fire);
        assert!(
            d[0].reason.summary.contains("2 consecutive windows (2..3)"),
            "{}",
            d[0].reason.summary
        );
        assert_eq!(
            d[0].reason.details["windows"].as_array().map(Vec::len),
            Some(2)
        );
        // The episode goes on: no more firings, whatever the windows say.
        assert!(e
            .observe_drift("m", 1, &[yes(4), yes(5), yes(6)], t0)
            .is_empty());
        // Another model is someone else's business.
        assert!(e
            .observe_drift("other", 1, &[yes(1), yes(2)], t0)
            .is_empty());
        // The episode ends; a new one within the cooldown is suppressed, once.
        e.observe_drift("m", 1, &[no(7)], t0);
        let t1 = t0 + chrono::Duration::minutes(5);
        let d = e.observe_drift("m", 1, &[yes(8), yes(9), yes(10)], t1);
        assert_eq!(d.len(), 1);
        assert!(
            matches!(&d[0].verdict, Verdict::Suppress(why) if why.contains("cooldown")),
            "{d:?}"
        );
        // After the cooldown, a new episode fires.
        e.observe_drift("m", 1, &[no(11)], t1);
        let t2 = t0 + chrono::Duration::minutes(11);
        let d = e.observe_drift("m", 1, &[yes(12), yes(13)], t2);
        assert_eq!(d[0].verdict, Verdict::Fire);
        assert_eq!(e.last_fired("d"), Some(t2));
    }

    #[test]
    fn a_firing_while_its_run_is_going_is_suppressed_and_a_new_version_starts_over() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut e = engine(&DRIFT.replace("10m", "0s"), t0);
        let yes = |i| window(i, true, &[("a", true)]);
        let no = |i| window(i, false, &[("a", false)]);
        let d = e.observe_drift("m", 1, &[yes(1), yes(2)], t0);
        assert_eq!(d[0].verdict, Verdict::Fire);
        e.started("d", "f1");
        e.observe_drift("m", 1, &[no(3)], t0);
        let d = e.observe_drift("m", 1, &[yes(4), yes(5)], t0);
        assert!(
            matches!(&d[0].verdict, Verdict::Suppress(why) if why.contains("f1 of this trigger is still running"))
        );
        e.finished("d", "f1");
        // Version 2 is served: its window 1 is new, and two drifted windows fire again.
        assert!(e.observe_drift("m", 2, &[yes(1)], t0).is_empty());
        let d = e.observe_drift("m", 2, &[yes(1), yes(2)], t0);
        assert_eq!(d[0].verdict, Verdict::Fire);
    }

    #[test]
    fn feature_drift_needs_a_named_feature() {
        let t0 = at("2026-01-01T00:00:00Z");
        let toml = DRIFT.replace("windows = 2", "windows = 1\nfeatures = [\"b\"]");
        let mut e = engine(&toml, t0);
        // Dataset drift on other columns does not count.
        assert!(e
            .observe_drift("m", 1, &[window(1, true, &[("a", true), ("b", false)])], t0)
            .is_empty());
        let d = e.observe_drift(
            "m",
            1,
            &[window(2, false, &[("a", false), ("b", true)])],
            t0,
        );
        assert_eq!(d.len(), 1);
        assert!(
            d[0].reason.summary.contains("drift on b"),
            "{}",
            d[0].reason.summary
        );
    }

    fn metrics(accuracy: f64, labelled: u64) -> Metrics {
        serde_json::from_value(
            json!({"labelled": labelled, "start_ms": 0, "end_ms": 1, "accuracy": accuracy}),
        )
        .expect("metrics")
    }

    #[test]
    fn metric_fires_on_crossing_only_with_enough_labels() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut e = engine(
            r#"
[[trigger]]
id = "acc"
on = "metric"
model = "m"
metric = "accuracy"
below = 0.9
min_labels = 50
cooldown = "0s"
action = { kind = "pipeline", file = "p.toml" }
"#,
            t0,
        );
        assert!(
            e.observe_metrics("m", 1, &metrics(0.5, 49), t0).is_empty(),
            "too few labels"
        );
        assert!(e.observe_metrics("m", 1, &metrics(0.95, 60), t0).is_empty());
        let d = e.observe_metrics("m", 1, &metrics(0.8, 60), t0);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].reason
                .summary
                .contains("live accuracy 0.8000 below 0.9 over 60 labelled"),
            "{}",
            d[0].reason.summary
        );
        assert!(
            e.observe_metrics("m", 1, &metrics(0.7, 80), t0).is_empty(),
            "same episode"
        );
        e.observe_metrics("m", 1, &metrics(0.95, 90), t0);
        assert_eq!(e.observe_metrics("m", 1, &metrics(0.85, 95), t0).len(), 1);
    }

    #[test]
    fn schedule_fires_at_each_occurrence_on_a_controlled_clock() {
        let t0 = at("2026-03-28T23:30:00Z");
        let mut e = engine(
            r#"
[[trigger]]
id = "nightly"
on = "schedule"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
cooldown = "0s"
action = { kind = "pipeline", file = "p.toml" }
"#,
            t0,
        );
        // 03:00 Berlin on 2026-03-29 is after the switch to summer time (02:00 -> 03:00): 01:00Z.
        assert_eq!(e.next_due("nightly"), Some(at("2026-03-29T01:00:00Z")));
        assert!(e.tick(at("2026-03-29T00:59:59Z")).is_empty());
        let d = e.tick(at("2026-03-29T01:00:00Z"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].reason.kind, "schedule");
        assert!(e.tick(at("2026-03-29T01:00:30Z")).is_empty());
        assert_eq!(e.next_due("nightly"), Some(at("2026-03-30T01:00:00Z")));
        // Two missed occurrences fire once.
        assert_eq!(e.tick(at("2026-04-01T12:00:00Z")).len(), 1);
        assert_eq!(e.next_due("nightly"), Some(at("2026-04-02T01:00:00Z")));
    }

    #[test]
    fn new_data_sets_a_baseline_then_fires_per_new_version() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut e = engine(
            r#"
[[trigger]]
id = "n"
on = "new_data"
dataset = "iris"
store = "/s"
cooldown = "0s"
action = { kind = "pipeline", file = "p.toml" }
"#,
            t0,
        );
        assert_eq!(
            e.watched_datasets(),
            vec![("/s".to_string(), "iris".to_string())]
        );
        assert!(
            e.observe_dataset("/s", "iris", 3, "abc", t0).is_empty(),
            "baseline"
        );
        assert!(e.observe_dataset("/s", "iris", 3, "abc", t0).is_empty());
        let d = e.observe_dataset("/s", "iris", 4, "def", t0);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].reason.summary.contains("iris@4"),
            "{}",
            d[0].reason.summary
        );
        // A restart with the persisted state remembers what it saw.
        let file = TriggersFile::parse(
            "[[trigger]]\nid = \"n\"\non = \"new_data\"\ndataset = \"iris\"\nstore = \"/s\"\naction = { kind = \"pipeline\", file = \"p.toml\" }",
            Path::new("t.toml"),
        )
        .expect("file");
        let mut restarted = Engine::new(file.triggers, &e.persisted(), t0);
        assert!(restarted
            .observe_dataset("/s", "iris", 4, "def", t0)
            .is_empty());
        assert_eq!(restarted.last_fired("n"), Some(t0));
        // ...including its cooldown (10 minutes by default).
        let d =
            restarted.observe_dataset("/s", "iris", 5, "ghi", t0 + chrono::Duration::minutes(1));
        assert!(matches!(&d[0].verdict, Verdict::Suppress(_)));
    }

    #[test]
    fn manual_firing_ignores_the_cooldown_but_not_a_running_action() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut e = engine(DRIFT, t0);
        assert_eq!(
            e.fire_manually("d", t0).map(|d| d.verdict),
            Some(Verdict::Fire)
        );
        assert_eq!(
            e.fire_manually("d", t0).map(|d| d.verdict),
            Some(Verdict::Fire)
        );
        e.started("d", "f9");
        assert!(matches!(
            e.fire_manually("d", t0).map(|d| d.verdict),
            Some(Verdict::Suppress(_))
        ));
        assert!(e.fire_manually("nosuch", t0).is_none());
    }

    #[test]
    fn reloading_keeps_the_state_of_unchanged_triggers() {
        let t0 = at("2026-01-01T00:00:00Z");
        let mut e = engine(DRIFT, t0);
        let yes = |i| window(i, true, &[("a", true)]);
        e.observe_drift("m", 1, &[yes(1)], t0);
        let again = TriggersFile::parse(DRIFT, Path::new("t.toml")).expect("file");
        e.replace(again.triggers, &BTreeMap::new(), t0);
        // The count went on: window 2 completes the two.
        assert_eq!(e.observe_drift("m", 1, &[yes(2)], t0).len(), 1);
        let changed = TriggersFile::parse(
            &DRIFT.replace("windows = 2", "windows = 3"),
            Path::new("t.toml"),
        )
        .expect("file");
        e.replace(changed.triggers, &BTreeMap::new(), t0);
        assert!(e.observe_drift("m", 1, &[yes(3), yes(4)], t0).is_empty());
        assert_eq!(e.observe_drift("m", 1, &[yes(5)], t0).len(), 1);
    }
}
