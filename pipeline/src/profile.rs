//! Statistics profiles of Arrow data, and the comparison of two profiles.
//!
//! The profile types and their definitions live in `nereid_monitor::profile` (monitors read
//! them from `reference.json`); this module computes them from Arrow record batches. A
//! [`Profile`] is computed once, when a dataset version is created, and kept in the version's
//! catalog entry; a published model version carries the [`reference_profile_batch`] of its
//! training data, which adds each numeric column's whole distribution for the drift tests.
//!
//! Everything is computed in a fixed order, so the same data gives the same JSON, byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use serde::Serialize;

pub use nereid_monitor::profile::*;

/// The kind a column of this Arrow type is summarised as.
pub fn column_kind(data_type: &DataType) -> ColumnKind {
    match data_type {
        t if t.is_numeric() => ColumnKind::Numeric,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean => {
            ColumnKind::Categorical
        }
        DataType::Dictionary(_, value) if column_kind(value) == ColumnKind::Categorical => {
            ColumnKind::Categorical
        }
        t if t.is_temporal() => ColumnKind::Temporal,
        _ => ColumnKind::Other,
    }
}

/// Computes the profile of `batch`, as a dataset version keeps it.
pub fn profile_batch(batch: &RecordBatch) -> Result<Profile, arrow::error::ArrowError> {
    profile_batch_with(batch, false)
}

/// Computes the reference profile of `batch`: the dataset profile plus each numeric column's
/// distribution and up to [`MAX_REFERENCE_CATEGORIES`] categories.
pub fn reference_profile_batch(batch: &RecordBatch) -> Result<Profile, arrow::error::ArrowError> {
    profile_batch_with(batch, true)
}

fn profile_batch_with(
    batch: &RecordBatch,
    reference: bool,
) -> Result<Profile, arrow::error::ArrowError> {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| profile_column(field.name(), array.as_ref(), reference))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Profile {
        rows: batch.num_rows() as u64,
        columns,
    })
}

fn profile_column(
    name: &str,
    array: &dyn Array,
    reference: bool,
) -> Result<ColumnProfile, arrow::error::ArrowError> {
    let data_type = array.data_type();
    let kind = column_kind(data_type);
    let nulls = array.logical_null_count() as u64;
    let mut profile = ColumnProfile {
        name: name.to_string(),
        data_type: data_type.to_string(),
        kind,
        count: array.len() as u64 - nulls,
        nulls,
        numeric: None,
        categorical: None,
        temporal: None,
    };
    match kind {
        ColumnKind::Numeric => {
            let values = cast(array, &DataType::Float64)?;
            let values: Vec<f64> = values
                .as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .collect();
            profile.numeric = Some(if reference {
                reference_numeric_stats(&values)
            } else {
                numeric_stats(&values)
            });
        }
        ColumnKind::Categorical => {
            let strings = cast(array, &DataType::Utf8)?;
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for v in strings.as_string::<i32>().iter().flatten() {
                *counts.entry(v).or_default() += 1;
            }
            let limit = if reference {
                MAX_REFERENCE_CATEGORIES
            } else {
                MAX_CATEGORIES
            };
            profile.categorical = Some(categorical_stats(&counts, limit));
        }
        ColumnKind::Temporal => {
            // Order by the underlying integer, print through Arrow's own formatting.
            let ticks = match data_type {
                DataType::Timestamp(_, _) => cast(
                    &cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
                    &DataType::Int64,
                )?,
                DataType::Date32 | DataType::Date64 => {
                    cast(&cast(array, &DataType::Date64)?, &DataType::Int64)?
                }
                _ => cast(array, &DataType::Int64).unwrap_or_else(|_| {
                    arrow::array::new_null_array(&DataType::Int64, array.len())
                }),
            };
            let ticks = ticks.as_primitive::<Int64Type>();
            let pick = |better: fn(i64, i64) -> bool| {
                let mut best: Option<(usize, i64)> = None;
                for (i, v) in ticks.iter().enumerate() {
                    if let Some(v) = v {
                        if best.is_none_or(|(_, b)| better(v, b)) {
                            best = Some((i, v));
                        }
                    }
                }
                best.and_then(|(i, _)| arrow::util::display::array_value_to_string(array, i).ok())
            };
            profile.temporal = Some(TemporalStats {
                min: pick(|a, b| a < b),
                max: pick(|a, b| a > b),
            });
        }
        ColumnKind::Other => {}
    }
    Ok(profile)
}

/// How two datasets differ, column by column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileDiff {
    pub rows: (u64, u64),
    /// Columns only in the second dataset.
    pub added: Vec<String>,
    /// Columns only in the first dataset.
    pub removed: Vec<String>,
    /// Columns in both (in the first dataset's order).
    pub columns: Vec<ColumnDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColumnDiff {
    pub name: String,
    /// `Some((before, after))` when the Arrow type changed.
    pub data_type: Option<(String, String)>,
    pub null_fraction: (f64, f64),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<(f64, f64)>,
    /// Shift of the mean in units of the first dataset's standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_shift_std: Option<f64>,
    /// Categories only in the second / only in the first dataset (listed categories only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_categories: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_categories: Vec<String>,
    /// Largest change of any listed category's share of the non-null values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_share_change: Option<f64>,
}

impl ColumnDiff {
    /// Whether anything at all differs.
    pub fn changed(&self) -> bool {
        self.data_type.is_some()
            || self.null_fraction.0 != self.null_fraction.1
            || [self.mean, self.std, self.min, self.max]
                .iter()
                .flatten()
                .any(|(a, b)| a != b)
            || !self.new_categories.is_empty()
            || !self.missing_categories.is_empty()
            || self.max_share_change.is_some_and(|c| c > 0.0)
    }
}

