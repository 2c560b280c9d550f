//! The distributions behind the tests' p-values that no general statistics crate has: the
//! two-sample Kolmogorov-Smirnov statistic (exact, by counting lattice paths) and the
//! Anderson-Darling k-sample interpolation of Scholz and Stephens. Normal, chi-square and
//! Student's t come from `statrs`.

use statrs::distribution::{ContinuousCDF, Normal};

/// Above this many rows in either sample, scipy's `ks_2samp` stops counting paths exactly.
pub const KS_EXACT_MAX_ROWS: u64 = 10_000;
/// Past this many lattice steps Nereid uses the limiting distribution instead of counting.
const KS_MAX_STEPS: u64 = 50_000_000;

/// How a two-sample KS p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KsMethod {
    Exact,
    Asymptotic,
}

/// `P(D >= d)` for the two-sided two-sample KS statistic of samples of `n1` and `n2` rows,
/// as scipy's `ks_2samp(method='auto')` defines it: `d` is first rounded to the lattice of
/// attainable values (multiples of `1 / lcm(n1, n2)`), then the share of the C(n1+n2, n1)
/// equally likely orderings whose statistic reaches it is counted exactly.
///
/// Beyond [`KS_EXACT_MAX_ROWS`] scipy switches to an asymptotic formula; Nereid keeps counting
/// while the count costs under [`KS_MAX_STEPS`] steps (the band of the lattice the paths may
/// use is narrow for small `d`), then uses Kolmogorov's limiting distribution with Stephens'
/// correction for finite samples.
pub fn ks_two_sample_pvalue(d: f64, n1: u64, n2: u64) -> (f64, KsMethod) {
    if n1 == 0 || n2 == 0 || !d.is_finite() {
        return (f64::NAN, KsMethod::Exact);
    }
    let (m, n) = if n1 >= n2 { (n1, n2) } else { (n2, n1) };
    let g = gcd(m, n);
    let lcm = (m / g) as f64 * n as f64;
    let h = (d * lcm).round();
    if h <= 0.0 {
        return (1.0, KsMethod::Exact);
    }
    // A monitor tests windows of one size against one reference: the same (m, n, h) come back
    // window after window, so each thread remembers the answers (a bounded table).
    let key = (m, n, h as u64);
    if let Some(hit) = KS_CACHE.with(|c| c.borrow().get(&key).copied()) {
        return hit;
    }
    let answer = ks_uncached(m, n, g, lcm, h);
    KS_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KS_CACHE_ENTRIES {
            c.clear();
        }
        c.insert(key, answer);
    });
    answer
}

/// Answers remembered per thread by [`ks_two_sample_pvalue`].
const KS_CACHE_ENTRIES: usize = 1 << 16;

/// (larger size, smaller size, statistic on the lattice) -> answer.
type KsTable = std::collections::HashMap<(u64, u64, u64), (f64, KsMethod)>;

thread_local! {
    static KS_CACHE: std::cell::RefCell<KsTable> = std::cell::RefCell::new(KsTable::new());
}

