//! The drift tests, as Evidently 0.7 computes them (`evidently/legacy/calculations/stattests`,
//! on top of scipy), with its default choice of test per column and its thresholds.
//!
//! Each test compares a reference column ([`NumericReference`] or [`CategoricalReference`])
//! with the current window's values and returns a [`TestOutcome`]: the score (a p-value or a
//! distance, see [`ScoreKind`]), the threshold and the verdict. The formulas, the binning and
//! the zero handling follow Evidently and scipy exactly, so the same reference and current data
//! give the same scores and decisions; with an exact reference distribution (up to
//! [`crate::profile::MAX_EXACT_VALUES`] distinct values, which covers every reference of up to
//! 1,000 rows, where KS is the default) the inputs are the raw data too.
//! Known differences, all measured in the Python comparison suite:
//! - `TVD` is a permutation test: Nereid draws its own 1,000 permutations (seeded per window),
//!   so its p-value differs from Evidently's by Monte Carlo error only.
//! - `ks` with more than 10,000 rows on a side: scipy uses an asymptotic formula, Nereid keeps
//!   the exact count while it is affordable (see [`crate::special::ks_two_sample_pvalue`]).
//! - `mannw` always uses the normal approximation (scipy is exact below 9 rows without ties).

use rand::SeedableRng;
use rand_distr::Distribution as _;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, StudentsT};

use crate::distribution::{CategoricalReference, Merged, NumericReference};
use crate::special::{self, anderson_significance, ks_two_sample_pvalue};

/// How a column's values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Numeric,
    Categorical,
}

/// What a score is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// A p-value: drift when it is small.
    PValue,
    /// A distance or divergence: drift when it is large.
    Distance,
}

/// The tests, by Evidently's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Method {
    #[serde(rename = "ks")]
    Ks,
    #[serde(rename = "chisquare")]
    ChiSquare,
    #[serde(rename = "z")]
    Z,
    #[serde(rename = "wasserstein")]
    Wasserstein,
    #[serde(rename = "jensenshannon")]
    JensenShannon,
    #[serde(rename = "psi")]
    Psi,
    #[serde(rename = "kl_div")]
    KlDiv,
    #[serde(rename = "hellinger")]
    Hellinger,
    #[serde(rename = "TVD")]
    Tvd,
    #[serde(rename = "anderson")]
    Anderson,
    #[serde(rename = "mannw")]
    MannWhitney,
    #[serde(rename = "t_test")]
    TTest,
    #[serde(rename = "ed")]
    Energy,
}

impl Method {
    pub const ALL: [Method; 13] = [
        Method::Ks,
        Method::ChiSquare,
        Method::Z,
        Method::Wasserstein,
        Method::JensenShannon,
        Method::Psi,
        Method::KlDiv,
        Method::Hellinger,
        Method::Tvd,
        Method::Anderson,
        Method::MannWhitney,
        Method::TTest,
        Method::Energy,
    ];

