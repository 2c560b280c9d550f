//! `triggers.toml`: what starts a retraining, and what it starts.
//!
//! ```toml
//! [[trigger]]
//! id = "iris-drift"
//! on = "drift"                 # drift | schedule | new_data | metric
//! model = "iris_classifier"
//! windows = 3                  # consecutive windows with dataset drift
//! # features = ["petal_length"]  # or: drift on any of these features
//! cooldown = "30m"
//! action = { kind = "pipeline", file = "iris.toml" }
//!
//! [[trigger]]
//! id = "nightly"
//! on = "schedule"
//! cron = "0 3 * * *"           # minute hour day month weekday (5 fields; 6 with seconds)
//! timezone = "Europe/Berlin"   # required: an IANA name, or "UTC"
//! action = { kind = "webhook", url = "https://ci.example.com/hooks/retrain", token_env = "HOOK_TOKEN" }
//!
//! [[trigger]]
//! id = "fresh-data"
//! on = "new_data"
//! dataset = "iris"
//! store = "feature-store"
//! action = { kind = "airflow", url = "http://airflow:8080", dag_id = "retrain_iris" }
//!
//! [[trigger]]
//! id = "accuracy-drop"
//! on = "metric"
//! model = "iris_classifier"
//! metric = "accuracy"          # accuracy | macro_f1 | mae | rmse | r2
//! below = 0.9                  # or above = ...
//! min_labels = 200
//! action = { kind = "pipeline", file = "iris.toml" }
//! ```
//!
//! Relative paths (pipeline files, local stores) are relative to the triggers file's folder.
//! Credentials come from environment variables the file names (`token_env`, `username_env`,
//! `password_env`); a file that holds a secret itself is refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::Deserialize;

use crate::util::is_safe_name;

/// Why a triggers file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// A parsed, checked triggers file.
#[derive(Debug, Clone)]
pub struct TriggersFile {
    pub path: PathBuf,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub id: String,
    pub condition: Condition,
    /// No firing within this long after the previous one (later episodes are suppressed).
    pub cooldown: Duration,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Drift in `windows` consecutive closed windows of the model's serving version (`version`
    /// pins one): dataset drift, or, with `features`, drift on any of them.
    Drift {
        model: String,
        version: Option<u64>,
        windows: u32,
        features: Vec<String>,
    },
    Schedule {
        cron: Box<CronSpec>,
        timezone: chrono_tz::Tz,
    },
    /// A version of `dataset` newer than the newest one seen appears in the feature store.
    NewData { dataset: String, store: String },
    /// A live metric of the model's serving version crosses `threshold`, with at least
    /// `min_labels` labelled predictions behind the value.
    Metric {
        model: String,
        version: Option<u64>,
        metric: String,
        threshold: Threshold,
        min_labels: u64,
    },
}

impl Condition {
    /// The kind's name, as written in the file (`on = ...`) and in metrics' `reason` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Condition::Drift { .. } => "drift",
            Condition::Schedule { .. } => "schedule",
            Condition::NewData { .. } => "new_data",
            Condition::Metric { .. } => "metric",
        }
    }

    /// The model this condition watches, if any.
    pub fn model(&self) -> Option<&str> {
        match self {
            Condition::Drift { model, .. } | Condition::Metric { model, .. } => Some(model),
            _ => None,
        }
    }
}

/// A cron expression, parsed; compared by its text.
#[derive(Debug, Clone)]
pub struct CronSpec {
    pub text: String,
    pub cron: Cron,
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl CronSpec {
    pub fn parse(text: &str) -> Result<CronSpec, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| format!("invalid cron expression '{text}': {e}"))?;
        Ok(CronSpec {
            text: text.to_string(),
            cron,
        })
    }

    /// The first occurrence strictly after `after`, in `timezone`.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
        timezone: chrono_tz::Tz,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let local = after.with_timezone(&timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Below(f64),
    Above(f64),
}

