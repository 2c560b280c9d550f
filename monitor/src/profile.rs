//! Column profiles: the statistics of a dataset's columns, and of a model's training data in a
//! published version's `reference.json`, which the monitors compare live traffic with.
//!
//! A profile holds what drift tests need (see `shared/reference/DRIFT.md`): for numeric columns
//! quantiles and a histogram with explicit edges (they can re-bin), for categorical ones the
//! category counts. A *reference* profile adds each numeric column's [`Distribution`]: every
//! distinct value with its count when there are at most [`MAX_EXACT_VALUES`], so tests on it
//! give the same answers as on the raw data, else [`SKETCH_POINTS`] evenly spaced quantiles.
//!
//! Definitions (chosen to match numpy/pandas, so Python users can check the numbers):
//! - `count` is non-null values, `nulls` null values; floating NaNs are counted in `nan` and left
//!   out of every other statistic.
//! - `std` is the population standard deviation (ddof = 0, numpy's default).
//! - quantiles use linear interpolation between order statistics (numpy's default `linear`).
//! - the histogram has Sturges' `ceil(log2 n) + 1` equal-width bins over `[min, max]` (at most 64);
//!   the last bin is closed on the right, as numpy's.
//! - categorical frequencies are sorted by count (descending) then value; at most
//!   [`MAX_CATEGORIES`] are listed (a reference lists up to [`MAX_REFERENCE_CATEGORIES`]) and
//!   the rest are summed in `other`.
//!
//! Everything is computed in a fixed order, so the same data gives the same JSON, byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Quantiles recorded for numeric columns.
pub const QUANTILES: [f64; 11] = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0];
/// Most categories listed per categorical column of a dataset profile.
pub const MAX_CATEGORIES: usize = 100;
/// Most categories listed per categorical column of a reference profile: a live value outside
/// the list counts as an unseen category, so a reference keeps more.
pub const MAX_REFERENCE_CATEGORIES: usize = 10_000;
/// Most distinct values a reference keeps exactly (see [`Distribution`]): every reference of up
/// to 1,000 rows, where Evidently's default test (KS) works on the raw data.
pub const MAX_EXACT_VALUES: usize = 1_000;
/// Points of the quantile sketch of a reference column with more distinct values: every test
/// walks them once per window, and 400 intervals (a quarter of a percent of the data each) are
/// far finer than a window of a few hundred rows can tell apart.
pub const SKETCH_POINTS: usize = 401;
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
    /// The whole distribution, in reference profiles only (dataset profiles leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
}

/// A numeric column's distribution, kept in reference profiles for the drift tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Distribution {
    /// Every distinct value (ascending) with how often it occurs: tests on it are exact.
    Exact { values: Vec<f64>, counts: Vec<u64> },
    /// `quantiles[i]` is the `i / (len - 1)` quantile (numpy's linear rule): tests on it treat
    /// the data as spread evenly between consecutive quantiles.
    Sketch { quantiles: Vec<f64> },
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

/// Numeric statistics of `values` (nulls already removed; NaNs are counted and dropped here),
/// as a dataset profile keeps them.
pub fn numeric_stats(values: &[f64]) -> NumericStats {
    numeric_stats_with(values, false)
}

/// Numeric statistics of `values` with their [`Distribution`], as a reference profile keeps them.
pub fn reference_numeric_stats(values: &[f64]) -> NumericStats {
    numeric_stats_with(values, true)
}

fn numeric_stats_with(values: &[f64], with_distribution: bool) -> NumericStats {
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
            distribution: None,
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
        distribution: with_distribution.then(|| distribution(&sorted, distinct)),
    }
}

/// The distribution of sorted, non-empty `sorted` with `distinct` values.
fn distribution(sorted: &[f64], distinct: u64) -> Distribution {
    if distinct as usize <= MAX_EXACT_VALUES {
        let mut values: Vec<f64> = Vec::with_capacity(distinct as usize);
        let mut counts: Vec<u64> = Vec::with_capacity(distinct as usize);
        for &v in sorted {
            match values.last() {
                Some(&last) if last == v => *counts.last_mut().expect("a count per value") += 1,
                _ => {
                    values.push(v);
                    counts.push(1);
                }
            }
        }
        Distribution::Exact { values, counts }
    } else {
        let last = (SKETCH_POINTS - 1) as f64;
        Distribution::Sketch {
            quantiles: (0..SKETCH_POINTS)
                .map(|i| quantile_sorted(sorted, i as f64 / last))
                .collect(),
        }
    }
}

/// numpy's default (`linear`) quantile of sorted, non-empty `sorted`.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
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

/// Category frequencies from value counts, listing at most `max_categories`.
pub fn categorical_stats(counts: &BTreeMap<&str, u64>, max_categories: usize) -> CategoricalStats {
    let mut freq: Vec<(String, u64)> = counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    // Stable sort on an already value-sorted list: ties stay in value order.
    freq.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let other = freq.iter().skip(max_categories).map(|(_, c)| c).sum();
    freq.truncate(max_categories);
    CategoricalStats {
        distinct: counts.len() as u64,
        frequencies: freq,
        other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.distribution, None);
        let empty = numeric_stats(&[]);
        assert_eq!((empty.min, empty.quantiles.len()), (None, 0));
        let constant = numeric_stats(&[2.0, 2.0]);
        assert_eq!(constant.histogram.counts, vec![2]);
    }

    #[test]
    fn reference_distributions_are_exact_or_sketched() {
        let s = reference_numeric_stats(&[3.0, 1.0, 3.0, f64::NAN, 2.0, 3.0]);
        assert_eq!(
            s.distribution,
            Some(Distribution::Exact {
                values: vec![1.0, 2.0, 3.0],
                counts: vec![1, 1, 3]
            })
        );
        let many: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 10.0).collect();
        let s = reference_numeric_stats(&many);
        let Some(Distribution::Sketch { quantiles }) = &s.distribution else {
            panic!("expected a sketch: {:?}", s.distribution);
        };
        assert_eq!(quantiles.len(), SKETCH_POINTS);
        assert_eq!((quantiles[0], quantiles[SKETCH_POINTS - 1]), (0.0, 999.9));
        // numpy: np.quantile(np.arange(10000) / 10, 0.5) == 499.95
        assert!((quantiles[SKETCH_POINTS / 2] - 499.95).abs() < 1e-9);
        // A reference profile reads back as it was written (to the last bit of JSON parsing).
        let json = serde_json::to_string(&s).expect("json");
        let back: NumericStats = serde_json::from_str(&json).expect("parse");
        let Some(Distribution::Sketch { quantiles: read }) = &back.distribution else {
            panic!("read back: {:?}", back.distribution);
        };
        assert!(read
            .iter()
            .zip(quantiles)
            .all(|(a, b)| (a - b).abs() <= 1e-12 * b.abs().max(1.0)));
    }

    #[test]
    fn categories_beyond_the_limit_are_summed() {
        let counts: BTreeMap<&str, u64> = [("a", 3), ("b", 5), ("c", 1)].into_iter().collect();
        let c = categorical_stats(&counts, 2);
        assert_eq!(
            c.frequencies,
            vec![("b".to_string(), 5), ("a".to_string(), 3)]
        );
        assert_eq!((c.other, c.distinct), (1, 3));
    }
}