    /// Evidently's name (what `nereid.monitor.test` takes).
    pub fn name(self) -> &'static str {
        match self {
            Method::Ks => "ks",
            Method::ChiSquare => "chisquare",
            Method::Z => "z",
            Method::Wasserstein => "wasserstein",
            Method::JensenShannon => "jensenshannon",
            Method::Psi => "psi",
            Method::KlDiv => "kl_div",
            Method::Hellinger => "hellinger",
            Method::Tvd => "TVD",
            Method::Anderson => "anderson",
            Method::MannWhitney => "mannw",
            Method::TTest => "t_test",
            Method::Energy => "ed",
        }
    }

    /// What the score is, in words (with units: log base, normalisation).
    pub fn description(self) -> &'static str {
        match self {
            Method::Ks => "Kolmogorov-Smirnov two-sample test, p-value",
            Method::ChiSquare => "chi-square goodness of fit to the reference shares, p-value",
            Method::Z => "two-proportion z-test, p-value",
            Method::Wasserstein => "Wasserstein-1 distance in reference standard deviations",
            Method::JensenShannon => "Jensen-Shannon distance, natural log (0 to 0.833)",
            Method::Psi => "population stability index, natural log",
            Method::KlDiv => "Kullback-Leibler divergence of reference from current, natural log",
            Method::Hellinger => "Hellinger distance (0 to 1)",
            Method::Tvd => "total variation distance permutation test, p-value",
            Method::Anderson => "Anderson-Darling k-sample test, p-value (0.001 to 0.25)",
            Method::MannWhitney => "Mann-Whitney U test (reference less than current), p-value",
            Method::TTest => "Student's two-sample t-test, p-value",
            Method::Energy => "energy distance",
        }
    }

    pub fn parse(name: &str) -> Option<Method> {
        let lower = name.trim().to_ascii_lowercase();
        Method::ALL
            .into_iter()
            .find(|m| m.name().to_ascii_lowercase() == lower)
    }

    pub fn score_kind(self) -> ScoreKind {
        match self {
            Method::Wasserstein
            | Method::JensenShannon
            | Method::Psi
            | Method::KlDiv
            | Method::Hellinger
            | Method::Energy => ScoreKind::Distance,
            _ => ScoreKind::PValue,
        }
    }

    /// Evidently's default threshold.
    pub fn default_threshold(self) -> f64 {
        match self {
            Method::Ks | Method::ChiSquare | Method::Z | Method::MannWhitney | Method::TTest => {
                0.05
            }
            Method::Tvd | Method::Anderson => 0.1,
            _ => 0.1,
        }
    }

    /// Evidently's verdict for a score.
    pub fn detects(self, score: f64, threshold: f64) -> bool {
        match self {
            Method::Ks => score <= threshold,
            Method::Energy => score > threshold,
            m if m.score_kind() == ScoreKind::PValue => score < threshold,
            _ => score >= threshold,
        }
    }

    /// Whether the test applies to columns of this type.
    pub fn accepts(self, column: ColumnType) -> bool {
        match column {
            ColumnType::Numeric => self != Method::Tvd,
            ColumnType::Categorical => matches!(
                self,
                Method::ChiSquare
                    | Method::Z
                    | Method::JensenShannon
                    | Method::Psi
                    | Method::KlDiv
                    | Method::Hellinger
                    | Method::Tvd
            ),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Evidently's default test for a column: by reference size, type and the number of distinct
/// values in reference and current together.
pub fn default_method(reference_rows: u64, column: ColumnType, distinct: usize) -> Method {
    match (reference_rows <= 1000, column) {
        (true, ColumnType::Numeric) if distinct > 5 => Method::Ks,
        (true, _) if distinct > 2 => Method::ChiSquare,
        (true, _) => Method::Z,
        (false, ColumnType::Numeric) if distinct > 5 => Method::Wasserstein,
        (false, _) => Method::JensenShannon,
    }
}

/// One column's data for a test: the reference and the current window's values.
pub enum ColumnData<'a> {
    /// `current` sorted ascending, without NaN or infinities.
    Numeric {
        reference: &'a NumericReference,
        current: &'a [f64],
    },
    /// `current`: (category, count) sorted by category.
    Categorical {
        reference: &'a CategoricalReference,
        current: &'a [(String, u64)],
    },
}

/// A test's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub method: Method,
    pub score_kind: ScoreKind,
    /// NaN (JSON null) when the test is undefined for the data (e.g. one category in all).
    #[serde(with = "nan_as_null")]
    pub score: f64,
    pub threshold: f64,
    pub drift: bool,
}

/// Why a test could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TestError {
    #[error("the test '{method}' does not apply to {column:?} columns")]
    NotApplicable { method: Method, column: ColumnType },
    #[error("the current window has no values")]
    Empty,
}

/// Runs `method` on `data` with `threshold` (Evidently's default when `None`). `seed` feeds the
/// permutation test (TVD) only.
pub fn run_test(
    method: Method,
    data: &ColumnData<'_>,
    threshold: Option<f64>,
    seed: u64,
) -> Result<TestOutcome, TestError> {
    run_chosen(Some(method), data, threshold, seed)
}