impl Threshold {
    pub fn crossed(self, value: f64) -> bool {
        match self {
            Threshold::Below(t) => value < t,
            Threshold::Above(t) => value > t,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Below(t) => write!(f, "< {t}"),
            Threshold::Above(t) => write!(f, "> {t}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `nereid pipeline run FILE` in a child process at low CPU priority.
    Pipeline { file: PathBuf },
    /// `POST url` with a JSON body saying what fired and why.
    Webhook {
        url: String,
        token_env: Option<String>,
        retries: u32,
        retry_delay: Duration,
        timeout: Duration,
    },
    /// `POST {url}/api/v2/dags/{dag_id}/dagRuns` (Airflow's stable REST API).
    Airflow {
        url: String,
        dag_id: String,
        token_env: Option<String>,
        username_env: Option<String>,
        password_env: Option<String>,
        retries: u32,
        retry_delay: Duration,
        timeout: Duration,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Pipeline { .. } => "pipeline",
            Action::Webhook { .. } => "webhook",
            Action::Airflow { .. } => "airflow",
        }
    }

    /// One line for listings.
    pub fn describe(&self) -> String {
        match self {
            Action::Pipeline { file } => format!("pipeline {}", file.display()),
            Action::Webhook { url, .. } => format!("webhook POST {url}"),
            Action::Airflow { url, dag_id, .. } => format!("airflow DAG {dag_id} at {url}"),
        }
    }
}

/// Metric names a `metric` trigger may watch (the live metrics of `nereid_monitor`).
pub const METRICS: [&str; 5] = ["accuracy", "macro_f1", "mae", "rmse", "r2"];

// The file as written; checked into `Trigger` by `TriggersFile::parse`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    trigger: Vec<RawTrigger>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    id: String,
    on: String,
    #[serde(default)]
    cooldown: Option<String>,
    action: RawAction,
    // drift, metric
    model: Option<String>,
    version: Option<u64>,
    // drift
    windows: Option<u32>,
    #[serde(default)]
    features: Vec<String>,
    // schedule
    cron: Option<String>,
    timezone: Option<String>,
    // new_data
    dataset: Option<String>,
    store: Option<String>,
    // metric
    metric: Option<String>,
    below: Option<f64>,
    above: Option<f64>,
    min_labels: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    kind: String,
    file: Option<String>,
    url: Option<String>,
    dag_id: Option<String>,
    token_env: Option<String>,
    username_env: Option<String>,
    password_env: Option<String>,
    retries: Option<u32>,
    retry_delay: Option<String>,
    timeout: Option<String>,
}

/// Default cooldown between firings of one trigger.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(600);

impl TriggersFile {
    pub fn load(path: &Path) -> Result<TriggersFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        TriggersFile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<TriggersFile, ConfigError> {
        let error = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut seen = BTreeSet::new();
        let mut triggers = Vec::with_capacity(raw.trigger.len());
        for t in raw.trigger {
            let id = t.id.clone();
            if !is_safe_name(&id) {
                return Err(error(format!(
                    "trigger id '{id}' must be 1-128 letters, digits, '_', '-' or '.'"
                )));
            }
            if !seen.insert(id.clone()) {
                return Err(error(format!("trigger id '{id}' appears twice")));
            }
            let trigger = check(t, base).map_err(|m| error(format!("trigger '{id}': {m}")))?;
            triggers.push(trigger);
        }
        Ok(TriggersFile {
            path: path.to_path_buf(),
            triggers,
        })
    }
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| format!("{field} '{t}' is not a duration like \"30s\" or \"10m\": {e}")),
    }
}

fn required<T>(value: Option<T>, field: &str, kind: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("a {kind} trigger needs `{field}`"))
}