fn ks_uncached(m: u64, n: u64, g: u64, lcm: f64, h: f64) -> (f64, KsMethod) {
    let d = h / lcm;
    let en = (m as f64 * n as f64) / (m as f64 + n as f64);
    let sqrt_en = en.sqrt();
    let limit = kolmogorov_sf((sqrt_en + 0.12 + 0.11 / sqrt_en) * d).clamp(0.0, 1.0);
    // Far in the tail the exact count is all cancellation (1 - a number within 1e-16 of 1) and
    // costs the most (the band widens with d): the limit is as accurate there, in absolute terms.
    if limit < 1e-12 {
        return (limit, KsMethod::Asymptotic);
    }
    let band = (2.0 * d * n as f64).ceil() as u64 + 2;
    if m <= KS_EXACT_MAX_ROWS || m.saturating_mul(band) <= KS_MAX_STEPS {
        let p = if m == n {
            outside_square(n, h as u64)
        } else {
            1.0 - inside_probability(m, n, h as u64, g)
        };
        if p.is_finite() {
            return (p.clamp(0.0, 1.0), KsMethod::Exact);
        }
    }
    (limit, KsMethod::Asymptotic)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Equal samples of `n`: `P(D >= h/n) = 2 Σ_{k>=1} (-1)^(k+1) C(2n, n-kh) / C(2n, n)`, each ratio
/// formed as a product of `h` factors and the alternating sum evaluated innermost-first, so no
/// large binomial coefficient is ever formed.
fn outside_square(n: u64, h: u64) -> f64 {
    // r_k = C(2n, n-kh) / C(2n, n-(k-1)h) = Π_{j<h} (n-kh+h-j) / (n+kh-h+j+1), the ratio of
    // the k-th term to the (k-1)-th: P = 2 r_1 (1 - r_2 (1 - r_3 (...))).
    let mut p = 0.0;
    let mut k = n / h;
    while k >= 1 {
        let mut ratio = 1.0;
        for j in 0..h {
            let num = (n + h - k * h - j) as f64;
            let den = (n + k * h - h + j + 1) as f64;
            ratio *= num / den;
        }
        p = ratio * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

/// The probability that a uniformly random lattice path from (0, 0) to (m, n), m >= n, stays
/// strictly inside `|i/m - j/n| < h/lcm(m, n)`, i.e. `|n i - m j| < h gcd(m, n)`, at every
/// point. Walked column by column with transition probabilities (from (i, j) the next step goes
/// right with chance (m-i)/(m-i+n-j)), so every value stays in [0, 1]; only the band of rows
/// the condition allows is kept.
fn inside_probability(m: u64, n: u64, h: u64, g: u64) -> f64 {
    let limit = i128::from(h) * i128::from(g);
    let (mi, ni) = (i128::from(m), i128::from(n));
    // Rows j of column i inside the band: (n i - limit)/m < j < (n i + limit)/m.
    let band = |i: u64| -> Option<(u64, u64)> {
        let centre = ni * i128::from(i);
        let lo = (centre - limit).div_euclid(mi) + 1;
        let hi = (centre + limit + mi - 1).div_euclid(mi) - 1;
        let (lo, hi) = (lo.max(0), hi.min(ni));
        (lo <= hi).then_some((lo as u64, hi as u64))
    };
    // 1/k for every k = (m - i) + (n - j) a step can start from: no division in the loop.
    let inverse: Vec<f64> = (0..=(m + n))
        .map(|k| if k == 0 { 0.0 } else { 1.0 / k as f64 })
        .collect();
    let right = |i: u64, j: u64| (m - i) as f64 * inverse[(m - i + n - j) as usize];
    let up = |i: u64, j: u64| (n - j) as f64 * inverse[(m - i + n - j) as usize];
    let mut prev: Vec<f64> = Vec::new();
    let mut prev_lo = 0u64;
    let mut cur: Vec<f64> = Vec::new();
    for i in 0..=m {
        let Some((lo, hi)) = band(i) else {
            return 0.0;
        };
        cur.clear();
        cur.resize((hi - lo + 1) as usize, 0.0);
        for j in lo..=hi {
            let idx = (j - lo) as usize;
            let mut p = if i == 0 && j == 0 { 1.0 } else { 0.0 };
            if i > 0 && j >= prev_lo && ((j - prev_lo) as usize) < prev.len() {
                p += prev[(j - prev_lo) as usize] * right(i - 1, j);
            }
            if idx > 0 {
                p += cur[idx - 1] * up(i, j - 1);
            }
            cur[idx] = p;
        }
        std::mem::swap(&mut prev, &mut cur);
        prev_lo = lo;
    }
    if n >= prev_lo && ((n - prev_lo) as usize) < prev.len() {
        prev[(n - prev_lo) as usize]
    } else {
        0.0
    }
}

/// Kolmogorov's limiting survival function `Q(λ) = 2 Σ_{k>=1} (-1)^(k-1) exp(-2 k² λ²)`.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 0.2 {
        // The series converges slowly there; the value is 1 to double precision.
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let term = (-2.0 * (k as f64).powi(2) * lambda * lambda).exp();
        sum += sign * term;
        if term < 1e-17 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// The standard normal distribution.
pub fn standard_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("the standard normal's parameters are valid. This is a bug.")
}

/// `1 - Φ(x)` computed as scipy's callers do it (`1 - norm.cdf(x)`), which rounds to 0 in the
/// far tail, so that scores match theirs.
pub fn one_minus_normal_cdf(x: f64) -> f64 {
    1.0 - standard_normal().cdf(x)
}

/// Scholz and Stephens' (1987, table 2) interpolation of the k-sample Anderson-Darling
/// significance level for the standardised statistic `a2` with `k` samples, as scipy's
/// `anderson_ksamp` does it: a quadratic least-squares fit of log(significance) on the
/// critical values, capped to [0.001, 0.25].
pub fn anderson_significance(a2: f64, k: usize) -> f64 {
    const B0: [f64; 7] = [0.675, 1.281, 1.645, 1.96, 2.326, 2.573, 3.085];
    const B1: [f64; 7] = [-0.245, 0.25, 0.678, 1.149, 1.822, 2.364, 3.615];
    const B2: [f64; 7] = [-0.105, -0.305, -0.362, -0.391, -0.396, -0.345, -0.154];
    const SIG: [f64; 7] = [0.25, 0.1, 0.05, 0.025, 0.01, 0.005, 0.001];
    let m = (k - 1) as f64;
    let critical: Vec<f64> = (0..7)
        .map(|i| B0[i] + B1[i] / m.sqrt() + B2[i] / m)
        .collect();
    let min = critical.iter().copied().fold(f64::INFINITY, f64::min);
    let max = critical.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if a2 < min {
        return 0.25;
    }
    if a2 > max {
        return 0.001;
    }
    let logs: Vec<f64> = SIG.iter().map(|s| s.ln()).collect();
    let [c0, c1, c2] = quadratic_fit(&critical, &logs);
    (c0 + c1 * a2 + c2 * a2 * a2).exp()
}

/// Least-squares `y ≈ c0 + c1 x + c2 x²`, solved from the normal equations on centred x (3x3,
/// well conditioned for the handful of points it is used on).
fn quadratic_fit(x: &[f64], y: &[f64]) -> [f64; 3] {
    let n = x.len() as f64;
    let centre = x.iter().sum::<f64>() / n;
    let mut s = [0.0f64; 5];
    let mut t = [0.0f64; 3];
    for (&xi, &yi) in x.iter().zip(y) {
        let u = xi - centre;
        let mut p = 1.0;
        for (k, sk) in s.iter_mut().enumerate() {
            *sk += p;
            if k < 3 {
                t[k] += p * yi;
            }
            p *= u;
        }
    }
    // Solve [[s0 s1 s2][s1 s2 s3][s2 s3 s4]] a = t by Cramer's rule.
    let det3 = |a: [[f64; 3]; 3]| {
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    };
    let m = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]];
    let det = det3(m);
    let mut a = [0.0; 3];
    for (col, ai) in a.iter_mut().enumerate() {
        let mut mc = m;
        for row in 0..3 {
            mc[row][col] = t[row];
        }
        *ai = det3(mc) / det;
    }
    // Back from u = x - centre to x.
    [
        a[0] - a[1] * centre + a[2] * centre * centre,
        a[1] - 2.0 * a[2] * centre,
        a[2],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over every ordering of a small pair of samples.
    fn brute_force(n1: u64, n2: u64, d: f64) -> f64 {
        let total = n1 + n2;
        let mut hits = 0u64;
        let mut all = 0u64;
        for mask in 0u64..(1 << total) {
            if mask.count_ones() as u64 != n1 {
                continue;
            }
            all += 1;
            let (mut a, mut b, mut worst) = (0.0f64, 0.0f64, 0.0f64);
            for bit in 0..total {
                if mask & (1 << bit) != 0 {
                    a += 1.0 / n1 as f64;
                } else {
                    b += 1.0 / n2 as f64;
                }
                worst = worst.max((a - b).abs());
            }
            if worst >= d - 1e-12 {
                hits += 1;
            }
        }
        hits as f64 / all as f64
    }

    #[test]
    fn exact_ks_counts_paths() {
        for (n1, n2) in [(3, 5), (5, 3), (4, 4), (6, 4), (2, 9), (7, 7)] {
            let lcm = (n1 * n2 / gcd(n1, n2)) as f64;
            for h in 1..=(lcm as u64) {
                let d = h as f64 / lcm;
                let (p, how) = ks_two_sample_pvalue(d, n1, n2);
                assert_eq!(how, KsMethod::Exact);
                let want = brute_force(n1, n2, d);
                assert!(
                    (p - want).abs() < 1e-12,
                    "n1={n1} n2={n2} d={d}: {p} vs {want}"
                );
            }
        }
        assert_eq!(ks_two_sample_pvalue(0.0, 10, 20).0, 1.0);
    }

    #[test]
    fn scipy_values() {
        // scipy.stats.ks_2samp p-values for these (D, n1, n2), method='exact' (scipy 1.17).
        let cases = [
            (0.2, 150, 1000, 4.821_370_189_249_048e-5),
            (0.1, 150, 200, 0.338_686_812_199_144_37),
            (0.05, 500, 500, 0.560_022_004_887_204_4),
            (0.3, 37, 41, 0.045_226_727_190_093_59),
        ];
        for (d, n1, n2, want) in cases {
            let (p, _) = ks_two_sample_pvalue(d, n1, n2);
            assert!(
                (p - want).abs() <= 1e-9 + 1e-6 * want,
                "D={d} n1={n1} n2={n2}: {p} vs scipy {want}"
            );
        }
    }

    #[test]
    fn kolmogorov_limit() {
        // Q(1.36) ≈ 0.0494, the classic 5% point.
        assert!((kolmogorov_sf(1.358_1) - 0.05).abs() < 1e-4);
        assert_eq!(kolmogorov_sf(0.0), 1.0);
    }

    #[test]
    fn anderson_interpolation_is_capped() {
        assert_eq!(anderson_significance(-1.0, 2), 0.25);
        assert_eq!(anderson_significance(10.0, 2), 0.001);
        // At a critical value the fit returns close to its level.
        let p = anderson_significance(1.96 + 1.149 - 0.391, 2);
        assert!((p - 0.025).abs() < 0.004, "{p}");
    }
}