/// Runs `method`, or Evidently's default choice for the data when `None` (reference and
/// current are lined up once for both).
pub fn run_chosen(
    method: Option<Method>,
    data: &ColumnData<'_>,
    threshold: Option<f64>,
    seed: u64,
) -> Result<TestOutcome, TestError> {
    let column = match data {
        ColumnData::Numeric { .. } => ColumnType::Numeric,
        ColumnData::Categorical { .. } => ColumnType::Categorical,
    };
    if let Some(method) = method.filter(|m| !m.accepts(column)) {
        return Err(TestError::NotApplicable { method, column });
    }
    let (method, score) = match data {
        ColumnData::Numeric { reference, current } => {
            if current.is_empty() {
                return Err(TestError::Empty);
            }
            let method = method
                .unwrap_or_else(|| default_method(reference.rows, column, union_distinct(data)));
            (method, numeric_score(method, reference, current, seed))
        }
        ColumnData::Categorical { reference, current } => {
            if current.is_empty() {
                return Err(TestError::Empty);
            }
            let buckets = Buckets::categorical(reference, current);
            let method = method
                .unwrap_or_else(|| default_method(reference.rows, column, buckets.keys.len()));
            (method, bucket_score(method, &buckets, seed))
        }
    };
    let threshold = threshold.unwrap_or_else(|| method.default_threshold());
    Ok(TestOutcome {
        method,
        score_kind: method.score_kind(),
        score,
        threshold,
        drift: method.detects(score, threshold),
    })
}

/// How many distinct values reference and current have together (for [`default_method`]).
pub fn union_distinct(data: &ColumnData<'_>) -> usize {
    match data {
        // The selection only asks whether there are more than 2 or 5: a reference that has
        // more answers alone.
        ColumnData::Numeric { reference, .. } if reference.distinct > 5 => {
            reference.distinct as usize
        }
        ColumnData::Numeric { reference, current } => {
            let merged = Merged::new(reference, current).distinct();
            merged.max(reference.distinct as usize)
        }
        ColumnData::Categorical { reference, current } => {
            Buckets::categorical(reference, current).keys.len()
        }
    }
}

fn numeric_score(method: Method, reference: &NumericReference, current: &[f64], seed: u64) -> f64 {
    match method {
        Method::Ks => {
            let d = reference.ks_statistic(current);
            ks_two_sample_pvalue(d, reference.rows, current.len() as u64).0
        }
        Method::Wasserstein => reference.wasserstein(current) / reference.std.max(0.001),
        Method::Energy => std::f64::consts::SQRT_2 * reference.squared_cdf_distance(current).sqrt(),
        _ => numeric_score_merged(
            method,
            reference,
            current,
            &Merged::new(reference, current),
            seed,
        ),
    }
}

/// The tests that need reference and current lined up value by value.
fn numeric_score_merged(
    method: Method,
    reference: &NumericReference,
    current: &[f64],
    merged: &Merged,
    seed: u64,
) -> f64 {
    match method {
        Method::Psi | Method::KlDiv | Method::JensenShannon => {
            let (r, c) = binned_numeric(reference, current, merged);
            binned_score(method, r, c)
        }
        Method::Hellinger => hellinger_numeric(merged),
        Method::Anderson => anderson(merged, reference.rows, current.len() as u64),
        Method::MannWhitney => mann_whitney_less(merged),
        Method::TTest => t_test(reference, current),
        Method::ChiSquare | Method::Z | Method::Tvd => {
            bucket_score(method, &Buckets::numeric(merged), seed)
        }
        Method::Ks | Method::Wasserstein | Method::Energy => {
            unreachable!("CDF distances come from the reference's prefix tables. This is a bug.")
        }
    }
}

/// Values or categories with their reference weight and current count.
struct Buckets {
    /// Sort keys: numbers ascending, or categories in byte order (Python's `sorted` on str).
    keys: Vec<String>,
    reference: Vec<f64>,
    current: Vec<f64>,
}

impl Buckets {
    fn numeric(merged: &Merged) -> Buckets {
        Buckets {
            keys: merged
                .values
                .iter()
                .map(|v| crate::distribution::category_of(*v))
                .collect(),
            reference: merged.reference.clone(),
            current: merged.current.clone(),
        }
    }

