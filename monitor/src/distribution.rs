//! Reference and current data of one column in the shape the tests read them.
//!
//! A numeric reference is a weighted sample: ascending distinct points with weights summing to
//! the column's row count. From an exact [`Distribution`] the points are the values and the
//! weights their counts, so every test gives exactly what it gives on the raw data. From a
//! quantile sketch of K+1 points, each of the K intervals holds 1/K of the rows, placed at the
//! interval's midpoint (equal quantiles collapse into one point, so repeated values stay
//! exact). From a format-1 profile without a distribution, each histogram bin's rows are spread
//! over eight evenly spaced points inside it. The error of the last two against the raw data is
//! measured in the tests below and in BENCHMARKS.md.
//!
//! The current window is kept raw. [`Merged`] lines the two up value by value, which is all
//! that the CDF-, rank- and count-based tests need.

use std::collections::BTreeMap;

use crate::profile::{ColumnProfile, Distribution, NumericStats};

/// Sub-points per histogram bin when a reference has no distribution (format 1).
const POINTS_PER_BIN: usize = 8;

/// How exactly a numeric reference reproduces its raw data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fidelity {
    /// Every distinct value with its count.
    Exact,
    /// Evenly spaced quantiles.
    Quantiles,
    /// Histogram bins only.
    Histogram,
}

/// A numeric reference column as a weighted sample.
#[derive(Debug, Clone, PartialEq)]
pub struct NumericReference {
    /// Ascending, distinct.
    pub points: Vec<f64>,
    /// Same length as `points`; sums to `rows`.
    pub weights: Vec<f64>,
    /// Non-NaN values in the reference (the sample size the tests use).
    pub rows: u64,
    pub mean: f64,
    /// Population standard deviation (numpy's `std`).
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Distinct values in the reference data.
    pub distinct: u64,
    pub fidelity: Fidelity,
    /// `cumulative[i]` = the weight of points `..=i` (for mass queries by binary search).
    cumulative: Vec<f64>,
}

impl NumericReference {
    /// `None` when the column has no numeric values.
    pub fn from_stats(stats: &NumericStats) -> Option<NumericReference> {
        let (min, max, mean, std) = (stats.min?, stats.max?, stats.mean?, stats.std?);
        let rows = stats.histogram.counts.iter().sum::<u64>();
        let (points, weights, fidelity) = match &stats.distribution {
            Some(Distribution::Exact { values, counts }) => (
                values.clone(),
                counts.iter().map(|&c| c as f64).collect(),
                Fidelity::Exact,
            ),
            Some(Distribution::Sketch { quantiles }) if quantiles.len() >= 2 => {
                let k = (quantiles.len() - 1) as f64;
                let share = rows as f64 / k;
                let mids = quantiles.windows(2).map(|w| (0.5 * (w[0] + w[1]), share));
                let (p, w) = collapse(mids);
                (p, w, Fidelity::Quantiles)
            }
            _ => {
                let h = &stats.histogram;
                let spread = h.counts.iter().enumerate().flat_map(|(i, &count)| {
                    let (a, b) = (h.edges[i], h.edges[i + 1]);
                    (0..POINTS_PER_BIN).map(move |s| {
                        let at = a + (b - a) * (s as f64 + 0.5) / POINTS_PER_BIN as f64;
                        (at, count as f64 / POINTS_PER_BIN as f64)
                    })
                });
                let (p, w) = collapse(spread);
                (p, w, Fidelity::Histogram)
            }
        };
        if points.is_empty() || rows == 0 {
            return None;
        }
        Some(
            NumericReference {
                cumulative: Vec::new(),
                points,
                weights,
                rows,
                mean,
                std,
                min,
                max,
                distinct: stats.distinct,
                fidelity,
            }
            .indexed(),
        )
    }

    /// The weight of points below `x` (`inclusive`: at or below).
    pub fn mass_below(&self, x: f64, inclusive: bool) -> f64 {
        let n = if inclusive {
            self.points.partition_point(|p| *p <= x)
        } else {
            self.points.partition_point(|p| *p < x)
        };
        if n == 0 {
            0.0
        } else {
            self.cumulative[n - 1]
        }
    }

