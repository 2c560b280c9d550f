//! Live performance from ground-truth feedback: predictions joined with their true labels or
//! values, scored per window of labelled predictions and in total. The definitions are
//! scikit-learn's (`accuracy_score`, `precision_recall_fscore_support` with zero division
//! scored 0 and macro averages over the labels present in either truth or prediction,
//! `mean_absolute_error`, `root_mean_squared_error`, `r2_score`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::monitor::Predicted;
use crate::reference::Task;

/// Performance windows kept for the page's chart.
const HISTORY: usize = 100;

/// A true label (class name) or value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Truth {
    Class(String),
    Value(f64),
}

/// Metrics of a set of labelled predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Metrics {
    /// Predictions with a label.
    pub labelled: u64,
    /// Unix milliseconds of the first and last label.
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
}

impl Metrics {
    /// `(name, value)` of every scalar metric, for exports.
    pub fn named(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (name, value) in [
            ("accuracy", self.accuracy),
            ("macro_f1", self.macro_f1),
            ("mae", self.mae),
            ("rmse", self.rmse),
            ("r2", self.r2),
        ] {
            if let Some(v) = value {
                out.push((name.to_string(), v));
            }
        }
        for c in &self.classes {
            out.push((format!("precision:{}", c.class), c.precision));
            out.push((format!("recall:{}", c.class), c.recall));
            out.push((format!("f1:{}", c.class), c.f1));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Labels of this class.
    pub support: u64,
}

/// What `GET .../drift` shows of live performance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PerformanceReport {
    pub task: Option<Task>,
    /// Every labelled prediction since the version loaded.
    pub total: Metrics,
    /// The latest complete window of `window_size` labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_window: Option<Metrics>,
    pub window_size: u64,
    /// Complete windows, oldest first (at most 100).
    pub history: Vec<Metrics>,
    /// Labels whose prediction could not be read (scored as nothing).
    pub unscored: u64,
}

#[derive(Debug, Clone, Default)]
struct Accumulator {
    n: u64,
    start_ms: u64,
    end_ms: u64,
    /// (truth, predicted) -> count.
    pairs: BTreeMap<(String, String), u64>,
    abs: f64,
    sq: f64,
    y: f64,
    y2: f64,
}

impl Accumulator {
    fn add(&mut self, predicted: &Predicted, truth: &Truth, time_ms: u64) -> bool {
        match (predicted, truth) {
            (Predicted::Class { name, .. }, Truth::Class(t)) => {
                *self.pairs.entry((t.clone(), name.to_string())).or_default() += 1;
            }
            (Predicted::Value(p), Truth::Value(t)) => {
                let e = t - p;
                self.abs += e.abs();
                self.sq += e * e;
                self.y += t;
                self.y2 += t * t;
            }
            _ => return false,
        }
        if self.n == 0 {
            self.start_ms = time_ms;
        }
        self.n += 1;
        self.end_ms = time_ms;
        true
    }

    fn metrics(&self, task: Task) -> Metrics {
        let mut m = Metrics {
            labelled: self.n,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            ..Metrics::default()
        };
        if self.n == 0 {
            return m;
        }
        let n = self.n as f64;
        match task {
            Task::Classification => {
                let correct: u64 = self
                    .pairs
                    .iter()
                    .filter(|((t, p), _)| t == p)
                    .map(|(_, c)| c)
                    .sum();
                m.accuracy = Some(correct as f64 / n);
                let labels: BTreeSet<&String> =
                    self.pairs.keys().flat_map(|(t, p)| [t, p]).collect();
                for label in labels {
                    let tp = self
                        .pairs
                        .get(&(label.clone(), label.clone()))
                        .copied()
                        .unwrap_or(0);
                    let predicted: u64 = self
                        .pairs
                        .iter()
                        .filter(|((_, p), _)| p == label)
                        .map(|(_, c)| c)
                        .sum();
                    let support: u64 = self
                        .pairs
                        .iter()
                        .filter(|((t, _), _)| t == label)
                        .map(|(_, c)| c)
                        .sum();
                    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                    let precision = ratio(tp, predicted);
                    let recall = ratio(tp, support);
                    let f1 = if precision + recall == 0.0 {
                        0.0
                    } else {
                        2.0 * precision * recall / (precision + recall)
                    };
                    m.classes.push(ClassMetrics {
                        class: label.clone(),
                        precision,
                        recall,
                        f1,
                        support,
                    });
                }
                m.macro_f1 =
                    Some(m.classes.iter().map(|c| c.f1).sum::<f64>() / m.classes.len() as f64);
            }
            Task::Regression => {
                m.mae = Some(self.abs / n);
                m.rmse = Some((self.sq / n).sqrt());
                let total = self.y2 - self.y * self.y / n;
                m.r2 = Some(if total <= 0.0 {
                    if self.sq == 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    1.0 - self.sq / total
                });
            }
        }
        m
    }
}

/// Live performance of one model version.
#[derive(Debug, Clone)]
pub struct LivePerformance {
    task: Task,
    window_size: u64,
    total: Accumulator,
    window: Accumulator,
    history: VecDeque<Metrics>,
    unscored: u64,
}

impl LivePerformance {
    pub fn new(task: Task, window_size: u64) -> Self {
        LivePerformance {
            task,
            window_size: window_size.max(1),
            total: Accumulator::default(),
            window: Accumulator::default(),
            history: VecDeque::new(),
            unscored: 0,
        }
    }

