//! `reference.json`: what a published model version was trained on, which its monitors compare
//! live traffic with.
//!
//! Format 1 (still read): one input, `input_name`, whose row elements are the profile columns
//! `features`; the label's distribution stands in for the model's predictions. Format 2 adds
//! `inputs` (models with several inputs, each mapped to columns) and `prediction` (the output
//! the prediction is read from, and the profile column holding the model's own predictions on
//! the reference rows).

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::profile::{ColumnProfile, Profile};

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One probability per class (softmax output), trained on cross-entropy.
    #[default]
    Classification,
    /// Real-valued outputs, trained on mean squared error.
    Regression,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classification" => Ok(Task::Classification),
            "regression" => Ok(Task::Regression),
            other => Err(format!(
                "unknown task '{other}' (expected classification or regression)"
            )),
        }
    }
}

/// The file name inside a version folder.
pub const REFERENCE_FILE: &str = "reference.json";
/// The newest format written.
pub const REFERENCE_FORMAT: u32 = 2;

/// `reference.json` of a published version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub format: u32,
    #[serde(default)]
    pub task: Task,
    /// The dataset version the profile was computed from.
    pub dataset_version: String,
    /// Model input `input_name` holds the features `features[i]` as its row elements (when
    /// `inputs` is empty).
    pub input_name: String,
    pub features: Vec<String>,
    /// The label column (empty when the reference has none).
    #[serde(default)]
    pub label: String,
    /// Class names in output order (empty for regression).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Profile of the reference rows: features, then the label and prediction columns.
    pub profile: Profile,
    /// Format 2: every input with the profile columns of its row elements, in order; replaces
    /// `input_name`/`features` for models with several inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputColumns>,
    /// Format 2: where the model's prediction is, and its distribution on the reference rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionReference>,
}

/// One model input and the profile columns its row elements are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputColumns {
    pub name: String,
    pub columns: Vec<String>,
}

/// The output a prediction is read from, and the profile column with the model's predictions
/// on the reference rows (class names for classifiers, values for regressors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionReference {
    pub output: String,
    pub column: String,
}

/// Why a reference cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid reference profile: {message}")]
    Invalid { path: String, message: String },
}

impl Reference {
    /// Reads and checks `reference.json`.
    pub fn read(path: &Path) -> Result<Reference, ReferenceError> {
        let text = std::fs::read(path).map_err(|source| ReferenceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let reference: Reference =
            serde_json::from_slice(&text).map_err(|e| ReferenceError::Invalid {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        reference
            .check()
            .map_err(|message| ReferenceError::Invalid {
                path: path.display().to_string(),
                message,
            })?;
        Ok(reference)
    }

    /// Every input with its columns (format 1's single input included).
    pub fn input_columns(&self) -> Vec<InputColumns> {
        if self.inputs.is_empty() {
            vec![InputColumns {
                name: self.input_name.clone(),
                columns: self.features.clone(),
            }]
        } else {
            self.inputs.clone()
        }
    }

    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.profile.columns.iter().find(|c| c.name == name)
    }

    /// The profile column live predictions are compared with: the model's own predictions on
    /// the reference rows when recorded, else the label.
    pub fn prediction_column(&self) -> Option<&ColumnProfile> {
        match &self.prediction {
            Some(p) => self.column(&p.column),
            None if !self.label.is_empty() => self.column(&self.label),
            None => None,
        }
    }

    /// Every column it names must be in the profile.
    pub fn check(&self) -> Result<(), String> {
        if self.format == 0 || self.format > REFERENCE_FORMAT {
            return Err(format!(
                "format {} is not supported (1 to {REFERENCE_FORMAT})",
                self.format
            ));
        }
        let inputs = self.input_columns();
        if inputs.iter().all(|i| i.columns.is_empty()) {
            return Err("it maps no input to profile columns".into());
        }
        for input in &inputs {
            for column in &input.columns {
                if self.column(column).is_none() {
                    return Err(format!(
                        "input '{}' names column '{column}', which the profile lacks",
                        input.name
                    ));
                }
            }
        }
        if let Some(p) = &self.prediction {
            if self.column(&p.column).is_none() {
                return Err(format!(
                    "the prediction column '{}' is not in the profile",
                    p.column
                ));
            }
        }
        Ok(())
    }
}