    /// Fills the prefix table from `weights`.
    fn indexed(mut self) -> Self {
        self.cumulative = cumulative(&self.weights);
        self
    }

    /// The two-sample KS statistic, the Wasserstein-1 distance and ∫ (F - G)² against
    /// `current` (sorted, finite), as scipy computes them on the raw data: one merge walk over
    /// both, without materialising the merge.
    pub fn distances(&self, current: &[f64]) -> (f64, f64, f64) {
        self.walk::<true, true, true>(current)
    }

    /// The two-sample KS statistic alone (see [`NumericReference::distances`]).
    pub fn ks_statistic(&self, current: &[f64]) -> f64 {
        self.walk::<true, false, false>(current).0
    }

    /// The Wasserstein-1 distance alone.
    pub fn wasserstein(&self, current: &[f64]) -> f64 {
        self.walk::<false, true, false>(current).1
    }

    /// ∫ (F - G)² alone (energy distance = √(2 ×) this).
    pub fn squared_cdf_distance(&self, current: &[f64]) -> f64 {
        self.walk::<false, false, true>(current).2
    }

    /// The merge walk, computing only the quantities asked for.
    fn walk<const KS: bool, const W1: bool, const W2: bool>(
        &self,
        current: &[f64],
    ) -> (f64, f64, f64) {
        let (points, cumulative) = (&self.points[..], &self.cumulative[..]);
        let (nr, nc) = (points.len(), current.len());
        if nc == 0 || nr == 0 {
            return (f64::NAN, f64::NAN, f64::NAN);
        }
        let total = cumulative[nr - 1];
        let k = nc as f64;
        let (mut i, mut j) = (0usize, 0usize);
        let (mut fr, mut fc) = (0.0f64, 0.0f64);
        let (mut d, mut w1, mut w2) = (0.0f64, 0.0f64, 0.0f64);
        // Both CDFs are 0 before the first value, so the walk starts there.
        let mut previous = points[0].min(current[0]);
        while i < nr || j < nc {
            let x = if j == nc || (i < nr && points[i] <= current[j]) {
                points[i]
            } else {
                current[j]
            };
            // The CDFs of the last value hold on [previous, x).
            if W1 || W2 {
                let gap = (fr - fc).abs();
                let dx = x - previous;
                if W1 {
                    w1 += gap * dx;
                }
                if W2 {
                    w2 += gap * gap * dx;
                }
            }
            // Reference points are distinct: at most one sits at x.
            if i < nr && points[i] == x {
                fr = cumulative[i] / total;
                i += 1;
            }
            if j < nc && current[j] == x {
                while j < nc && current[j] == x {
                    j += 1;
                }
                fc = j as f64 / k;
            }
            if KS {
                d = d.max((fr - fc).abs());
            }
            previous = x;
        }
        (d, w1, w2)
    }

    /// The reference as a model of `datatype` receives it: every value rounded to that type
    /// (an FP32 input never carries the float64 `0.2` a dataset holds, but `0.2f32`), so that
    /// live values from the tensor tie with the reference values they came from.
    pub fn rounded_to(&self, datatype: nereid_protocol::DataType) -> NumericReference {
        use nereid_protocol::DataType as D;
        let round: fn(f64) -> f64 = match datatype {
            D::Fp32 => |v| f64::from(v as f32),
            D::Fp16 => |v| f64::from(half::f16::from_f64(v)),
            D::Bf16 => |v| f64::from(half::bf16::from_f64(v)),
            _ => return self.clone(),
        };
        let (points, weights) = collapse(
            self.points
                .iter()
                .zip(&self.weights)
                .map(|(p, w)| (round(*p), *w)),
        );
        NumericReference {
            points,
            weights,
            min: round(self.min),
            max: round(self.max),
            ..self.clone()
        }
        .indexed()
    }