impl RawTrigger {
    /// The kind-specific fields this trigger sets.
    fn set_fields(&self) -> Vec<&'static str> {
        [
            ("model", self.model.is_some()),
            ("version", self.version.is_some()),
            ("windows", self.windows.is_some()),
            ("features", !self.features.is_empty()),
            ("cron", self.cron.is_some()),
            ("timezone", self.timezone.is_some()),
            ("dataset", self.dataset.is_some()),
            ("store", self.store.is_some()),
            ("metric", self.metric.is_some()),
            ("below", self.below.is_some()),
            ("above", self.above.is_some()),
            ("min_labels", self.min_labels.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// The kind-specific fields each kind reads; any other is a mistake worth saying.
fn fields_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "drift" => &["model", "version", "windows", "features"],
        "schedule" => &["cron", "timezone"],
        "new_data" => &["dataset", "store"],
        "metric" => &["model", "version", "metric", "below", "above", "min_labels"],
        _ => &[],
    }
}

fn check(t: RawTrigger, base: &Path) -> Result<Trigger, String> {
    let kind = t.on.as_str();
    if let Some(field) = t
        .set_fields()
        .into_iter()
        .find(|f| !fields_of(kind).contains(f))
        .filter(|_| !fields_of(kind).is_empty())
    {
        return Err(format!("`{field}` does not apply to a {kind} trigger"));
    }
    let condition = match kind {
        "drift" => {
            let windows = t.windows.unwrap_or(1);
            if windows == 0 {
                return Err("`windows` must be at least 1".into());
            }
            Condition::Drift {
                model: required(t.model, "model", kind)?,
                version: t.version,
                windows,
                features: t.features,
            }
        }
        "schedule" => {
            let cron = Box::new(CronSpec::parse(&required(t.cron, "cron", kind)?)?);
            let zone = t.timezone.ok_or(
                "a schedule trigger needs `timezone` (an IANA name such as \"Europe/Berlin\", or \"UTC\"): cron times mean nothing without one",
            )?;
            let timezone = chrono_tz::Tz::from_str(&zone)
                .map_err(|_| format!("unknown time zone '{zone}' (use an IANA name such as \"America/New_York\", or \"UTC\")"))?;
            Condition::Schedule { cron, timezone }
        }
        "new_data" => {
            let store = t.store.unwrap_or_else(|| "feature-store".into());
            Condition::NewData {
                dataset: required(t.dataset, "dataset", kind)?,
                store: relative_location(&store, base),
            }
        }
        "metric" => {
            let metric = required(t.metric, "metric", kind)?;
            if !METRICS.contains(&metric.as_str()) {
                return Err(format!(
                    "unknown metric '{metric}' (one of {})",
                    METRICS.join(", ")
                ));
            }
            let threshold = match (t.below, t.above) {
                (Some(b), None) if b.is_finite() => Threshold::Below(b),
                (None, Some(a)) if a.is_finite() => Threshold::Above(a),
                (Some(_), Some(_)) => return Err("give `below` or `above`, not both".into()),
                (None, None) => {
                    return Err("a metric trigger needs `below` or `above` (a threshold)".into())
                }
                _ => return Err("the threshold must be a finite number".into()),
            };
            Condition::Metric {
                model: required(t.model, "model", kind)?,
                version: t.version,
                metric,
                threshold,
                min_labels: t.min_labels.unwrap_or(100),
            }
        }
        other => {
            return Err(format!(
                "unknown kind on = \"{other}\" (one of drift, schedule, new_data, metric)"
            ))
        }
    };
    let cooldown = duration("cooldown", t.cooldown.as_deref(), DEFAULT_COOLDOWN)?;
    Ok(Trigger {
        id: t.id,
        condition,
        cooldown,
        action: check_action(t.action, base)?,
    })
}

fn check_action(a: RawAction, base: &Path) -> Result<Action, String> {
    let retries = a.retries.unwrap_or(3);
    let retry_delay = duration(
        "retry_delay",
        a.retry_delay.as_deref(),
        Duration::from_secs(2),
    )?;
    let timeout = duration("timeout", a.timeout.as_deref(), Duration::from_secs(30))?;
    let http_url = |url: Option<String>, kind: &str| -> Result<String, String> {
        let url = url.ok_or_else(|| format!("a {kind} action needs `url`"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{kind} url '{url}' must start with http:// or https://"
            ));
        }
        if url.contains('@') {
            return Err(format!(
                "{kind} url must not hold credentials: name environment variables with token_env (or username_env/password_env)"
            ));
        }
        Ok(url.trim_end_matches('/').to_string())
    };
    let not_for = |kind: &str, fields: &[(&str, bool)]| -> Result<(), String> {
        match fields.iter().find(|(_, present)| *present) {
            Some((name, _)) => Err(format!("`{name}` does not apply to a {kind} action")),
            None => Ok(()),
        }
    };
    match a.kind.as_str() {
        "pipeline" => {
            not_for(
                "pipeline",
                &[
                    ("url", a.url.is_some()),
                    ("dag_id", a.dag_id.is_some()),
                    ("token_env", a.token_env.is_some()),
                    ("username_env", a.username_env.is_some()),
                    ("password_env", a.password_env.is_some()),
                ],
            )?;
            let file = a
                .file
                .ok_or("a pipeline action needs `file` (a pipeline TOML file)")?;
            Ok(Action::Pipeline {
                file: base.join(file),
            })
        }
        "webhook" => {
            not_for(
                "webhook",
                &[
                    ("file", a.file.is_some()),
                    ("dag_id", a.dag_id.is_some()),
                    ("username_env", a.username_env.is_some()),
                    ("password_env", a.password_env.is_some()),
                ],
            )?;
            Ok(Action::Webhook {
                url: http_url(a.url, "webhook")?,
                token_env: a.token_env,
                retries,
                retry_delay,
                timeout,
            })
        }
        "airflow" => {
            not_for("airflow", &[("file", a.file.is_some())])?;
            let dag_id = a.dag_id.ok_or("an airflow action needs `dag_id`")?;
            if a.token_env.is_some() && (a.username_env.is_some() || a.password_env.is_some()) {
                return Err(
                    "give token_env (a bearer token) or username_env and password_env (basic auth), not both"
                        .into(),
                );
            }
            if a.username_env.is_some() != a.password_env.is_some() {
                return Err("username_env and password_env go together".into());
            }
            Ok(Action::Airflow {
                url: http_url(a.url, "airflow")?,
                dag_id,
                token_env: a.token_env,
                username_env: a.username_env,
                password_env: a.password_env,
                retries,
                retry_delay,
                timeout,
            })
        }
        other => Err(format!(
            "unknown action kind \"{other}\" (one of pipeline, webhook, airflow)"
        )),
    }
}