    fn categorical(reference: &CategoricalReference, current: &[(String, u64)]) -> Buckets {
        let mut b = Buckets {
            keys: Vec::new(),
            reference: Vec::new(),
            current: Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        let r = &reference.counts;
        while i < r.len() || j < current.len() {
            let take_r = j >= current.len() || (i < r.len() && r[i].0 <= current[j].0);
            let take_c = i >= r.len() || (j < current.len() && current[j].0 <= r[i].0);
            let key = if take_r { &r[i].0 } else { &current[j].0 };
            b.keys.push(key.clone());
            b.reference.push(if take_r { r[i].1 } else { 0.0 });
            b.current
                .push(if take_c { current[j].1 as f64 } else { 0.0 });
            if take_r {
                i += 1;
            }
            if take_c {
                j += 1;
            }
        }
        // Categories listed with a zero count are not values of the data.
        let keep: Vec<bool> = b
            .reference
            .iter()
            .zip(&b.current)
            .map(|(r, c)| *r > 0.0 || *c > 0.0)
            .collect();
        let mut k = keep.iter();
        b.keys.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        b.reference.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        b.current.retain(|_| *k.next().unwrap_or(&false));
        b
    }

    fn totals(&self) -> (f64, f64) {
        (self.reference.iter().sum(), self.current.iter().sum())
    }
}

fn bucket_score(method: Method, b: &Buckets, seed: u64) -> f64 {
    let (n_r, n_c) = b.totals();
    match method {
        Method::ChiSquare => {
            // Goodness of fit of the current counts to the reference shares.
            let scale = n_c / n_r;
            let stat: f64 = b
                .reference
                .iter()
                .zip(&b.current)
                .map(|(r, c)| {
                    let expected = r * scale;
                    (c - expected).powi(2) / expected
                })
                .sum();
            let dof = b.keys.len() as f64 - 1.0;
            if dof < 1.0 || stat.is_nan() {
                return f64::NAN;
            }
            match ChiSquared::new(dof) {
                Ok(chi) => chi.sf(stat),
                Err(_) => f64::NAN,
            }
        }
        Method::Z => {
            let one_each = b.reference.iter().filter(|r| **r > 0.0).count() == 1
                && b.current.iter().filter(|c| **c > 0.0).count() == 1
                && b.keys.len() == 1;
            if one_each {
                return 1.0;
            }
            // Share of values that are not the first (smallest) key.
            let p1 = (n_r - b.reference[0]) / n_r;
            let p2 = (n_c - b.current[0]) / n_c;
            let pooled = (p1 * n_r + p2 * n_c) / (n_r + n_c);
            let z = (p1 - p2) / (pooled * (1.0 - pooled) * (1.0 / n_r + 1.0 / n_c)).sqrt();
            2.0 * special::one_minus_normal_cdf(z.abs())
        }
        Method::Psi | Method::KlDiv | Method::JensenShannon => {
            let r = b.reference.iter().map(|x| x / n_r).collect();
            let c = b.current.iter().map(|x| x / n_c).collect();
            binned_score(method, r, c)
        }
        Method::Hellinger => {
            let s: f64 = b
                .reference
                .iter()
                .zip(&b.current)
                .map(|(r, c)| (r / n_r * (c / n_c)).sqrt())
                .sum();
            (1.0 - s.clamp(0.0, 1.0)).sqrt()
        }
        Method::Tvd => tvd_permutation(b, seed),
        _ => f64::NAN,
    }
}

/// Evidently's `get_binned_data` for a numeric column: Sturges bins over reference and current
/// together when the reference has more than 20 distinct values, else one bucket per value;
/// shares of each side's rows.
fn binned_numeric(
    reference: &NumericReference,
    current: &[f64],
    merged: &Merged,
) -> (Vec<f64>, Vec<f64>) {
    let (n_r, n_c) = (reference.rows as f64, current.len() as f64);
    if reference.distinct <= 20 {
        return (
            merged.reference.iter().map(|x| x / n_r).collect(),
            merged.current.iter().map(|x| x / n_c).collect(),
        );
    }
    let lo = merged.values[0];
    let hi = merged.values[merged.values.len() - 1];
    let edges = sturges_edges(lo, hi, reference.rows + current.len() as u64);
    let bins = edges.len() - 1;
    let (mut r, mut c) = (vec![0.0; bins], vec![0.0; bins]);
    for ((v, rw), cw) in merged
        .values
        .iter()
        .zip(&merged.reference)
        .zip(&merged.current)
    {
        if let Some(i) = bin_of(&edges, *v) {
            r[i] += rw;
            c[i] += cw;
        }
    }
    (
        r.into_iter().map(|x| x / n_r).collect(),
        c.into_iter().map(|x| x / n_c).collect(),
    )
}

/// `np.histogram_bin_edges(data, bins="sturges")` for data of `count` values spanning
/// `[lo, hi]`: `ceil(ptp / (ptp / (log2(count) + 1)))` equal bins from `np.linspace`.
fn sturges_edges(lo: f64, hi: f64, count: u64) -> Vec<f64> {
    let (lo, hi, bins) = if lo == hi {
        (lo - 0.5, hi + 0.5, 1)
    } else {
        let width = (hi - lo) / ((count as f64).log2() + 1.0);
        (lo, hi, ((hi - lo) / width).ceil() as usize)
    };
    let step = (hi - lo) / bins as f64;
    (0..=bins)
        .map(|i| if i == bins { hi } else { lo + i as f64 * step })
        .collect()
}

/// numpy's histogram bin of `v` for ascending `edges` (the last bin closed on the right).
fn bin_of(edges: &[f64], v: f64) -> Option<usize> {
    let last = edges.len() - 1;
    if v < edges[0] || v > edges[last] {
        return None;
    }
    if v == edges[last] {
        return Some(last - 1);
    }
    // The last edge <= v.
    Some(edges.partition_point(|e| *e <= v) - 1)
}

/// PSI, KL divergence or Jensen-Shannon distance of two share vectors (Evidently's zero filling
/// for PSI and KL; scipy's normalisation inside `entropy` and `jensenshannon`).
fn binned_score(method: Method, mut r: Vec<f64>, mut c: Vec<f64>) -> f64 {
    match method {
        Method::Psi | Method::KlDiv => {
            fill_zeroes(&mut r);
            fill_zeroes(&mut c);
            if method == Method::Psi {
                r.iter().zip(&c).map(|(r, c)| (r - c) * (r / c).ln()).sum()
            } else {
                let (sr, sc): (f64, f64) = (r.iter().sum(), c.iter().sum());
                r.iter()
                    .zip(&c)
                    .map(|(r, c)| relative_entropy(r / sr, c / sc))
                    .sum()
            }
        }
        _ => {
            let (sr, sc): (f64, f64) = (r.iter().sum(), c.iter().sum());
            let (mut left, mut right) = (0.0, 0.0);
            for (r, c) in r.iter().zip(&c) {
                let (p, q) = (r / sr, c / sc);
                let m = (p + q) / 2.0;
                left += relative_entropy(p, m);
                right += relative_entropy(q, m);
            }
            ((left + right) / 2.0).sqrt()
        }
    }
}

/// scipy's `rel_entr(x, y)`: `x ln(x/y)`, 0 for x = 0, infinite for y = 0 < x.
fn relative_entropy(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else if y == 0.0 {
        f64::INFINITY
    } else {
        x * (x / y).ln()
    }
}

/// Evidently's `feel_zeroes`: zero shares become the smallest non-zero share / 10^6 when that
/// is at most 10^-4, else 10^-4 (no renormalisation).
fn fill_zeroes(shares: &mut [f64]) {
    let smallest = shares
        .iter()
        .copied()
        .filter(|s| *s != 0.0)
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return;
    }
    let fill = if smallest <= 1e-4 {
        smallest / 1e6
    } else {
        1e-4
    };
    for s in shares.iter_mut().filter(|s| **s == 0.0) {
        *s = fill;
    }
}