    /// The reference as categories: each distinct value with its count (only meaningful for
    /// an exact distribution; a sketch gives its points).
    pub fn as_categories(&self) -> CategoricalReference {
        let mut counts = BTreeMap::new();
        for (p, w) in self.points.iter().zip(&self.weights) {
            *counts.entry(category_of(*p)).or_insert(0.0) += *w;
        }
        CategoricalReference {
            counts: counts.into_iter().collect(),
            rows: self.rows,
        }
    }
}

fn cumulative(weights: &[f64]) -> Vec<f64> {
    let mut total = 0.0;
    weights
        .iter()
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

/// Points in ascending order with weights, equal points merged, zero weights dropped.
fn collapse(points: impl Iterator<Item = (f64, f64)>) -> (Vec<f64>, Vec<f64>) {
    let mut sorted: Vec<(f64, f64)> = points.filter(|(_, w)| *w > 0.0).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut p, mut w): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (x, weight) in sorted {
        match p.last() {
            Some(&last) if last == x => *w.last_mut().expect("a weight per point") += weight,
            _ => {
                p.push(x);
                w.push(weight);
            }
        }
    }
    (p, w)
}

/// How a number reads as a category: integers without a fraction, others in Rust's shortest
/// round-trip form (as Python's `repr` prints them).
pub fn category_of(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A categorical reference column: each listed category with its count.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoricalReference {
    /// (category, count), in category order.
    pub counts: Vec<(String, f64)>,
    /// Non-null values in the reference, listed or not.
    pub rows: u64,
}

impl CategoricalReference {
    pub fn from_profile(column: &ColumnProfile) -> Option<CategoricalReference> {
        let stats = column.categorical.as_ref()?;
        let mut counts: Vec<(String, f64)> = stats
            .frequencies
            .iter()
            .map(|(k, c)| (k.clone(), *c as f64))
            .collect();
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        Some(CategoricalReference {
            counts,
            rows: column.count,
        })
    }

    pub fn contains(&self, category: &str) -> bool {
        self.counts
            .binary_search_by(|(k, _)| k.as_str().cmp(category))
            .is_ok()
    }
}

/// Reference and current numeric data lined up: every distinct value of either, ascending, with
/// its reference weight and current count.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub values: Vec<f64>,
    pub reference: Vec<f64>,
    pub current: Vec<f64>,
    /// Sums of the two weight columns.
    pub n_reference: f64,
    pub n_current: f64,
}

impl Merged {
    /// `current` must be sorted ascending and free of NaN.
    pub fn new(reference: &NumericReference, current: &[f64]) -> Merged {
        let capacity = reference.points.len() + current.len();
        let mut merged = Merged {
            values: Vec::with_capacity(capacity),
            reference: Vec::with_capacity(capacity),
            current: Vec::with_capacity(capacity),
            n_reference: reference.weights.iter().sum(),
            n_current: current.len() as f64,
        };
        let (mut i, mut j) = (0, 0);
        while i < reference.points.len() || j < current.len() {
            let r = reference.points.get(i).copied();
            let c = current.get(j).copied();
            let next = match (r, c) {
                (Some(r), Some(c)) => r.min(c),
                (Some(r), None) => r,
                (None, Some(c)) => c,
                (None, None) => break,
            };
            let mut rw = 0.0;
            if r == Some(next) {
                rw = reference.weights[i];
                i += 1;
            }
            let mut cw = 0.0;
            while current.get(j) == Some(&next) {
                cw += 1.0;
                j += 1;
            }
            merged.values.push(next);
            merged.reference.push(rw);
            merged.current.push(cw);
        }
        merged
    }

    /// Distinct values of reference and current together.
    pub fn distinct(&self) -> usize {
        self.values.len()
    }