/// A store location from the file: URLs as they are, local paths relative to the file's folder.
fn relative_location(location: &str, base: &Path) -> String {
    if location.contains("://") || Path::new(location).is_absolute() {
        location.to_string()
    } else {
        base.join(location).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TriggersFile, ConfigError> {
        TriggersFile::parse(text, Path::new("/etc/nereid/triggers.toml"))
    }

    #[test]
    fn every_kind_parses_with_defaults() {
        let file = parse(
            r#"
[[trigger]]
id = "d"
on = "drift"
model = "iris"
windows = 3
action = { kind = "pipeline", file = "iris.toml" }

[[trigger]]
id = "s"
on = "schedule"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
cooldown = "1h"
action = { kind = "webhook", url = "http://127.0.0.1:9/hook/", token_env = "HOOK_TOKEN" }

[[trigger]]
id = "n"
on = "new_data"
dataset = "iris"
action = { kind = "airflow", url = "http://airflow:8080", dag_id = "retrain", username_env = "U", password_env = "P" }

[[trigger]]
id = "m"
on = "metric"
model = "iris"
metric = "accuracy"
below = 0.9
min_labels = 50
action = { kind = "pipeline", file = "/abs/p.toml" }
"#,
        )
        .expect("parses");
        let t = &file.triggers;
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0].condition,
            Condition::Drift {
                model: "iris".into(),
                version: None,
                windows: 3,
                features: vec![]
            }
        );
        assert_eq!(t[0].cooldown, DEFAULT_COOLDOWN);
        assert_eq!(
            t[0].action,
            Action::Pipeline {
                file: PathBuf::from("/etc/nereid/iris.toml")
            }
        );
        assert_eq!(t[1].cooldown, Duration::from_secs(3600));
        match &t[1].action {
            Action::Webhook { url, retries, .. } => {
                assert_eq!(url, "http://127.0.0.1:9/hook");
                assert_eq!(*retries, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t[2].condition,
            Condition::NewData {
                dataset: "iris".into(),
                store: "/etc/nereid/feature-store".into()
            }
        );
        match &t[3].condition {
            Condition::Metric {
                threshold,
                min_labels,
                ..
            } => {
                assert_eq!(*threshold, Threshold::Below(0.9));
                assert_eq!(*min_labels, 50);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t[3].action,
            Action::Pipeline {
                file: PathBuf::from("/abs/p.toml")
            }
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_reason() {
        let cases = [
            ("[[trigger]]\nid = \"a\"\non = \"drift\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "needs `model`"),
            ("[[trigger]]\nid = \"a\"\non = \"schedule\"\ncron = \"0 3 * * *\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "needs `timezone`"),
            ("[[trigger]]\nid = \"a\"\non = \"schedule\"\ncron = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "unknown time zone 'Mars/Olympus'"),
            ("[[trigger]]\nid = \"a\"\non = \"schedule\"\ncron = \"61 3 * * *\"\ntimezone = \"UTC\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "invalid cron expression '61 3 * * *'"),
            ("[[trigger]]\nid = \"a\"\non = \"metric\"\nmodel = \"m\"\nmetric = \"accuracy\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "needs `below` or `above`"),
            ("[[trigger]]\nid = \"a\"\non = \"metric\"\nmodel = \"m\"\nmetric = \"auc\"\nbelow = 1\naction = { kind = \"pipeline\", file = \"p.toml\" }", "unknown metric 'auc'"),
            ("[[trigger]]\nid = \"a\"\non = \"drift\"\nmodel = \"m\"\ncron = \"* * * * *\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "`cron` does not apply to a drift trigger"),
            ("[[trigger]]\nid = \"a\"\non = \"rain\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "unknown kind on = \"rain\""),
            ("[[trigger]]\nid = \"a\"\non = \"new_data\"\ndataset = \"d\"\naction = { kind = \"webhook\", url = \"http://user:secret@host/x\" }", "must not hold credentials"),
            ("[[trigger]]\nid = \"a\"\non = \"new_data\"\ndataset = \"d\"\naction = { kind = \"webhook\", url = \"http://h/x\", password = \"p\" }", "unknown field `password`"),
            ("[[trigger]]\nid = \"a\"\non = \"new_data\"\ndataset = \"d\"\ncooldown = \"soon\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "cooldown 'soon' is not a duration"),
            ("[[trigger]]\nid = \"a b\"\non = \"new_data\"\ndataset = \"d\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "trigger id 'a b'"),
            ("[[trigger]]\nid = \"a\"\non = \"new_data\"\ndataset = \"d\"\naction = { kind = \"pipeline\", file = \"p.toml\" }\n[[trigger]]\nid = \"a\"\non = \"new_data\"\ndataset = \"d\"\naction = { kind = \"pipeline\", file = \"p.toml\" }", "appears twice"),
            ("[[trigger]]\nid = \"a\"\non = \"new_data\"\ndataset = \"d\"\naction = { kind = \"airflow\", url = \"http://h\", dag_id = \"x\", username_env = \"U\" }", "go together"),
        ];
        for (text, expected) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}\n=> {err}");
            assert!(err.starts_with("/etc/nereid/triggers.toml: "), "{err}");
        }
    }

    #[test]
    fn cron_occurrences_follow_the_time_zone() {
        let spec = CronSpec::parse("0 3 * * *").expect("cron");
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().expect("zone");
        let now = chrono::DateTime::parse_from_rfc3339("2026-07-01T12:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        // 03:00 in Berlin in summer is 01:00 UTC.
        let next = spec.next_after(now, berlin).expect("next");
        assert_eq!(next.to_rfc3339(), "2026-07-02T01:00:00+00:00");
        let next = spec.next_after(now, chrono_tz::UTC).expect("next");
        assert_eq!(next.to_rfc3339(), "2026-07-02T03:00:00+00:00");
    }
}
