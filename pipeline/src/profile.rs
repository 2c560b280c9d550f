//! Statistics profiles of datasets, and the comparison of two profiles.
//!
//! A [`Profile`] is computed once, when a dataset version is created, from its Arrow data and kept
//! in the version's catalog entry; a published model version carries the profile of its training
//! data as `reference.json`, which drift monitors compare live traffic with. So the profile holds
//! what those monitors need (see `shared/reference/DRIFT.md`): for numeric columns quantiles and a
//! histogram with explicit edges (they can re-bin), for categorical ones the category counts.
//!
//! Definitions (chosen to match numpy/pandas, so Python users can check the numbers):
//! - `count` is non-null values, `nulls` null values; floating NaNs are counted in `nan` and left
//!   out of every other statistic.
//! - `std` is the population standard deviation (ddof = 0, numpy's default).
//! - quantiles use linear interpolation between order statistics (numpy's default `linear`).
//! - the histogram has Sturges' `ceil(log2 n) + 1` equal-width bins over `[min, max]` (at most 64);
//!   the last bin is closed on the right, as numpy's.
//! - categorical frequencies are sorted by count (descending) then value; at most
//!   [`MAX_CATEGORIES`] are listed and the rest are summed in `other`.
//!
//! Everything is computed in a fixed order, so the same data gives the same JSON, byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use serde::{Deserialize, Serialize};

/// Quantiles recorded for numeric columns.
pub const QUANTILES: [f64; 11] = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0];
/// Most categories listed per categorical column.
pub const MAX_CATEGORIES: usize = 100;
const MAX_BINS: usize = 64;

/// The statistics of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub rows: u64,
    pub columns: Vec<ColumnProfile>,
}

/// How a column is summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// Integers, floats, decimals: numeric statistics and a histogram.
    Numeric,
    /// Strings and booleans: category frequencies.
    Categorical,
    /// Dates and timestamps: range only.
    Temporal,
    /// Anything else (lists, structs, binary): counts only.
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    /// Arrow data type, as Arrow prints it.
    pub data_type: String,
    pub kind: ColumnKind,
    /// Non-null values.
    pub count: u64,
    pub nulls: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categorical: Option<CategoricalStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal: Option<TemporalStats>,
}

impl ColumnProfile {
    /// Share of rows that are null (0 for an empty dataset).
    pub fn null_fraction(&self) -> f64 {
        let rows = self.count + self.nulls;
        if rows == 0 {
            0.0
        } else {
            self.nulls as f64 / rows as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Floating NaNs (excluded from the other statistics).
    pub nan: u64,
    /// Distinct values (NaN excluded).
    pub distinct: u64,
    /// `None` when the column has no numeric values.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub std: Option<f64>,
    /// `(q, value)` for each of [`QUANTILES`] (empty without values).
    pub quantiles: Vec<(f64, f64)>,
    pub histogram: Histogram,
}

impl NumericStats {
    /// The recorded quantile `q` (one of [`QUANTILES`]).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.quantiles
            .iter()
            .find(|(k, _)| (*k - q).abs() < 1e-12)
            .map(|(_, v)| *v)
    }
}

/// Equal-width histogram: `counts[i]` counts values in `[edges[i], edges[i + 1])`, the last bin
/// including its right edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoricalStats {
    pub distinct: u64,
    /// `(value, count)`, most frequent first, at most [`MAX_CATEGORIES`].
    pub frequencies: Vec<(String, u64)>,
    /// Values in categories not listed.
    pub other: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemporalStats {
    /// Earliest and latest value as Arrow prints them (RFC 3339-like), `None` without values.
    pub min: Option<String>,
    pub max: Option<String>,
}

/// Whether two profiles are equal up to the last bits of their floats.
///
/// serde_json's default float parsing (the workspace does not enable `float_roundtrip`, which
/// would slow the server's JSON parsing) can be one unit in the last place off, so a profile read
/// back from its catalog entry is compared with a freshly computed one with a relative tolerance
/// of 1e-12: far below any real change of the data, far above parsing noise.
pub fn profiles_match(a: &Profile, b: &Profile) -> bool {
    fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => x == y,
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
            }
            _ => a == b,
        }
    }
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(x), Ok(y)) => close(&x, &y),
        _ => false,
    }
}

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

/// Computes the profile of `batch`.
pub fn profile_batch(batch: &RecordBatch) -> Result<Profile, arrow::error::ArrowError> {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| profile_column(field.name(), array.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Profile {
        rows: batch.num_rows() as u64,
        columns,
    })
}