    /// The two empirical CDFs after each value (right-continuous, as scipy's `searchsorted(...,
    /// side='right')`).
    pub fn cdfs(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let (mut fr, mut fc) = (0.0, 0.0);
        self.reference.iter().zip(&self.current).map(move |(r, c)| {
            fr += r;
            fc += c;
            (fr / self.n_reference, fc / self.n_current)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{numeric_stats, reference_numeric_stats};

    #[test]
    fn exact_references_are_the_data() {
        let r = NumericReference::from_stats(&reference_numeric_stats(&[2.0, 1.0, 2.0, 5.0]))
            .expect("reference");
        assert_eq!(r.points, vec![1.0, 2.0, 5.0]);
        assert_eq!(r.weights, vec![1.0, 2.0, 1.0]);
        assert_eq!((r.rows, r.fidelity), (4, Fidelity::Exact));
        let m = Merged::new(&r, &[0.5, 2.0, 2.0, 7.0]);
        assert_eq!(m.values, vec![0.5, 1.0, 2.0, 5.0, 7.0]);
        assert_eq!(m.reference, vec![0.0, 1.0, 2.0, 1.0, 0.0]);
        assert_eq!(m.current, vec![1.0, 0.0, 2.0, 0.0, 1.0]);
        let cdfs: Vec<(f64, f64)> = m.cdfs().collect();
        assert_eq!(cdfs[2], (0.75, 0.75));
        assert_eq!(cdfs[4], (1.0, 1.0));
    }

    #[test]
    fn distances_equal_the_merged_view() {
        let values: Vec<f64> = (0..3000)
            .map(|i| ((f64::from(i) * 0.37).sin() * 3.0 * 100.0).round() / 100.0)
            .collect();
        let r = NumericReference::from_stats(&reference_numeric_stats(&values)).expect("reference");
        for current in [
            vec![-5.0, -1.0, 0.0, 0.0, 0.5, 2.0, 9.0],
            vec![0.25],
            (0..200)
                .map(|i| f64::from(i) / 50.0 - 2.0)
                .collect::<Vec<_>>(),
        ] {
            let m = Merged::new(&r, &current);
            let cdfs: Vec<(f64, f64)> = m.cdfs().collect();
            let d = cdfs.iter().map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let (mut w1, mut w2) = (0.0, 0.0);
            for (w, (a, b)) in m.values.windows(2).zip(&cdfs) {
                w1 += (a - b).abs() * (w[1] - w[0]);
                w2 += (a - b) * (a - b) * (w[1] - w[0]);
            }
            let (fd, fw1, fw2) = r.distances(&current);
            assert!((fd - d).abs() < 1e-12, "{fd} {d}");
            assert!((fw1 - w1).abs() < 1e-9 * w1.max(1.0), "{fw1} {w1}");
            assert!((fw2 - w2).abs() < 1e-9 * w2.max(1.0), "{fw2} {w2}");
        }
    }

    #[test]
    fn references_round_to_the_input_type() {
        let r = NumericReference::from_stats(&reference_numeric_stats(&[0.2, 0.2, 7.9, 0.1]))
            .expect("reference");
        let f = r.rounded_to(nereid_protocol::DataType::Fp32);
        assert_eq!(
            f.points,
            vec![f64::from(0.1f32), f64::from(0.2f32), f64::from(7.9f32)]
        );
        assert_eq!(f.weights, vec![1.0, 2.0, 1.0]);
        assert_eq!(f.max, f64::from(7.9f32));
        assert_eq!(r.rounded_to(nereid_protocol::DataType::Fp64), r);
    }

    #[test]
    fn sketches_and_histograms_keep_the_mass() {
        let values: Vec<f64> = (0..5000)
            .map(|i| (f64::from(i) * 0.37).sin() * 3.0)
            .collect();
        for stats in [reference_numeric_stats(&values), numeric_stats(&values)] {
            let r = NumericReference::from_stats(&stats).expect("reference");
            assert_ne!(r.fidelity, Fidelity::Exact);
            let total: f64 = r.weights.iter().sum();
            assert!((total - 5000.0).abs() < 1e-6, "{total}");
            assert!(r.points.windows(2).all(|w| w[0] < w[1]));
            assert!(r.points[0] >= r.min && *r.points.last().expect("points") <= r.max);
        }
    }

    #[test]
    fn numbers_read_as_categories() {
        assert_eq!(category_of(3.0), "3");
        assert_eq!(category_of(-0.5), "-0.5");
        assert_eq!(category_of(0.1 + 0.2), "0.30000000000000004");
    }
}
