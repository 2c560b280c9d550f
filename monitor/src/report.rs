//! What a monitor reports when a window closes: per column the test (method, score, threshold,
//! verdict), the data quality and both histograms; dataset drift over the features; the window
//! it covers. Serialised as the JSON of `GET /v2/models/{m}/drift`.

use serde::{Deserialize, Serialize};

use crate::quality::QualityReport;
use crate::stattest::{ColumnType, TestOutcome};

/// The report of one closed window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub model: String,
    pub version: u64,
    pub window: WindowInfo,
    pub reference: ReferenceInfo,
    /// Features first, in input order, then the prediction.
    pub columns: Vec<ColumnReport>,
    pub dataset_drift: DatasetDrift,
    /// The prediction column's verdict, when it is monitored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_drift: Option<bool>,
    /// Columns with at least one failed quality check.
    pub quality_failures: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowInfo {
    /// 1 for the first window of this version.
    pub index: u64,
    /// How windows are formed (e.g. "tumbling, 1000 rows").
    pub spec: String,
    /// Unix milliseconds of the first and last row (time windows: the window's bounds).
    pub start_ms: u64,
    pub end_ms: u64,
    /// Rows the window saw, and the rows the tests ran on (fewer only when a time window
    /// held more than `max_window_rows` and kept a uniform sample).
    pub rows: u64,
    pub rows_tested: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceInfo {
    pub dataset_version: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Feature,
    Prediction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnReport {
    pub name: String,
    pub role: Role,
    pub column_type: ColumnType,
    /// Where the values come from (e.g. "INPUT[2]", "argmax of PROBABILITIES").
    pub source: String,
    /// The test, when it could run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestOutcome>,
    /// What the score means (method, units).
    pub method_description: String,
    /// Why no test ran (e.g. no values in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub quality: QualityReport,
    pub histogram: ColumnHistogram,
    /// Numeric columns: the window's mean and standard deviation next to the reference's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<NumericSummary>,
}

impl ColumnReport {
    pub fn drift(&self) -> bool {
        self.test.as_ref().is_some_and(|t| t.drift)
    }
}

/// Reference and current shares over the same bins (numeric) or categories, for drawing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnHistogram {
    /// Categorical columns: the category of each bar.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Numeric columns: the bin edges (one more than bars; the last bin is closed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<f64>,
    pub reference: Vec<f64>,
    pub current: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericSummary {
    pub reference_mean: f64,
    pub reference_std: f64,
    pub current_mean: f64,
    pub current_std: f64,
}

/// Evidently's dataset drift: the share of drifted features reaches `drift_share`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetDrift {
    pub columns: usize,
    pub drifted: usize,
    pub share: f64,
    pub drift_share: f64,
    pub drift: bool,
}
