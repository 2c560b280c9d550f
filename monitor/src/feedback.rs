//! Ground-truth feedback: the body of `POST /v2/models/{m}/feedback`, and the index of recent
//! predictions it is joined with.
//!
//! ```json
//! {"feedback": [{"id": "8f3a...", "truth": "setosa"},
//!               {"id": "req-2", "truth": [1.5, 2.0]}]}
//! ```
//! `truth` is a class name (or class index) for classifiers and a number for regressors; a
//! request of several rows takes an array with one truth per row. A batch is checked whole
//! before anything changes: an unknown id, a truth of the wrong type or count, an id given
//! twice, or a prediction already labelled refuses the batch with the reason.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Deserialize;

use crate::monitor::Predicted;
use crate::performance::Truth;
use crate::reference::Task;

/// One item of a feedback body, as sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackItem {
    pub id: String,
    pub truth: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    feedback: Vec<FeedbackItem>,
}

/// Parses a feedback body; the error says what is wrong with it.
pub fn parse_body(body: &[u8]) -> Result<Vec<FeedbackItem>, String> {
    let parsed: FeedbackBody = serde_json::from_slice(body).map_err(|e| {
        format!(
            "failed to parse the feedback JSON ({e}); expected {{\"feedback\": [{{\"id\": \"...\", \"truth\": ...}}]}}"
        )
    })?;
    if parsed.feedback.is_empty() {
        return Err("'feedback' must list at least one item".into());
    }
    Ok(parsed.feedback)
}

/// A prediction as the index keeps it (compact: class indices, not names).
#[derive(Debug, Clone, PartialEq)]
enum Kept {
    Class(u32),
    Label(Arc<str>),
    Value(f64),
    Missing,
}

/// The predictions of a request: one row inline (the common case), more on the heap.
enum Rows {
    One(Kept),
    Many(Box<[Kept]>),
}

impl Rows {
    fn as_slice(&self) -> &[Kept] {
        match self {
            Rows::One(k) => std::slice::from_ref(k),
            Rows::Many(k) => k,
        }
    }
}

struct Entry {
    time_ms: u64,
    rows: Rows,
    labelled: bool,
}

/// A labelled prediction, ready to be scored and logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub id: String,
    /// When the prediction was made.
    pub predicted_ms: u64,
    pub predicted: Vec<Predicted>,
    pub truth: Vec<Truth>,
}

/// The most recent predictions of a model version by request id, bounded: the oldest are
/// forgotten first (feedback for them is refused as unknown).
pub struct FeedbackIndex {
    task: Task,
    classes: Vec<String>,
    capacity: usize,
    /// Keyed by request id; the same `Arc` is in `order`, oldest first.
    entries: HashMap<Arc<str>, Entry>,
    order: VecDeque<Arc<str>>,
}