/// Evidently's numeric Hellinger distance: Sturges bins over the *distinct* values of both
/// samples, density histograms, `sqrt(1 - clip(Σ sqrt(h1 h2) width))`.
fn hellinger_numeric(merged: &Merged) -> f64 {
    let keys = &merged.values;
    let edges = sturges_edges(keys[0], keys[keys.len() - 1], keys.len() as u64);
    let bins = edges.len() - 1;
    let (mut r, mut c) = (vec![0.0; bins], vec![0.0; bins]);
    for ((v, rw), cw) in keys.iter().zip(&merged.reference).zip(&merged.current) {
        if let Some(i) = bin_of(&edges, *v) {
            r[i] += rw;
            c[i] += cw;
        }
    }
    let density = |counts: &[f64]| -> Vec<f64> {
        let total: f64 = counts.iter().sum();
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| n / (edges[i + 1] - edges[i]) / total)
            .collect()
    };
    let (h1, h2) = (density(&r), density(&c));
    let width = (edges[bins] - edges[0]) / bins as f64;
    let s: f64 = h1
        .iter()
        .zip(&h2)
        .map(|(a, b)| (a * b).sqrt() * width)
        .sum();
    (1.0 - s.clamp(0.0, 1.0)).sqrt()
}

/// scipy's `anderson_ksamp([reference, current])` (midrank variant) significance level.
fn anderson(merged: &Merged, n_ref: u64, n_cur: u64) -> f64 {
    if merged.distinct() < 2 {
        return f64::NAN;
    }
    let samples = [
        (&merged.reference, merged.n_reference),
        (&merged.current, merged.n_current),
    ];
    let big_n = merged.n_reference + merged.n_current;
    let mut a2akn = 0.0;
    for (weights, n_i) in samples {
        let (mut before_all, mut before_i, mut inner) = (0.0, 0.0, 0.0);
        for (j, w) in weights.iter().enumerate() {
            let l = merged.reference[j] + merged.current[j];
            let b = before_all + l / 2.0;
            let m = before_i + w / 2.0;
            inner +=
                l / big_n * (big_n * m - b * n_i).powi(2) / (b * (big_n - b) - big_n * l / 4.0);
            before_all += merged.reference[j] + merged.current[j];
            before_i += w;
        }
        a2akn += inner / n_i;
    }
    a2akn *= (big_n - 1.0) / big_n;

    let k = 2.0;
    let n_total = n_ref + n_cur;
    let big_n = n_total as f64;
    let h_sum = 1.0 / n_ref as f64 + 1.0 / n_cur as f64;
    // hs_cs[t] = Σ_{s<=t} 1/(N-1-s) for t < N-2; h = hs_cs[last] + 1; g = Σ_t hs_cs[t]/(t+2).
    let (mut cumulative, mut g) = (0.0, 0.0);
    for t in 0..n_total.saturating_sub(2) {
        cumulative += 1.0 / (n_total - 1 - t) as f64;
        g += cumulative / (t + 2) as f64;
    }
    let h = cumulative + 1.0;
    let a = (4.0 * g - 6.0) * (k - 1.0) + (10.0 - 6.0 * g) * h_sum;
    let b = (2.0 * g - 4.0) * k * k + 8.0 * h * k + (2.0 * g - 14.0 * h - 4.0) * h_sum - 8.0 * h
        + 4.0 * g
        - 6.0;
    let c = (6.0 * h + 2.0 * g - 2.0) * k * k
        + (4.0 * h - 4.0 * g + 6.0) * k
        + (2.0 * h - 6.0) * h_sum
        + 4.0 * h;
    let d = (2.0 * h + 6.0) * k * k - 4.0 * h * k;
    let sigma_sq = (a * big_n.powi(3) + b * big_n.powi(2) + c * big_n + d)
        / ((big_n - 1.0) * (big_n - 2.0) * (big_n - 3.0));
    let a2 = (a2akn - (k - 1.0)) / sigma_sq.sqrt();
    anderson_significance(a2, 2)
}

