//! The trace extension (`GET|POST /v2/trace/setting`, `.../models/{m}/trace/setting`, gRPC
//! `TraceSetting`, `--trace-config`): samples requests and writes their timestamps in Triton's
//! trace file format.
//!
//! Settings are Triton's: `trace_level` (`OFF` or `TIMESTAMPS`; `TENSORS` is refused, this server
//! does not record tensors), `trace_rate` (one request in N is traced), `trace_count` (traces
//! left to take, -1 without limit), `log_frequency` (write every N traces to
//! `<trace_file>.<index>`; 0 writes all of them to `<trace_file>` at shutdown) and `trace_file`
//! (set only by `--trace-config triton,file=PATH`, never over the network, as in Triton). A model
//! may override the level, rate, count and log frequency; `null` (or no values over gRPC)
//! returns a setting to the global value. When the count runs out, the traces taken so far are
//! written to the next indexed file at once.
//!
//! A trace is two JSON objects, as Triton writes them: `{"id", "model_name", "model_version",
//! "request_id"?, "parent_id"}` and `{"id", "timestamps": [{"name", "ns"}, ...]}` with
//! `REQUEST_START`, `QUEUE_START`, `COMPUTE_START`, `COMPUTE_INPUT_END`, `COMPUTE_OUTPUT_START`,
//! `COMPUTE_END` and `REQUEST_END` in nanoseconds since the Unix epoch (a request answered from
//! the response cache, or by an ensemble, has only the first and last).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nereid_protocol::Error;
use serde_json::{json, Value};

/// One set of settings (the global one, or a model's with its overrides applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    pub timestamps: bool,
    pub rate: u32,
    pub count: i32,
    pub log_frequency: u32,
    pub file: String,
}

impl Default for TraceSettings {
    /// Triton's defaults.
    fn default() -> Self {
        TraceSettings {
            timestamps: false,
            rate: 1000,
            count: -1,
            log_frequency: 0,
            file: String::new(),
        }
    }
}

/// A requested change: `Some(None)` returns a model's setting to the global value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceUpdate {
    pub timestamps: Option<Option<bool>>,
    pub rate: Option<Option<u32>>,
    pub count: Option<Option<i32>>,
    pub log_frequency: Option<Option<u32>>,
    pub file: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Overrides {
    timestamps: Option<bool>,
    rate: Option<u32>,
    count: Option<i32>,
    log_frequency: Option<u32>,
}

/// Sampling and output of one setting (the global one or a model's own).
#[derive(Debug, Default)]
struct Sampler {
    seen: u64,
    taken: Vec<Value>,
}

#[derive(Debug, Default)]
struct State {
    global: TraceSettings,
    models: HashMap<String, Overrides>,
    samplers: HashMap<Option<String>, Sampler>,
    /// The next index of each trace file, shared by every setting that writes to it.
    next_index: HashMap<String, u64>,
}

impl State {
    fn indexed_file(&mut self, file: &str) -> String {
        let index = self.next_index.entry(file.to_string()).or_default();
        let path = format!("{file}.{index}");
        *index += 1;
        path
    }
}

/// The server's tracer.
#[derive(Debug, Default)]
pub struct Tracer {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Whether any setting traces at all: requests skip the lock while none does.
    active: AtomicBool,
}

/// A request being traced.
#[derive(Debug)]
pub struct Trace {
    id: u64,
    /// The setting it was sampled under (`None`: the global one).
    owner: Option<String>,
    started: Instant,
    wall: SystemTime,
}

/// When a traced request's phases happened, as offsets from its start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub queue_start: Duration,
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

impl Tracer {
    pub fn new(global: TraceSettings) -> Self {
        let state = State {
            global,
            ..State::default()
        };
        let active = AtomicBool::new(Self::any_active(&state));
        Tracer {
            state: Mutex::new(state),
            next_id: AtomicU64::new(1),
            active,
        }
    }