    /// Scores one labelled prediction; returns the window it completed, if any.
    pub fn record(
        &mut self,
        predicted: &Predicted,
        truth: &Truth,
        time_ms: u64,
    ) -> Option<Metrics> {
        if !self.total.add(predicted, truth, time_ms) {
            self.unscored += 1;
            return None;
        }
        self.window.add(predicted, truth, time_ms);
        if self.window.n < self.window_size {
            return None;
        }
        let done = std::mem::take(&mut self.window).metrics(self.task);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(done.clone());
        Some(done)
    }

    pub fn report(&self) -> PerformanceReport {
        PerformanceReport {
            task: Some(self.task),
            total: self.total.metrics(self.task),
            latest_window: self.history.back().cloned(),
            window_size: self.window_size,
            history: self.history.iter().cloned().collect(),
            unscored: self.unscored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str) -> Predicted {
        Predicted::Class {
            index: 0,
            name: name.into(),
        }
    }

    #[test]
    fn classification_matches_sklearn() {
        // y_true = [a, a, b, b, c], y_pred = [a, b, b, b, a]:
        // accuracy 0.6; precision a 0.5 b 2/3 c 0; recall a 0.5 b 1 c 0; macro F1 = (0.5+0.8+0)/3.
        let mut p = LivePerformance::new(Task::Classification, 5);
        let pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ("c", "a")];
        let mut done = None;
        for (i, (t, pr)) in pairs.iter().enumerate() {
            done = p.record(&class(pr), &Truth::Class(t.to_string()), i as u64);
        }
        let m = done.expect("a window of 5 completed");
        assert_eq!(m.accuracy, Some(0.6));
        let b = m.classes.iter().find(|c| c.class == "b").expect("b");
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12 && b.recall == 1.0 && b.support == 2);
        assert!((m.macro_f1.expect("f1") - 1.3 / 3.0).abs() < 1e-12);
        assert_eq!(p.report().total.labelled, 5);
        assert_eq!(p.report().history.len(), 1);
    }

    #[test]
    fn regression_matches_sklearn() {
        // y = [1, 2, 3], pred = [1.5, 2, 2]: MAE 0.5, RMSE sqrt(1.25/3), R² = 1 - 1.25/2.
        let mut p = LivePerformance::new(Task::Regression, 100);
        for (t, pr) in [(1.0, 1.5), (2.0, 2.0), (3.0, 2.0)] {
            p.record(&Predicted::Value(pr), &Truth::Value(t), 0);
        }
        let m = p.report().total;
        assert_eq!(m.mae, Some(0.5));
        assert!((m.rmse.expect("rmse") - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((m.r2.expect("r2") - (1.0 - 1.25 / 2.0)).abs() < 1e-12);
        assert!(p.report().latest_window.is_none());
        // A class label for a regressor is not scored.
        p.record(&Predicted::Value(1.0), &Truth::Class("x".into()), 0);
        assert_eq!(p.report().unscored, 1);
    }
}