/// scipy's `mannwhitneyu(x=reference, y=current, alternative="less")` with the normal
/// approximation, tie correction and continuity correction.
fn mann_whitney_less(merged: &Merged) -> f64 {
    let (n1, n2) = (merged.n_reference, merged.n_current);
    let n = n1 + n2;
    let (mut before, mut r1, mut ties) = (0.0, 0.0, 0.0);
    for (r, c) in merged.reference.iter().zip(&merged.current) {
        let t = r + c;
        let rank = before + (t + 1.0) / 2.0;
        r1 += r * rank;
        ties += t * t * t - t;
        before += t;
    }
    let u1 = r1 - n1 * (n1 + 1.0) / 2.0;
    let u2 = n1 * n2 - u1;
    let mu = n1 * n2 / 2.0;
    let s = (n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)))).sqrt();
    let z = (u2 - mu - 0.5) / s;
    special::standard_normal().sf(z).clamp(0.0, 1.0)
}

/// scipy's `ttest_ind(reference, current)`: Student's test with a pooled variance.
fn t_test(reference: &NumericReference, current: &[f64]) -> f64 {
    let (n1, n2) = (reference.rows as f64, current.len() as f64);
    if n1 < 2.0 || n2 < 2.0 {
        return f64::NAN;
    }
    let var1 = reference.std * reference.std * n1 / (n1 - 1.0);
    let mean2 = current.iter().sum::<f64>() / n2;
    let var2 = current.iter().map(|v| (v - mean2).powi(2)).sum::<f64>() / (n2 - 1.0);
    let df = n1 + n2 - 2.0;
    let pooled = ((n1 - 1.0) * var1 + (n2 - 1.0) * var2) / df;
    let t = (reference.mean - mean2) / (pooled * (1.0 / n1 + 1.0 / n2)).sqrt();
    if !t.is_finite() {
        return f64::NAN;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(dist) => (2.0 * dist.sf(t.abs())).min(1.0),
        Err(_) => f64::NAN,
    }
}

