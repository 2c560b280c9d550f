//! Deterministic random data and tolerance checks shared by the GPU tests (`tests/gpu.rs`) and
//! the benchmark (`examples/gpu_bench.rs`). Not part of the serving API.

#![forbid(unsafe_code)]

/// SplitMix64: tiny, fast, good enough for test data, and identical on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [0, n); 0 when n == 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Replaces about `fraction` of `v` with special values: NaN, ±Inf, ±0, huge and tiny
    /// magnitudes.
    pub fn sprinkle_specials(&mut self, v: &mut [f32], fraction: f32) {
        const SPECIALS: [f32; 9] = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1.0e30,
            -1.0e30,
            1.0e-30,
            -3.0e38,
        ];
        for x in v.iter_mut() {
            if self.unit() < fraction {
                *x = SPECIALS[self.below(SPECIALS.len())];
            }
        }
    }
}

/// Seed for "fresh random inputs": `NEREID_TEST_SEED` when set (to reproduce a failure), else
/// derived from the clock. Callers print it.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var("NEREID_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return s;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Whether `got` matches `want`: both NaN, equal (infinities included), or
/// `|got - want| <= abs + rel * max(|got|, |want|)`.
pub fn close(got: f32, want: f32, rel: f32, abs: f32) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    if got == want {
        return true;
    }
    if got.is_infinite() || want.is_infinite() {
        return false;
    }
    (got - want).abs() <= abs + rel * got.abs().max(want.abs())
}

/// Checks every element with [`close`]; the error names the first mismatch and counts them all.
pub fn check_close(
    what: &str,
    got: &[f32],
    want: &[f32],
    rel: f32,
    abs: f32,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| !close(got[i], want[i], rel, abs))
        .collect();
    match bad.first() {
        None => Ok(()),
        Some(&i) => Err(format!(
            "{what}: {} of {} values differ (rel {rel:e}, abs {abs:e}); first at {i}: got {:e}, \
             want {:e}",
            bad.len(),
            got.len(),
            got[i],
            want[i]
        )),
    }
}

/// Bit-for-bit equality, except that any NaN equals any NaN.
pub fn check_exact(what: &str, got: &[f32], want: &[f32]) -> Result<(), String> {
    check_close(what, got, want, 0.0, 0.0).and_then(|()| {
        match (0..got.len()).find(|&i| !got[i].is_nan() && got[i].to_bits() != want[i].to_bits()) {
            None => Ok(()),
            Some(i) => Err(format!(
                "{what}: value {i} differs in sign of zero: got {:e}, want {:e}",
                got[i], want[i]
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let a: Vec<f32> = Rng::new(7).vec(1000, -2.0, 3.0);
        assert_eq!(a, Rng::new(7).vec(1000, -2.0, 3.0));
        assert!(a.iter().all(|&v| (-2.0..3.0).contains(&v)));
        assert_ne!(a, Rng::new(8).vec(1000, -2.0, 3.0));
    }

    #[test]
    fn closeness_treats_nan_and_inf_strictly() {
        assert!(close(f32::NAN, f32::NAN, 0.0, 0.0));
        assert!(!close(f32::NAN, 1.0, 1.0, 1.0));
        assert!(close(f32::INFINITY, f32::INFINITY, 0.0, 0.0));
        assert!(!close(f32::INFINITY, f32::MAX, 1.0, 1.0));
        assert!(close(1.0, 1.000_001, 1e-5, 0.0));
        assert!(!close(1.0, 1.001, 1e-5, 0.0));
        assert!(check_exact("z", &[0.0], &[-0.0]).is_err());
        assert!(check_close("x", &[1.0, 2.0], &[1.0, 2.5], 1e-3, 0.0)
            .unwrap_err()
            .contains("first at 1"));
    }
}
