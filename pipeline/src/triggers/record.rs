//! The firing record: an append-only JSON-lines file (`firings.jsonl`) in the record folder,
//! one line when a trigger fires or is suppressed and one when its action finishes, plus
//! `state.json` (what the engine must remember across restarts) and `logs/<firing>.log` (the
//! captured output of pipeline runs).
//!
//! Lines are written whole with one `write` on a file opened for appending and synced, so a
//! crash leaves at most one torn last line, which reading skips (and counts).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::engine::{Persisted, Reason};
use crate::util::write_atomic;

/// One firing (or suppressed firing) and, once known, its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub id: String,
    pub trigger: String,
    pub time: DateTime<Utc>,
    pub reason: Reason,
    /// The action's kind and what it targets (`pipeline iris.toml`, `webhook POST ...`).
    pub action: String,
    /// `fired` or `suppressed`.
    pub status: FiringStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_because: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FiringStatus {
    Fired,
    Suppressed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub finished: DateTime<Utc>,
    pub succeeded: bool,
    /// What happened, in a sentence (the run's outcome, the HTTP status, the error).
    pub detail: String,
    /// The pipeline run (or Airflow DAG run) the action started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub attempts: u32,
    /// Where the action's output was captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Firing(Firing),
    Outcome { firing: String, outcome: Outcome },
}

/// What reading the record found.
#[derive(Debug, Default)]
pub struct History {
    /// Oldest first.
    pub firings: Vec<Firing>,
    /// Lines that could not be read (a torn last line after a crash).
    pub unreadable_lines: usize,
}

pub struct Record {
    dir: PathBuf,
    file: Mutex<File>,
}

const FIRINGS: &str = "firings.jsonl";
const STATE: &str = "state.json";

impl Record {
    pub fn open(dir: &Path) -> io::Result<Record> {
        fs::create_dir_all(dir.join("logs"))?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(FIRINGS))?;
        Ok(Record {
            dir: dir.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the output of firing `id` is captured.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{id}.log"))
    }

    fn append(&self, line: &Line) -> io::Result<()> {
        let mut text = serde_json::to_string(line).map_err(io::Error::other)?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }

    pub fn append_firing(&self, firing: &Firing) -> io::Result<()> {
        let mut firing = firing.clone();
        firing.outcome = None;
        self.append(&Line::Firing(firing))
    }

    pub fn append_outcome(&self, firing: &str, outcome: &Outcome) -> io::Result<()> {
        self.append(&Line::Outcome {
            firing: firing.to_string(),
            outcome: outcome.clone(),
        })
    }

    pub fn read(&self) -> io::Result<History> {
        read_history(&self.dir)
    }

    pub fn load_state(&self) -> io::Result<BTreeMap<String, Persisted>> {
        match fs::read(self.dir.join(STATE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", self.dir.join(STATE).display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    pub fn save_state(&self, state: &BTreeMap<String, Persisted>) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(STATE), &bytes)
    }
}

/// Reads a record folder (also without a server: `nereid triggers list --record-dir`).
pub fn read_history(dir: &Path) -> io::Result<History> {
    let file = match File::open(dir.join(FIRINGS)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(History::default()),
        Err(e) => return Err(e),
    };
    let mut history = History::default();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Firing(f)) => {
                index.insert(f.id.clone(), history.firings.len());
                history.firings.push(f);
            }
            Ok(Line::Outcome { firing, outcome }) => match index.get(&firing) {
                Some(&i) => history.firings[i].outcome = Some(outcome),
                None => history.unreadable_lines += 1,
            },
            Err(_) => history.unreadable_lines += 1,
        }
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(id: &str) -> Firing {
        Firing {
            id: id.into(),
            trigger: "t".into(),
            time: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
            reason: Reason {
                kind: "manual".into(),
                summary: "by hand".into(),
                details: serde_json::json!({}),
            },
            action: "pipeline p.toml".into(),
            status: FiringStatus::Fired,
            suppressed_because: None,
            outcome: None,
        }
    }

    #[test]
    fn firings_and_outcomes_survive_reopening_and_a_torn_line() {
        let dir = tempfile::tempdir().expect("dir");
        let record = Record::open(dir.path()).expect("open");
        record.append_firing(&firing("a")).expect("append");
        record.append_firing(&firing("b")).expect("append");
        let outcome = Outcome {
            finished: firing("a").time,
            succeeded: true,
            detail: "published version 2".into(),
            run_id: Some("run-1".into()),
            attempts: 1,
            log: None,
        };
        record.append_outcome("a", &outcome).expect("append");
        drop(record);
        // A crash in the middle of a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FIRINGS))
            .expect("file");
        f.write_all(b"{\"type\":\"firing\",\"id\":\"c\",\"tri")
            .expect("write");
        drop(f);

        let record = Record::open(dir.path()).expect("reopen");
        let history = record.read().expect("read");
        assert_eq!(history.unreadable_lines, 1);
        assert_eq!(history.firings.len(), 2);
        assert_eq!(history.firings[0].outcome.as_ref(), Some(&outcome));
        assert_eq!(history.firings[1].outcome, None);

        let mut state = BTreeMap::new();
        state.insert(
            "t".to_string(),
            Persisted {
                last_fired: Some(firing("a").time),
                seen_seq: Some(4),
            },
        );
        record.save_state(&state).expect("save");
        assert_eq!(record.load_state().expect("load"), state);
    }
}