/// Evidently's TVD test: the total variation distance of the two share vectors, and the share
/// of 1,000 random relabellings of the pooled rows (a reference-sized draw without replacement,
/// the rest current) whose distance is at least as large.
fn tvd_permutation(b: &Buckets, seed: u64) -> f64 {
    let tvd = |r: &[f64], c: &[f64]| -> f64 {
        let (sr, sc): (f64, f64) = (r.iter().sum(), c.iter().sum());
        0.5 * r
            .iter()
            .zip(c)
            .map(|(x, y)| (x / sr - y / sc).abs())
            .sum::<f64>()
    };
    let observed = tvd(&b.reference, &b.current);
    let pooled: Vec<u64> = b
        .reference
        .iter()
        .zip(&b.current)
        .map(|(r, c)| (r + c).round() as u64)
        .collect();
    let n_ref = b.reference.iter().sum::<f64>().round() as u64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    const ITERATIONS: usize = 1000;
    let mut at_least = 0usize;
    let (mut r, mut c) = (vec![0.0; pooled.len()], vec![0.0; pooled.len()]);
    for _ in 0..ITERATIONS {
        // Multivariate hypergeometric draw of the reference's counts from the pooled rows.
        let mut left_total: u64 = pooled.iter().sum();
        let mut left_draws = n_ref;
        for (i, &k) in pooled.iter().enumerate() {
            let x = if left_draws == 0 || k == 0 {
                0
            } else if k == left_total {
                left_draws
            } else {
                rand_distr::Hypergeometric::new(left_total, k, left_draws)
                    .map(|h| h.sample(&mut rng))
                    .unwrap_or(0)
            };
            r[i] = x as f64;
            c[i] = (k - x) as f64;
            left_total -= k;
            left_draws -= x;
        }
        if observed <= tvd(&r, &c) {
            at_least += 1;
        }
    }
    at_least as f64 / ITERATIONS as f64
}