impl FeedbackIndex {
    pub fn new(task: Task, classes: Vec<String>, capacity: usize) -> Self {
        FeedbackIndex {
            task,
            classes,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remembers the predictions of request `id`. A reused id replaces the older request.
    pub fn insert(&mut self, id: &str, time_ms: u64, predictions: &[Predicted]) {
        let keep = |p: &Predicted| match p {
            Predicted::Class { index, name } => match self.classes.get(*index) {
                Some(c) if **c == **name => Kept::Class(*index as u32),
                _ => Kept::Label(Arc::clone(name)),
            },
            Predicted::Value(v) => Kept::Value(*v),
            Predicted::Missing => Kept::Missing,
        };
        let rows = match predictions {
            [one] => Rows::One(keep(one)),
            many => Rows::Many(many.iter().map(keep).collect()),
        };
        let entry = Entry {
            time_ms,
            rows,
            labelled: false,
        };
        if let Some(existing) = self.entries.get_mut(id) {
            *existing = entry;
        } else {
            let key: Arc<str> = Arc::from(id);
            self.entries.insert(Arc::clone(&key), entry);
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    /// When request `id` was predicted, and its predictions.
    pub fn lookup(&self, id: &str) -> Option<(u64, Vec<Predicted>)> {
        self.entries.get(id).map(|e| {
            (
                e.time_ms,
                e.rows
                    .as_slice()
                    .iter()
                    .map(|k| self.predicted(k))
                    .collect(),
            )
        })
    }

    /// Marks `id` labelled without checks (replaying the log after a restart).
    pub fn mark_labelled(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            e.labelled = true;
        }
    }

    /// Checks a whole batch, then marks every prediction in it labelled and returns them
    /// joined with their truths. On error nothing changes.
    pub fn apply(&mut self, items: &[FeedbackItem]) -> Result<Vec<Joined>, String> {
        let mut seen = HashSet::new();
        let mut joined = Vec::with_capacity(items.len());
        for item in items {
            if !seen.insert(item.id.as_str()) {
                return Err(format!("request id '{}' is given more than once", item.id));
            }
            let entry = self.entries.get(item.id.as_str()).ok_or_else(|| {
                format!(
                    "unknown request id '{}': not among the last {} logged predictions of this model version",
                    item.id, self.capacity
                )
            })?;
            if entry.labelled {
                return Err(format!(
                    "request id '{}' already has feedback; labels are never replaced",
                    item.id
                ));
            }
            // A truth is never an array itself, so an array is one truth per row.
            let rows = entry.rows.as_slice();
            let truths: Vec<&serde_json::Value> = match &item.truth {
                serde_json::Value::Array(values) => values.iter().collect(),
                value => vec![value],
            };
            if truths.len() != rows.len() {
                return Err(format!(
                    "request id '{}' had {} rows, but {} truths were given",
                    item.id,
                    rows.len(),
                    truths.len()
                ));
            }
            let truth = truths
                .into_iter()
                .map(|t| {
                    self.truth(t)
                        .map_err(|e| format!("request id '{}': {e}", item.id))
                })
                .collect::<Result<Vec<_>, _>>()?;
            joined.push(Joined {
                id: item.id.clone(),
                predicted_ms: entry.time_ms,
                predicted: rows.iter().map(|k| self.predicted(k)).collect(),
                truth,
            });
        }
        for j in &joined {
            self.mark_labelled(&j.id);
        }
        Ok(joined)
    }

    fn predicted(&self, kept: &Kept) -> Predicted {
        match kept {
            Kept::Class(i) => Predicted::Class {
                index: *i as usize,
                name: Arc::from(self.classes.get(*i as usize).map_or("", String::as_str)),
            },
            Kept::Label(name) => Predicted::Class {
                index: usize::MAX,
                name: Arc::clone(name),
            },
            Kept::Value(v) => Predicted::Value(*v),
            Kept::Missing => Predicted::Missing,
        }
    }

    /// A sent truth, checked against the task.
    fn truth(&self, value: &serde_json::Value) -> Result<Truth, String> {
        match (self.task, value) {
            (Task::Classification, serde_json::Value::String(name)) => {
                if self.classes.is_empty() || self.classes.contains(name) {
                    Ok(Truth::Class(name.clone()))
                } else {
                    Err(format!(
                        "'{name}' is not a class of this model ({})",
                        self.classes.join(", ")
                    ))
                }
            }
            (Task::Classification, serde_json::Value::Number(n)) => {
                let index = n
                    .as_u64()
                    .ok_or_else(|| format!("class index {n} is not a non-negative integer"))?;
                self.classes
                    .get(index as usize)
                    .map(|c| Truth::Class(c.clone()))
                    .ok_or_else(|| {
                        format!(
                            "class index {index} is out of range (the model has {} classes)",
                            self.classes.len()
                        )
                    })
            }
            (Task::Regression, serde_json::Value::Number(n)) => n
                .as_f64()
                .filter(|v| v.is_finite())
                .map(Truth::Value)
                .ok_or_else(|| format!("truth {n} is not a finite number")),
            (Task::Classification, other) => Err(format!(
                "the truth of a classifier is a class name or index, got {other}"
            )),
            (Task::Regression, other) => {
                Err(format!("the truth of a regressor is a number, got {other}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> FeedbackIndex {
        let mut idx = FeedbackIndex::new(
            Task::Classification,
            vec!["setosa".into(), "versicolor".into(), "virginica".into()],
            3,
        );
        let class = |i: usize, n: &str| Predicted::Class {
            index: i,
            name: n.into(),
        };
        idx.insert("a", 1, &[class(0, "setosa")]);
        idx.insert("b", 2, &[class(2, "virginica"), class(1, "versicolor")]);
        idx
    }

    fn items(json: &str) -> Vec<FeedbackItem> {
        parse_body(json.as_bytes()).expect("parses")
    }

    #[test]
    fn joins_whole_batches() {
        let mut idx = index();
        let joined = idx
            .apply(&items(
                r#"{"feedback": [{"id": "a", "truth": "setosa"}, {"id": "b", "truth": [2, "virginica"]}]}"#,
            ))
            .expect("accepted");
        assert_eq!(joined.len(), 2);
        assert_eq!(
            joined[1].truth,
            vec![
                Truth::Class("virginica".into()),
                Truth::Class("virginica".into())
            ]
        );
        // Labels are never replaced.
        let err = idx
            .apply(&items(r#"{"feedback": [{"id": "a", "truth": "setosa"}]}"#))
            .expect_err("duplicate");
        assert!(err.contains("already has feedback"), "{err}");
    }

    #[test]
    fn bad_feedback_changes_nothing() {
        let mut idx = index();
        for (body, needle) in [
            (
                r#"{"feedback": [{"id": "a", "truth": "setosa"}, {"id": "zz", "truth": "setosa"}]}"#,
                "unknown request id 'zz'",
            ),
            (
                r#"{"feedback": [{"id": "a", "truth": "rose"}]}"#,
                "not a class",
            ),
            (r#"{"feedback": [{"id": "a", "truth": 7}]}"#, "out of range"),
            (
                r#"{"feedback": [{"id": "b", "truth": "setosa"}]}"#,
                "2 rows, but 1 truths",
            ),
            (
                r#"{"feedback": [{"id": "a", "truth": 1}, {"id": "a", "truth": 1}]}"#,
                "more than once",
            ),
            (
                r#"{"feedback": [{"id": "a", "truth": true}]}"#,
                "class name or index",
            ),
        ] {
            let err = idx.apply(&items(body)).expect_err(body);
            assert!(err.contains(needle), "{body}: {err}");
        }
        // Nothing was marked: the good item of the first batch is still open.
        assert!(idx
            .apply(&items(r#"{"feedback": [{"id": "a", "truth": "setosa"}]}"#))
            .is_ok());
        assert!(parse_body(b"{\"feedback\": []}").is_err());
        assert!(parse_body(b"{\"labels\": []}").is_err());
        assert!(parse_body(b"not json").is_err());
    }

    #[test]
    fn the_oldest_predictions_are_forgotten() {
        let mut idx = index();
        idx.insert("c", 3, &[Predicted::Missing]);
        idx.insert("d", 4, &[Predicted::Missing]);
        assert_eq!(idx.len(), 3);
        let err = idx
            .apply(&items(r#"{"feedback": [{"id": "a", "truth": "setosa"}]}"#))
            .expect_err("evicted");
        assert!(err.contains("last 3"), "{err}");
    }
}
