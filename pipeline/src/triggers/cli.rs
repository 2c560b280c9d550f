//! `nereid triggers list|show|fire|check`: a running server's triggers and firings, and a
//! triggers file checked without a server.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::config::TriggersFile;
use super::describe_condition;

#[derive(Debug, Clone, Subcommand)]
pub enum TriggersCommand {
    /// The triggers of a running server, and their latest firings.
    List(ServerArgs),
    /// One trigger and every firing of it the server remembers.
    Show {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Fire a trigger by hand: its action runs now (cooldowns do not apply; a run still going
    /// does) and the firing is recorded with reason `manual`.
    Fire {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check a triggers file (syntax, kinds, cron expressions, time zones) without a server.
    Check { file: PathBuf },
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// A header to send, `NAME:VALUE`, repeatable (auth tokens, a restricted API's header).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Print the server's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Sends a request to a Nereid server and returns the body of a successful answer; an
/// unsuccessful one becomes an error with the server's `{"error": ...}` message.
pub fn server_call(
    method: reqwest::Method,
    url: &str,
    headers: &[String],
) -> anyhow::Result<String> {
    let mut request = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?
        .request(method.clone(), url);
    for header in headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header '{header}' is not NAME:VALUE"))?;
        request = request.header(name.trim(), value.trim());
    }
    let response = request.send().with_context(|| format!("{method} {url}"))?;
    let status = response.status();
    let body = response.text()?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        bail!("{url} answered {status}: {message}");
    }
    Ok(body)
}

pub fn run_triggers(cmd: TriggersCommand) -> anyhow::Result<()> {
    let base = |s: &ServerArgs| s.url.trim_end_matches('/').to_string();
    match cmd {
        TriggersCommand::List(s) => {
            let body = server_call(
                reqwest::Method::GET,
                &format!("{}/v2/triggers", base(&s)),
                &s.headers,
            )?;
            if s.json {
                println!("{body}");
                return Ok(());
            }
            let doc: Value = serde_json::from_str(&body)?;
            print!("{}", render_list(&doc));
        }
        TriggersCommand::Show { id, server } => {
            let body = server_call(
                reqwest::Method::GET,
                &format!("{}/v2/triggers/{id}", base(&server)),
                &server.headers,
            )?;
            if server.json {
                println!("{body}");
                return Ok(());
            }
            let doc: Value = serde_json::from_str(&body)?;
            print!("{}", render_show(&doc));
        }
        TriggersCommand::Fire { id, server } => {
            let body = server_call(
                reqwest::Method::POST,
                &format!("{}/v2/triggers/{id}/fire", base(&server)),
                &server.headers,
            )?;
            if server.json {
                println!("{body}");
                return Ok(());
            }
            let firing: Value = serde_json::from_str(&body)?;
            match firing["status"].as_str() {
                Some("fired") => println!(
                    "fired {id}: firing {} ({})",
                    text(&firing["id"]),
                    text(&firing["action"])
                ),
                _ => println!("suppressed {id}: {}", text(&firing["suppressed_because"])),
            }
        }
        TriggersCommand::Check { file } => {
            let parsed = TriggersFile::load(&file)?;
            println!("{}: {} triggers", file.display(), parsed.triggers.len());
            for t in &parsed.triggers {
                println!(
                    "  {:<20} {} -> {} (cooldown {})",
                    t.id,
                    describe_condition(&t.condition),
                    t.action.describe(),
                    humantime::format_duration(t.cooldown)
                );
            }
        }
    }
    Ok(())
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn firing_lines(firings: &[Value], out: &mut String) {
    use std::fmt::Write as _;
    if firings.is_empty() {
        out.push_str("no firings yet\n");
        return;
    }
    let _ = writeln!(
        out,
        "{:<26} {:<20} {:<10} {:<9} {:<24} REASON",
        "FIRING", "TRIGGER", "STATUS", "OUTCOME", "RUN"
    );
    for f in firings {
        let outcome = match (&f["status"], f["outcome"]["succeeded"].as_bool()) {
            (Value::String(s), _) if s == "suppressed" => "-",
            (_, Some(true)) => "ok",
            (_, Some(false)) => "failed",
            _ => "running",
        };
        let reason = match f["suppressed_because"].as_str() {
            Some(why) => format!("{} (suppressed: {why})", text(&f["reason"]["summary"])),
            None => text(&f["reason"]["summary"]),
        };
        let _ = writeln!(
            out,
            "{:<26} {:<20} {:<10} {:<9} {:<24} {}",
            text(&f["id"]),
            text(&f["trigger"]),
            text(&f["status"]),
            outcome,
            text(&f["outcome"]["run_id"]),
            reason
        );
        if let Some(false) = f["outcome"]["succeeded"].as_bool() {
            let _ = writeln!(out, "{:>26} {}", "", text(&f["outcome"]["detail"]));
        }
    }
}

/// `nereid triggers list` as text.
pub fn render_list(doc: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "triggers file: {}", text(&doc["file"]));
    if let Some(e) = doc["file_error"].as_str() {
        let _ = writeln!(
            out,
            "the file on disk is refused (previous triggers in force): {e}"
        );
    }
    let triggers = doc["triggers"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<20} {:<9} {:<26} {:<10} CONDITION -> ACTION",
        "TRIGGER", "KIND", "LAST FIRED", "RUNNING"
    );
    for t in &triggers {
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:<26} {:<10} {} -> {}",
            text(&t["id"]),
            text(&t["kind"]),
            // To the second: the record has the full time.
            t["last_fired"]
                .as_str()
                .map_or("-".to_string(), |t| format!("{}Z", &t[..t.len().min(19)])),
            if t["running"].is_string() {
                "yes"
            } else {
                "no"
            },
            text(&t["condition"]),
            text(&t["action"])
        );
    }
    out.push('\n');
    let firings = doc["firings"].as_array().cloned().unwrap_or_default();
    let recent: Vec<Value> = firings.into_iter().take(20).collect();
    firing_lines(&recent, &mut out);
    out
}

/// `nereid triggers show ID` as text.
pub fn render_show(doc: &Value) -> String {
    use std::fmt::Write as _;
    let t = &doc["trigger"];
    let mut out = String::new();
    let _ = writeln!(out, "trigger {} ({})", text(&t["id"]), text(&t["kind"]));
    let _ = writeln!(out, "  when:     {}", text(&t["condition"]));
    let _ = writeln!(out, "  action:   {}", text(&t["action"]));
    let _ = writeln!(out, "  cooldown: {} s", text(&t["cooldown_s"]));
    if t["next_due"].is_string() {
        let _ = writeln!(out, "  next due: {}", text(&t["next_due"]));
    }
    let _ = writeln!(out, "  last fired: {}", text(&t["last_fired"]));
    out.push('\n');
    let firings = doc["firings"].as_array().cloned().unwrap_or_default();
    firing_lines(&firings, &mut out);
    out
}