/// Serialises NaN as JSON null (and reads null back as NaN).
pub(crate) mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_none()
        } else {
            // JSON has no infinity: the largest finite value keeps the order.
            s.serialize_f64(if *v > 0.0 { f64::MAX } else { f64::MIN })
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::reference_numeric_stats;

    fn numeric(values: &[f64]) -> NumericReference {
        NumericReference::from_stats(&reference_numeric_stats(values)).expect("reference")
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn default_selection_is_evidentlys() {
        assert_eq!(default_method(150, ColumnType::Numeric, 35), Method::Ks);
        assert_eq!(
            default_method(1000, ColumnType::Numeric, 5),
            Method::ChiSquare
        );
        assert_eq!(default_method(1000, ColumnType::Numeric, 2), Method::Z);
        assert_eq!(
            default_method(150, ColumnType::Categorical, 3),
            Method::ChiSquare
        );
        assert_eq!(default_method(150, ColumnType::Categorical, 2), Method::Z);
        assert_eq!(
            default_method(1001, ColumnType::Numeric, 6),
            Method::Wasserstein
        );
        assert_eq!(
            default_method(1001, ColumnType::Numeric, 5),
            Method::JensenShannon
        );
        assert_eq!(
            default_method(5000, ColumnType::Categorical, 40),
            Method::JensenShannon
        );
    }

    #[test]
    fn names_round_trip_and_verdicts_follow_evidently() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
        }
        assert_eq!(Method::parse("tvd"), Some(Method::Tvd));
        assert!(Method::Ks.detects(0.05, 0.05));
        assert!(!Method::ChiSquare.detects(0.05, 0.05));
        assert!(Method::Wasserstein.detects(0.1, 0.1));
        assert!(!Method::Energy.detects(0.1, 0.1));
        assert!(!Method::Ks.detects(f64::NAN, 0.05));
    }

    #[test]
    fn identical_data_shows_no_drift() {
        let values: Vec<f64> = (0..200).map(|i| f64::from(i % 37) * 0.25).collect();
        let reference = numeric(&values);
        let current = sorted(values.clone());
        let data = ColumnData::Numeric {
            reference: &reference,
            current: &current,
        };
        for m in Method::ALL
            .into_iter()
            .filter(|m| m.accepts(ColumnType::Numeric))
        {
            let outcome = run_test(m, &data, None, 7).expect("test runs");
            assert!(!outcome.drift, "{m}: {outcome:?}");
        }
    }

    #[test]
    fn hand_computed_scores() {
        // Reference 1,2,3,4; current 3,4,5,6: D = 0.5, W1 = 2, std(ref) = sqrt(1.25).
        let reference = numeric(&[1.0, 2.0, 3.0, 4.0]);
        let current = [3.0, 4.0, 5.0, 6.0];
        let data = ColumnData::Numeric {
            reference: &reference,
            current: &current,
        };
        let w = run_test(Method::Wasserstein, &data, None, 0).expect("w");
        assert!((w.score - 2.0 / 1.25f64.sqrt()).abs() < 1e-12);
        // scipy.stats.ks_2samp([1,2,3,4],[3,4,5,6]).pvalue == 0.7714285714285716
        let ks = run_test(Method::Ks, &data, None, 0).expect("ks");
        assert!(
            (ks.score - 0.771_428_571_428_571_6).abs() < 1e-12,
            "{}",
            ks.score
        );
        // scipy.stats.energy_distance([1,2,3,4],[3,4,5,6]) == 1.3228756555322954
        let ed = run_test(Method::Energy, &data, None, 0).expect("ed");
        assert!(
            (ed.score - 1.322_875_655_532_295_4).abs() < 1e-12,
            "{}",
            ed.score
        );
    }

    #[test]
    fn categorical_tests() {
        let reference = CategoricalReference {
            counts: vec![("a".into(), 50.0), ("b".into(), 30.0), ("c".into(), 20.0)],
            rows: 100,
        };
        let same = vec![("a".to_string(), 50u64), ("b".into(), 30), ("c".into(), 20)];
        let data = ColumnData::Categorical {
            reference: &reference,
            current: &same,
        };
        let chi = run_test(Method::ChiSquare, &data, None, 0).expect("chi");
        assert!((chi.score - 1.0).abs() < 1e-12 && !chi.drift);
        let tvd = run_test(Method::Tvd, &data, None, 0).expect("tvd");
        assert!(tvd.score > 0.9, "{tvd:?}");
        // An unseen category makes the goodness-of-fit statistic infinite.
        let unseen = vec![("a".to_string(), 50u64), ("d".into(), 50)];
        let data = ColumnData::Categorical {
            reference: &reference,
            current: &unseen,
        };
        let chi = run_test(Method::ChiSquare, &data, None, 0).expect("chi");
        assert_eq!(chi.score, 0.0);
        assert!(chi.drift);
        let js = run_test(Method::JensenShannon, &data, None, 0).expect("js");
        assert!(js.drift && js.score <= 0.833, "{js:?}");
        assert_eq!(
            run_test(Method::Ks, &data, None, 0),
            Err(TestError::NotApplicable {
                method: Method::Ks,
                column: ColumnType::Categorical
            })
        );
    }

    #[test]
    fn sturges_matches_numpy() {
        // np.histogram_bin_edges(np.arange(10.0), 'sturges') has 5 bins: ceil(log2(10) + 1).
        let edges = sturges_edges(0.0, 9.0, 10);
        assert_eq!(edges.len(), 6);
        assert_eq!(edges[5], 9.0);
        assert_eq!(bin_of(&edges, 9.0), Some(4));
        assert_eq!(bin_of(&edges, 0.0), Some(0));
        assert_eq!(bin_of(&edges, 1.8), Some(1));
        assert_eq!(sturges_edges(2.0, 2.0, 5), vec![1.5, 2.5]);
    }
}