    /// Whether the global setting or any model's traces (a file is set, the level is
    /// TIMESTAMPS and the count is not spent).
    fn any_active(state: &State) -> bool {
        let traces = |s: &TraceSettings| s.timestamps && s.count != 0 && !s.file.is_empty();
        traces(&state.global)
            || state
                .models
                .keys()
                .any(|m| traces(&Self::effective(state, Some(m)).0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn effective(state: &State, model: Option<&str>) -> (TraceSettings, Option<String>) {
        let mut settings = state.global.clone();
        let overrides = model.and_then(|m| state.models.get(m).map(|o| (m, o)));
        let Some((name, o)) = overrides else {
            return (settings, None);
        };
        settings.timestamps = o.timestamps.unwrap_or(settings.timestamps);
        settings.rate = o.rate.unwrap_or(settings.rate);
        settings.count = o.count.unwrap_or(settings.count);
        settings.log_frequency = o.log_frequency.unwrap_or(settings.log_frequency);
        (settings, Some(name.to_string()))
    }

    /// The settings that apply to `model` (the global ones for `None`).
    pub fn settings(&self, model: Option<&str>) -> TraceSettings {
        Self::effective(&self.lock(), model).0
    }

    /// Applies `update` to the global settings or to `model`'s, all or nothing.
    pub fn update(
        &self,
        model: Option<&str>,
        update: &TraceUpdate,
    ) -> Result<TraceSettings, Error> {
        if update.file.is_some() {
            return Err(Error::unsupported(
                "trace file location can not be updated through network protocol",
            ));
        }
        let mut state = self.lock();
        let turning_on = update.timestamps.flatten() == Some(true);
        if turning_on && state.global.file.is_empty() {
            return Err(Error::invalid_arg(
                "trace file is not set: start the server with --trace-config triton,file=PATH",
            ));
        }
        match model {
            None => {
                let g = &mut state.global;
                if let Some(Some(v)) = update.timestamps {
                    g.timestamps = v;
                }
                if let Some(Some(v)) = update.rate {
                    g.rate = v;
                }
                if let Some(Some(v)) = update.count {
                    g.count = v;
                }
                if let Some(Some(v)) = update.log_frequency {
                    g.log_frequency = v;
                }
            }
            Some(model) => {
                let o = state.models.entry(model.to_string()).or_default();
                if let Some(v) = update.timestamps {
                    o.timestamps = v;
                }
                if let Some(v) = update.rate {
                    o.rate = v;
                }
                if let Some(v) = update.count {
                    o.count = v;
                }
                if let Some(v) = update.log_frequency {
                    o.log_frequency = v;
                }
            }
        }
        self.active
            .store(Self::any_active(&state), Ordering::Relaxed);
        Ok(Self::effective(&state, model).0)
    }

    /// Whether to trace a request to `model` now; counts it towards the rate either way.
    pub fn sample(&self, model: &str) -> Option<Trace> {
        if !self.active.load(Ordering::Relaxed) {
            return None;
        }
        let mut state = self.lock();
        let (settings, owner) = Self::effective(&state, Some(model));
        if !settings.timestamps || settings.count == 0 || settings.file.is_empty() {
            return None;
        }
        let sampler = state.samplers.entry(owner.clone()).or_default();
        sampler.seen += 1;
        if sampler.seen % u64::from(settings.rate.max(1)) != 0 {
            return None;
        }
        if settings.count > 0 {
            let left = settings.count - 1;
            match &owner {
                None => state.global.count = left,
                Some(m) => {
                    if let Some(o) = state.models.get_mut(m) {
                        o.count = Some(left);
                    }
                }
            }
            if left == 0 {
                self.active
                    .store(Self::any_active(&state), Ordering::Relaxed);
            }
        }
        Some(Trace {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            owner,
            started: Instant::now(),
            wall: SystemTime::now(),
        })
    }

    /// Records a finished trace, and writes a file when one is due.
    pub fn finish(
        &self,
        trace: Trace,
        model: &str,
        version: u64,
        request_id: &str,
        phases: Option<Phases>,
    ) {
        let ended = trace.started.elapsed();
        let ns = |offset: Duration| {
            (trace.wall + offset)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        let mut stamps = vec![("REQUEST_START", Duration::ZERO)];
        if let Some(p) = phases {
            let compute_start = p.queue_start + p.queue;
            let input_end = compute_start + p.compute_input;
            let output_start = input_end + p.compute_infer;
            stamps.extend([
                ("QUEUE_START", p.queue_start),
                ("COMPUTE_START", compute_start),
                ("COMPUTE_INPUT_END", input_end),
                ("COMPUTE_OUTPUT_START", output_start),
                ("COMPUTE_END", output_start + p.compute_output),
            ]);
        }
        stamps.push(("REQUEST_END", ended));
        let mut header = json!({"id": trace.id, "model_name": model, "model_version": version,
                                "parent_id": 0});
        if !request_id.is_empty() {
            header["request_id"] = json!(request_id);
        }
        let timestamps: Vec<Value> = stamps
            .iter()
            .map(|(name, at)| json!({"name": name, "ns": ns(*at)}))
            .collect();
        let body = json!({"id": trace.id, "timestamps": timestamps});

        let mut state = self.lock();
        let (settings, _) = Self::effective(&state, trace.owner.as_deref());
        let sampler = state.samplers.entry(trace.owner.clone()).or_default();
        sampler.taken.push(header);
        sampler.taken.push(body);
        let due = (settings.log_frequency > 0
            && sampler.taken.len() as u64 >= 2 * u64::from(settings.log_frequency))
            || settings.count == 0;
        if due {
            let traces = std::mem::take(&mut sampler.taken);
            let path = state.indexed_file(&settings.file);
            drop(state);
            write_traces(PathBuf::from(path), &traces);
        }
    }

    /// Writes the traces not written yet (at shutdown): to `<trace_file>` when the log frequency
    /// is 0, else to the next indexed file.
    pub fn flush(&self) {
        let mut state = self.lock();
        let owners: Vec<Option<String>> = state.samplers.keys().cloned().collect();
        let mut writes = Vec::new();
        for owner in owners {
            let (settings, _) = Self::effective(&state, owner.as_deref());
            let Some(sampler) = state.samplers.get_mut(&owner) else {
                continue;
            };
            if sampler.taken.is_empty() || settings.file.is_empty() {
                continue;
            }
            let traces = std::mem::take(&mut sampler.taken);
            let path = if settings.log_frequency == 0 {
                settings.file.clone()
            } else {
                state.indexed_file(&settings.file)
            };
            writes.push((PathBuf::from(path), traces));
        }
        drop(state);
        for (path, traces) in writes {
            write_traces(path, &traces);
        }
    }
}

fn write_traces(path: PathBuf, traces: &[Value]) {
    let text = Value::Array(traces.to_vec()).to_string();
    if let Err(err) = std::fs::write(&path, text) {
        tracing::warn!(path = %path.display(), %err, "failed to write a trace file");
    }
}

/// Parses one of Triton's `--trace-config` values into `settings`: `triton,file=PATH`,
/// `triton,log-frequency=N`, `level=OFF|TIMESTAMPS`, `rate=N`, `count=N`, `mode=triton`.
pub fn apply_trace_config(settings: &mut TraceSettings, value: &str) -> Result<(), String> {
    let setting = match value.split_once(',') {
        Some(("triton", rest)) => rest,
        Some((mode, _)) => {
            return Err(format!(
                "trace mode '{mode}' is not available; this server writes Triton's trace files (mode triton)"
            ))
        }
        None => value,
    };
    let (key, v) = setting
        .split_once('=')
        .ok_or_else(|| format!("--trace-config '{value}' is not [triton,]<key>=<value>"))?;
    let number = |v: &str| -> Result<i64, String> {
        v.parse::<i64>()
            .map_err(|_| format!("--trace-config {key}: '{v}' is not a number"))
    };
    match key {
        "file" => settings.file = v.to_string(),
        "log-frequency" => {
            settings.log_frequency = u32::try_from(number(v)?)
                .map_err(|_| format!("--trace-config log-frequency: '{v}' is out of range"))?
        }
        "rate" => {
            settings.rate = u32::try_from(number(v)?)
                .ok()
                .filter(|r| *r > 0)
                .ok_or_else(|| format!("--trace-config rate: '{v}' must be at least 1"))?
        }
        "count" => {
            settings.count = i32::try_from(number(v)?)
                .ok()
                .filter(|c| *c >= -1)
                .ok_or_else(|| format!("--trace-config count: '{v}' must be -1 or more"))?
        }
        "level" => {
            settings.timestamps = match v {
                "OFF" => false,
                "TIMESTAMPS" => true,
                "TENSORS" => return Err(TENSORS_REFUSED.to_string()),
                other => return Err(format!("--trace-config level: unknown level '{other}'")),
            }
        }
        "mode" if v == "triton" => {}
        _ => return Err(format!("--trace-config: unknown setting '{key}'")),
    }
    Ok(())
}

/// Why `TENSORS` is refused.
pub const TENSORS_REFUSED: &str =
    "trace level 'TENSORS' is not supported by this server (it traces TIMESTAMPS)";

/// Parses a trace level list as both protocols send it.
pub fn parse_levels(levels: &[String]) -> Result<bool, Error> {
    match levels {
        [only] if only == "OFF" => Ok(false),
        _ if levels.iter().any(|l| l == "OFF") => Err(Error::invalid_arg(
            "Expect only one trace level 'OFF' is specified",
        )),
        _ if levels.iter().any(|l| l == "TENSORS") => Err(Error::invalid_arg(TENSORS_REFUSED)),
        _ if levels.iter().all(|l| l == "TIMESTAMPS") && !levels.is_empty() => Ok(true),
        _ => Err(Error::invalid_arg(format!(
            "unknown trace level in {levels:?}: expected OFF or TIMESTAMPS"
        ))),
    }
}

/// Parses a numeric setting sent as a string, with Triton's message.
pub fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| Error::invalid_arg(format!("Unable to parse '{name}', got: {value}")))
}

/// Builds an update from the settings as both protocols send them: `value(name)` gives a
/// setting's string (`Some(Some)`), its clearing (`Some(None)`) or its absence (`None`), and
/// `levels` the trace level list the same way. Numbers are checked against Triton's ranges.
pub fn update_from(
    value: impl Fn(&str) -> Result<Option<Option<String>>, Error>,
    levels: Option<Option<Vec<String>>>,
) -> Result<TraceUpdate, Error> {
    let ranged = |name: &str, low: i64, high: i64| -> Result<Option<Option<i64>>, Error> {
        let parsed = value(name)?
            .map(|v| v.map(|v| parse_number::<i64>(name, &v)).transpose())
            .transpose()?;
        if let Some(Some(v)) = parsed {
            if v < low || v > high {
                return Err(Error::invalid_arg(format!(
                    "Unable to parse '{name}', value is out of range [ {low}, {high} ], got: {v}"
                )));
            }
        }
        Ok(parsed)
    };
    // In range by the checks above.
    let unsigned = |v: Option<Option<i64>>| v.map(|v| v.map(|v| v as u32));
    Ok(TraceUpdate {
        timestamps: match levels {
            None => None,
            Some(None) => Some(None),
            Some(Some(levels)) => Some(Some(parse_levels(&levels)?)),
        },
        rate: unsigned(ranged("trace_rate", 1, i64::from(u32::MAX))?),
        count: ranged("trace_count", -1, i64::from(i32::MAX))?.map(|v| v.map(|v| v as i32)),
        log_frequency: unsigned(ranged("log_frequency", 0, i64::from(u32::MAX))?),
        file: value("trace_file")?.flatten(),
    })
}

/// The settings as both protocols report them: name -> list of strings.
pub fn report(settings: &TraceSettings) -> Vec<(&'static str, Vec<String>)> {
    vec![
        (
            "trace_level",
            vec![if settings.timestamps {
                "TIMESTAMPS"
            } else {
                "OFF"
            }
            .to_string()],
        ),
        ("trace_rate", vec![settings.rate.to_string()]),
        ("trace_count", vec![settings.count.to_string()]),
        ("log_frequency", vec![settings.log_frequency.to_string()]),
        ("trace_file", vec![settings.file.clone()]),
        ("trace_mode", vec!["triton".to_string()]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traced(tracer: &Tracer, model: &str, n: usize) -> usize {
        (0..n)
            .filter_map(|_| tracer.sample(model))
            .map(|t| tracer.finish(t, model, 1, "", Some(Phases::default())))
            .count()
    }

    #[test]
    fn samples_at_the_rate_until_the_count_runs_out_and_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trace.json").display().to_string();
        let mut settings = TraceSettings::default();
        for config in [
            format!("triton,file={file}"),
            "level=TIMESTAMPS".to_string(),
            "rate=2".to_string(),
            "count=3".to_string(),
        ] {
            apply_trace_config(&mut settings, &config).unwrap();
        }
        let tracer = Tracer::new(settings);
        assert_eq!(traced(&tracer, "m", 10), 3, "every 2nd, 3 at most");
        assert_eq!(tracer.settings(None).count, 0);
        // The count ran out: written to the first indexed file at once.
        let written: Value =
            serde_json::from_slice(&std::fs::read(format!("{file}.0")).unwrap()).unwrap();
        let entries = written.as_array().unwrap();
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[0]["model_name"], "m");
        let names: Vec<&str> = entries[1]["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "REQUEST_START",
                "QUEUE_START",
                "COMPUTE_START",
                "COMPUTE_INPUT_END",
                "COMPUTE_OUTPUT_START",
                "COMPUTE_END",
                "REQUEST_END"
            ]
        );

        // A model's own settings, then back to the global ones.
        let update = TraceUpdate {
            rate: Some(Some(1)),
            count: Some(Some(-1)),
            log_frequency: Some(Some(2)),
            ..TraceUpdate::default()
        };
        assert_eq!(tracer.update(Some("m"), &update).unwrap().rate, 1);
        assert_eq!(traced(&tracer, "m", 5), 5);
        assert!(std::path::Path::new(&format!("{file}.1")).exists());
        assert!(std::path::Path::new(&format!("{file}.2")).exists());
        tracer.flush();
        assert!(
            std::path::Path::new(&format!("{file}.3")).exists(),
            "the 5th"
        );
        assert_eq!(traced(&tracer, "other", 4), 0, "the global count is spent");
        let cleared = TraceUpdate {
            rate: Some(None),
            ..TraceUpdate::default()
        };
        assert_eq!(tracer.update(Some("m"), &cleared).unwrap().rate, 2);

        let err = tracer
            .update(
                None,
                &TraceUpdate {
                    file: Some("/x".into()),
                    ..TraceUpdate::default()
                },
            )
            .unwrap_err();
        assert_eq!(
            err.message,
            "trace file location can not be updated through network protocol"
        );
    }

    #[test]
    fn levels_and_flags_are_tritons() {
        let levels =
            |l: &[&str]| parse_levels(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(levels(&["OFF"]), Ok(false));
        assert_eq!(levels(&["TIMESTAMPS"]), Ok(true));
        assert_eq!(
            levels(&["OFF", "TIMESTAMPS"]).unwrap_err().message,
            "Expect only one trace level 'OFF' is specified"
        );
        assert_eq!(levels(&["TENSORS"]).unwrap_err().message, TENSORS_REFUSED);
        let mut s = TraceSettings::default();
        assert!(apply_trace_config(&mut s, "opentelemetry,url=x").is_err());
        assert!(apply_trace_config(&mut s, "rate=0").is_err());
        assert!(apply_trace_config(&mut s, "level=TENSORS").is_err());
        apply_trace_config(&mut s, "triton,log-frequency=50").unwrap();
        assert_eq!(s.log_frequency, 50);
        let tracer = Tracer::new(TraceSettings::default());
        let on = TraceUpdate {
            timestamps: Some(Some(true)),
            ..TraceUpdate::default()
        };
        assert!(tracer
            .update(None, &on)
            .unwrap_err()
            .message
            .contains("trace file is not set"));
    }
}