fn profile_column(
    name: &str,
    array: &dyn Array,
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
            profile.numeric = Some(numeric_stats(&values));
        }
        ColumnKind::Categorical => {
            let strings = cast(array, &DataType::Utf8)?;
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for v in strings.as_string::<i32>().iter().flatten() {
                *counts.entry(v).or_default() += 1;
            }
            profile.categorical = Some(categorical_stats(&counts));
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

/// Numeric statistics of `values` (nulls already removed; NaNs are counted and dropped here).
pub fn numeric_stats(values: &[f64]) -> NumericStats {
    let nan = values.iter().filter(|v| v.is_nan()).count() as u64;
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return NumericStats {
            nan,
            distinct: 0,
            min: None,
            max: None,
            mean: None,
            std: None,
            quantiles: Vec::new(),
            histogram: Histogram::default(),
        };
    }
    let mut distinct = 1u64;
    for pair in sorted.windows(2) {
        if pair[0] != pair[1] {
            distinct += 1;
        }
    }
    // Summed in data order (not sorted order) with a two-pass variance: stable and deterministic.
    let finite: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = finite.iter().sum::<f64>() / n as f64;
    let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
    let quantiles = QUANTILES
        .iter()
        .map(|&q| (q, quantile_sorted(&sorted, q)))
        .collect();
    let (min, max) = (sorted[0], sorted[n - 1]);
    NumericStats {
        nan,
        distinct,
        min: Some(min),
        max: Some(max),
        mean: Some(mean),
        std: Some(var.sqrt()),
        quantiles,
        histogram: histogram(&sorted, min, max),
    }
}

/// numpy's default (`linear`) quantile of sorted, non-empty `sorted`.
fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    if lo == hi {
        sorted[lo]
    } else {
        sorted[lo] + (sorted[hi] - sorted[lo]) * frac
    }
}

fn histogram(sorted: &[f64], min: f64, max: f64) -> Histogram {
    let n = sorted.len();
    if !(min.is_finite() && max.is_finite()) {
        // Infinite values have no equal-width binning; the quantiles still describe them.
        return Histogram::default();
    }
    if min == max {
        return Histogram {
            edges: vec![min, max],
            counts: vec![n as u64],
        };
    }
    let bins = ((n as f64).log2().ceil() as usize + 1).clamp(1, MAX_BINS);
    let width = (max - min) / bins as f64;
    let edges: Vec<f64> = (0..=bins)
        .map(|i| {
            if i == bins {
                max
            } else {
                min + width * i as f64
            }
        })
        .collect();
    let mut counts = vec![0u64; bins];
    for &v in sorted {
        let i = (((v - min) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    Histogram { edges, counts }
}

fn categorical_stats(counts: &BTreeMap<&str, u64>) -> CategoricalStats {
    let mut freq: Vec<(String, u64)> = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    // Stable sort on an already value-sorted list: ties stay in value order.
    freq.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let other = freq.iter().skip(MAX_CATEGORIES).map(|(_, c)| c).sum();
    freq.truncate(MAX_CATEGORIES);
    CategoricalStats {
        distinct: counts.len() as u64,
        frequencies: freq,
        other,
    }
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
    fn numeric_statistics_match_numpy() {
        // numpy: np.quantile([1, 2, 3, 4, 10], [0.25, 0.5, 0.9]) == [2, 3, 7.6]; std (ddof=0) = 3.1623.
        let s = numeric_stats(&[4.0, 1.0, 10.0, 3.0, 2.0, f64::NAN]);
        assert_eq!(s.nan, 1);
        assert_eq!((s.min, s.max, s.mean), (Some(1.0), Some(10.0), Some(4.0)));
        assert!((s.std.expect("std") - 10f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.quantile(0.25), Some(2.0));
        assert_eq!(s.quantile(0.5), Some(3.0));
        assert!((s.quantile(0.9).expect("q90") - 7.6).abs() < 1e-12);
        assert_eq!(s.distinct, 5);
        // 5 values: ceil(log2 5) + 1 = 4 bins of width 2.25 over [1, 10].
        assert_eq!(s.histogram.counts, vec![3, 1, 0, 1]);
        assert_eq!(s.histogram.edges.first(), Some(&1.0));
        assert_eq!(s.histogram.edges.last(), Some(&10.0));
        let empty = numeric_stats(&[]);
        assert_eq!((empty.min, empty.quantiles.len()), (None, 0));
        let constant = numeric_stats(&[2.0, 2.0]);
        assert_eq!(constant.histogram.counts, vec![2]);
    }

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
