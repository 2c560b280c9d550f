//! Data validation: checks a dataset version against expectations (schema, row count, nulls,
//! ranges, allowed values) and reports every violation at once, so one run shows everything to
//! fix. Pure: reads the version's profile and, for range and value checks, its data.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use serde::{Deserialize, Serialize};

use crate::store::{parse_type, DatasetVersion, FeatureStore, StoreError};

/// What a dataset must satisfy (the TOML `validate` step).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    /// Expected columns and types, `name:type` as in ingest schemas; extra columns are allowed.
    #[serde(default)]
    pub schema: Vec<String>,
    /// Columns that must exist (any type).
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub min_rows: Option<u64>,
    /// Largest share of nulls allowed in any column.
    #[serde(default)]
    pub max_null_fraction: Option<f64>,
    /// Per-column overrides of `max_null_fraction`.
    #[serde(default)]
    pub null_fraction: BTreeMap<String, f64>,
    /// Inclusive bounds of numeric columns.
    #[serde(default)]
    pub ranges: BTreeMap<String, Range>,
    /// The only values allowed in categorical columns.
    #[serde(default)]
    pub allowed_values: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// The outcome: `problems` is empty when the dataset passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub dataset_version: String,
    pub checks: usize,
    pub problems: Vec<String>,
}

impl ValidationReport {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks `version` against `expect`.
pub fn validate(
    store: &FeatureStore,
    version: &DatasetVersion,
    expect: &Expectations,
) -> Result<ValidationReport, StoreError> {
    let mut problems = Vec::new();
    let mut checks = 0;
    let column = |name: &str| version.schema.iter().find(|c| c.name == name);
    let profile = |name: &str| version.profile.columns.iter().find(|c| c.name == name);

    for item in expect.schema.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        checks += 1;
        let Some((name, ty)) = item.rsplit_once(':') else {
            problems.push(format!("schema item `{item}` is not `name:type`"));
            continue;
        };
        let expected = parse_type(ty.trim())?;
        match column(name.trim()) {
            None => problems.push(format!(
                "missing column `{}` (expected {expected})",
                name.trim()
            )),
            Some(c) if c.data_type != expected.to_string() => problems.push(format!(
                "column `{}` is {}, expected {expected}",
                c.name, c.data_type
            )),
            Some(_) => {}
        }
    }
    for name in &expect.required {
        checks += 1;
        if column(name).is_none() {
            problems.push(format!("missing column `{name}`"));
        }
    }
    if let Some(min) = expect.min_rows {
        checks += 1;
        if version.rows < min {
            problems.push(format!("{} rows, at least {min} required", version.rows));
        }
    }
    for c in &version.profile.columns {
        let limit = expect
            .null_fraction
            .get(&c.name)
            .copied()
            .or(expect.max_null_fraction);
        if let Some(limit) = limit {
            checks += 1;
            let fraction = c.null_fraction();
            if fraction > limit {
                problems.push(format!(
                    "column `{}`: {} of {} values are null ({:.1}%), at most {:.1}% allowed",
                    c.name,
                    c.nulls,
                    c.nulls + c.count,
                    fraction * 100.0,
                    limit * 100.0
                ));
            }
        }
    }
    for name in expect.null_fraction.keys() {
        if profile(name).is_none() {
            problems.push(format!(
                "missing column `{name}` (has a null_fraction limit)"
            ));
        }
    }

    if !expect.ranges.is_empty() || !expect.allowed_values.is_empty() {
        let batch = store.read(version)?;
        for (name, range) in &expect.ranges {
            checks += 1;
            let Some(array) = batch.column_by_name(name) else {
                problems.push(format!("missing column `{name}` (has a range)"));
                continue;
            };
            if !array.data_type().is_numeric() {
                problems.push(format!(
                    "column `{name}` is {}, a range needs a numeric column",
                    array.data_type()
                ));
                continue;
            }
            let values = cast(array, &DataType::Float64)?;
            let values = values.as_primitive::<Float64Type>();
            let outside: Vec<f64> = values
                .iter()
                .flatten()
                .filter(|v| {
                    v.is_nan()
                        || range.min.is_some_and(|m| *v < m)
                        || range.max.is_some_and(|m| *v > m)
                })
                .collect();
            if !outside.is_empty() {
                let lo = outside.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = outside.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let bound = |b: Option<f64>| b.map_or("-".to_string(), |b| b.to_string());
                problems.push(format!(
                    "column `{name}`: {} of {} values outside [{}, {}] (offending values from {lo} to {hi})",
                    outside.len(),
                    values.len() - values.null_count(),
                    bound(range.min),
                    bound(range.max)
                ));
            }
        }
        for (name, allowed) in &expect.allowed_values {
            checks += 1;
            let Some(array) = batch.column_by_name(name) else {
                problems.push(format!("missing column `{name}` (has allowed_values)"));
                continue;
            };
            let strings = cast(array, &DataType::Utf8)?;
            let mut unexpected: BTreeMap<&str, u64> = BTreeMap::new();
            for v in strings.as_string::<i32>().iter().flatten() {
                if !allowed.iter().any(|a| a == v) {
                    *unexpected.entry(v).or_default() += 1;
                }
            }
            if !unexpected.is_empty() {
                let listed: Vec<String> = unexpected
                    .iter()
                    .take(10)
                    .map(|(v, n)| format!("{v:?} ({n})"))
                    .collect();
                problems.push(format!(
                    "column `{name}`: values not allowed: {}{}",
                    listed.join(", "),
                    if unexpected.len() > 10 { ", ..." } else { "" }
                ));
            }
        }
    }
    Ok(ValidationReport {
        dataset_version: version.id.clone(),
        checks,
        problems,
    })
}