/// Compares the profile `a` (before) with `b` (after).
pub fn diff_profiles(a: &Profile, b: &Profile) -> ProfileDiff {
    let names_b: BTreeSet<&str> = b.columns.iter().map(|c| c.name.as_str()).collect();
    let names_a: BTreeSet<&str> = a.columns.iter().map(|c| c.name.as_str()).collect();
    let columns = a
        .columns
        .iter()
        .filter_map(|ca| {
            let cb = b.columns.iter().find(|c| c.name == ca.name)?;
            Some(diff_column(ca, cb))
        })
        .collect();
    ProfileDiff {
        rows: (a.rows, b.rows),
        added: b
            .columns
            .iter()
            .filter(|c| !names_a.contains(c.name.as_str()))
            .map(|c| c.name.clone())
            .collect(),
        removed: a
            .columns
            .iter()
            .filter(|c| !names_b.contains(c.name.as_str()))
            .map(|c| c.name.clone())
            .collect(),
        columns,
    }
}

fn diff_column(a: &ColumnProfile, b: &ColumnProfile) -> ColumnDiff {
    let pair = |f: fn(&NumericStats) -> Option<f64>| match (&a.numeric, &b.numeric) {
        (Some(x), Some(y)) => f(x).zip(f(y)),
        _ => None,
    };
    let mean = pair(|s| s.mean);
    let std_a = a.numeric.as_ref().and_then(|s| s.std);
    let mean_shift_std = match (mean, std_a) {
        (Some((ma, mb)), Some(s)) if s > 0.0 => Some((mb - ma) / s),
        _ => None,
    };
    let mut diff = ColumnDiff {
        name: a.name.clone(),
        data_type: (a.data_type != b.data_type).then(|| (a.data_type.clone(), b.data_type.clone())),
        null_fraction: (a.null_fraction(), b.null_fraction()),
        mean,
        std: pair(|s| s.std),
        min: pair(|s| s.min),
        max: pair(|s| s.max),
        mean_shift_std,
        new_categories: Vec::new(),
        missing_categories: Vec::new(),
        max_share_change: None,
    };
    if let (Some(ca), Some(cb)) = (&a.categorical, &b.categorical) {
        let share = |c: &CategoricalStats| -> BTreeMap<String, f64> {
            let total: u64 = c.frequencies.iter().map(|(_, n)| n).sum::<u64>() + c.other;
            c.frequencies
                .iter()
                .map(|(k, n)| (k.clone(), *n as f64 / total.max(1) as f64))
                .collect()
        };
        let (sa, sb) = (share(ca), share(cb));
        diff.new_categories = sb
            .keys()
            .filter(|k| !sa.contains_key(*k))
            .cloned()
            .collect();
        diff.missing_categories = sa
            .keys()
            .filter(|k| !sb.contains_key(*k))
            .cloned()
            .collect();
        let keys: BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
        diff.max_share_change = keys
            .into_iter()
            .map(|k| (sa.get(k).copied().unwrap_or(0.0) - sb.get(k).copied().unwrap_or(0.0)).abs())
            .max_by(f64::total_cmp);
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn profiles_and_diffs_columns() {
        let batch = |xs: Vec<Option<f64>>, cats: Vec<Option<&str>>| {
            RecordBatch::try_from_iter(vec![
                ("x", Arc::new(Float64Array::from(xs)) as ArrayRef),
                ("c", Arc::new(StringArray::from(cats)) as ArrayRef),
                (
                    "n",
                    Arc::new(Int64Array::from(vec![1i64, 2, 3, 4])) as ArrayRef,
                ),
            ])
            .expect("batch")
        };
        let a = profile_batch(&batch(
            vec![Some(1.0), Some(2.0), None, Some(3.0)],
            vec![Some("b"), Some("a"), Some("b"), None],
        ))
        .expect("profile");
        assert_eq!(a.rows, 4);
        let x = &a.columns[0];
        assert_eq!((x.kind, x.count, x.nulls), (ColumnKind::Numeric, 3, 1));
        assert_eq!(x.numeric.as_ref().and_then(|s| s.mean), Some(2.0));
        let c = a.columns[1].categorical.as_ref().expect("categorical");
        assert_eq!(c.frequencies, vec![("b".into(), 2), ("a".into(), 1)]);
        assert_eq!(a.columns[2].data_type, "Int64");

        let b = profile_batch(&batch(
            vec![Some(5.0), Some(6.0), Some(7.0), Some(8.0)],
            vec![Some("c"), Some("a"), Some("a"), Some("a")],
        ))
        .expect("profile");
        let d = diff_profiles(&a, &b);
        assert!(d.added.is_empty() && d.removed.is_empty());
        let dx = &d.columns[0];
        assert_eq!(dx.null_fraction, (0.25, 0.0));
        assert_eq!(dx.mean, Some((2.0, 6.5)));
        assert!(dx.changed());
        let dc = &d.columns[1];
        assert_eq!(dc.new_categories, vec!["c".to_string()]);
        assert_eq!(dc.missing_categories, vec!["b".to_string()]);
        assert!(!d.columns[2].changed());
        // Same data, same JSON.
        let again = profile_batch(&batch(
            vec![Some(1.0), Some(2.0), None, Some(3.0)],
            vec![Some("b"), Some("a"), Some("b"), None],
        ))
        .expect("profile");
        assert_eq!(
            serde_json::to_string(&a).expect("json"),
            serde_json::to_string(&again).expect("json")
        );
    }
}
