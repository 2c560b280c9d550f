//! What a firing does: run a pipeline file in a child process, `POST` a webhook, or start an
//! Airflow DAG run. Blocking; the caller runs each action on a thread of its own (at low CPU
//! priority: a child process inherits its thread's niceness on Linux).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::config::Action;
use super::record::{Firing, Outcome};

/// What actions need from the process that runs them.
#[derive(Debug, Clone)]
pub struct ActionContext {
    /// The `nereid` executable, for `nereid pipeline run`.
    pub nereid: PathBuf,
    /// Working directory of pipeline runs (relative paths in pipeline files resolve from it).
    pub workdir: PathBuf,
    /// Where the firing's output is captured.
    pub log: PathBuf,
}

/// The JSON a webhook receives (and an Airflow DAG run's `conf`).
pub fn payload(firing: &Firing) -> Value {
    json!({
        "trigger": firing.trigger,
        "firing": firing.id,
        "time": firing.time.to_rfc3339(),
        "reason": firing.reason,
        "data_window_ms": firing.reason.details.get("data_window_ms"),
        "source": "nereid",
    })
}

/// Runs `action` for `firing` and says how it went.
pub fn run(action: &Action, firing: &Firing, ctx: &ActionContext) -> Outcome {
    match action {
        Action::Pipeline { file } => run_pipeline(file, firing, ctx),
        Action::Webhook {
            url,
            token_env,
            retries,
            retry_delay,
            timeout,
        } => {
            let auth = match bearer(token_env.as_deref()) {
                Ok(a) => a,
                Err(e) => return failed(e, 0, None),
            };
            post_with_retries(
                url,
                &payload(firing),
                auth,
                firing,
                *retries,
                *retry_delay,
                *timeout,
            )
            .into_outcome(|_| None)
        }
        Action::Airflow {
            url,
            dag_id,
            token_env,
            username_env,
            password_env,
            retries,
            retry_delay,
            timeout,
        } => {
            let auth = match (token_env, username_env, password_env) {
                (Some(_), _, _) => bearer(token_env.as_deref()),
                (None, Some(u), Some(p)) => {
                    env(u).and_then(|user| env(p).map(|password| Some(Auth::Basic(user, password))))
                }
                _ => Ok(None),
            };
            let auth = match auth {
                Ok(a) => a,
                Err(e) => return failed(e, 0, None),
            };
            let endpoint = format!("{url}/api/v2/dags/{dag_id}/dagRuns");
            // The run id is ours, so that a retried POST cannot start the DAG twice (Airflow
            // answers 409 for an id it already has, which counts as done).
            let body = json!({
                "dag_run_id": format!("nereid-{}", firing.id),
                "logical_date": null,
                "conf": payload(firing),
                "note": firing.reason.summary,
            });
            post_with_retries(
                &endpoint,
                &body,
                auth,
                firing,
                *retries,
                *retry_delay,
                *timeout,
            )
            .into_outcome(|reply| {
                reply
                    .get("dag_run_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| Some(format!("nereid-{}", firing.id)))
            })
        }
    }
}

fn failed(detail: String, attempts: u32, log: Option<PathBuf>) -> Outcome {
    Outcome {
        finished: Utc::now(),
        succeeded: false,
        detail,
        run_id: None,
        attempts,
        log,
    }
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
}

enum Auth {
    Bearer(String),
    Basic(String, String),
}

fn bearer(token_env: Option<&str>) -> Result<Option<Auth>, String> {
    token_env.map(env).transpose().map(|t| t.map(Auth::Bearer))
}

fn run_pipeline(file: &Path, firing: &Firing, ctx: &ActionContext) -> Outcome {
    let log = ctx.log.clone();
    let stderr = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => return failed(format!("cannot create {}: {e}", log.display()), 0, None),
    };
    let child = Command::new(&ctx.nereid)
        .arg("pipeline")
        .arg("run")
        .arg(file)
        .arg("--json")
        .current_dir(&ctx.workdir)
        .env("NEREID_TRIGGER", &firing.trigger)
        .env(crate::runner::TRIGGER_FIRING_ENV, &firing.id)
        .env(
            crate::runner::TRIGGER_SINCE_ENV,
            firing.reason.details["data_window_ms"][0]
                .as_u64()
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
        )
        .env("NEREID_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn();
    let output = match child.and_then(|c| c.wait_with_output()) {
        Ok(o) => o,
        Err(e) => {
            return failed(
                format!("could not run {} pipeline run: {e}", ctx.nereid.display()),
                1,
                Some(log),
            )
        }
    };
    // `--json` prints the run record, also for a failed run.
    let run: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    let run_id = run
        .as_ref()
        .and_then(|r| r.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let run_outcome = run
        .as_ref()
        .and_then(|r| r.get("outcome"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let succeeded = output.status.success();
    let detail = match (succeeded, run_outcome) {
        (_, Some(outcome)) => outcome,
        (true, None) => "the pipeline run succeeded".into(),
        (false, None) => format!(
            "nereid pipeline run exited with {} (see {})",
            output.status,
            log.display()
        ),
    };
    Outcome {
        finished: Utc::now(),
        succeeded,
        detail,
        run_id,
        attempts: 1,
        log: Some(log),
    }
}

struct Posted {
    result: Result<Value, String>,
    attempts: u32,
}

impl Posted {
    fn into_outcome(self, run_id: impl Fn(&Value) -> Option<String>) -> Outcome {
        match self.result {
            Ok(reply) => Outcome {
                finished: Utc::now(),
                succeeded: true,
                detail: "delivered".into(),
                run_id: run_id(&reply),
                attempts: self.attempts,
                log: None,
            },
            Err(e) => failed(e, self.attempts, None),
        }
    }
}

/// POSTs `body`; connection errors, timeouts, 429 and 5xx are retried `retries` times, other
/// answers are final. A 409 (the receiver already has this firing) counts as delivered.
fn post_with_retries(
    url: &str,
    body: &Value,
    auth: Option<Auth>,
    firing: &Firing,
    retries: u32,
    retry_delay: Duration,
    timeout: Duration,
) -> Posted {
    let client = match reqwest::blocking::Client::builder()
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return Posted {
                result: Err(format!("HTTP client: {e}")),
                attempts: 0,
            }
        }
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut request = client
            .post(url)
            .header("Idempotency-Key", &firing.id)
            .header("X-Nereid-Trigger", &firing.trigger)
            .json(body);
        request = match &auth {
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            Some(Auth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        };
        let (retry, error) = match request.send() {
            Ok(response) => {
                let status = response.status();
                let text = response.text().unwrap_or_default();
                if status.is_success() || status.as_u16() == 409 {
                    let reply = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Posted {
                        result: Ok(reply),
                        attempts,
                    };
                }
                let retry = status.is_server_error() || status.as_u16() == 429;
                let body: String = text.chars().take(300).collect();
                (retry, format!("POST {url} answered {status}: {body}"))
            }
            Err(e) => (true, format!("POST {url} failed: {e}")),
        };
        if !retry || attempts > retries {
            let tries = if attempts == 1 {
                String::new()
            } else {
                format!(" (after {attempts} attempts)")
            };
            return Posted {
                result: Err(format!("{error}{tries}")),
                attempts,
            };
        }
        thread::sleep(retry_delay);
    }
}
