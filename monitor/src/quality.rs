//! Data-quality checks of a window: missing values, values outside the reference's range,
//! categories the reference never saw, and values of the wrong type, each counted and tested
//! against what the reference leads one to expect.
//!
//! A check fails when the count is implausibly high for a binomial draw at the expected rate:
//! `P(X >= count | n, rate) < 0.001` (one-sided; quality checks look for breakage, not subtle
//! shifts, so their level is far below the drift tests'). The expected rates:
//! - missing: the reference's missing share, smoothed to `(k + 1) / (n + 2)` so that a
//!   reference without missing values still allows the odd one;
//! - out of range: `2 / (n + 1)`, the chance that a new draw from the same continuous
//!   distribution falls outside the range of `n` reference draws;
//! - unseen category: `(singletons + 1) / (n + 1)`, the Good-Turing estimate of the mass of
//!   categories not yet seen;
//! - wrong type: 0, so a single one fails.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, DiscreteCDF};

/// The level below which a quality check fails.
pub const QUALITY_ALPHA: f64 = 0.001;

/// One quality check of one column in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub count: u64,
    pub share: f64,
    pub expected_share: f64,
    /// `P(X >= count)` at the expected share.
    pub p_value: f64,
    pub failed: bool,
}

impl Check {
    pub fn new(count: u64, rows: u64, expected_share: f64) -> Check {
        let share = if rows == 0 {
            0.0
        } else {
            count as f64 / rows as f64
        };
        let p_value = upper_tail(count, rows, expected_share);
        Check {
            count,
            share,
            expected_share,
            p_value,
            failed: p_value < QUALITY_ALPHA,
        }
    }
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`.
fn upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    match Binomial::new(p, n) {
        Ok(b) => b.sf(k - 1),
        Err(_) => f64::NAN,
    }
}

/// A column's quality counts within a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub rows: u64,
    pub missing: u64,
    pub out_of_range: u64,
    pub unseen: u64,
    pub wrong_type: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.rows += other.rows;
        self.missing += other.missing;
        self.out_of_range += other.out_of_range;
        self.unseen += other.unseen;
        self.wrong_type += other.wrong_type;
    }
}

/// What the reference leads one to expect of a column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub missing: f64,
    /// `None` for categorical columns.
    pub out_of_range: Option<f64>,
    /// `None` for numeric columns.
    pub unseen: Option<f64>,
}

impl Expected {
    pub fn numeric(reference_rows: u64, reference_missing: u64) -> Expected {
        let n = reference_rows + reference_missing;
        Expected {
            missing: (reference_missing as f64 + 1.0) / (n as f64 + 2.0),
            out_of_range: Some(2.0 / (reference_rows as f64 + 1.0)),
            unseen: None,
        }
    }

    pub fn categorical(reference_rows: u64, reference_missing: u64, singletons: u64) -> Expected {
        let n = reference_rows + reference_missing;
        Expected {
            missing: (reference_missing as f64 + 1.0) / (n as f64 + 2.0),
            out_of_range: None,
            unseen: Some((singletons as f64 + 1.0) / (reference_rows as f64 + 1.0)),
        }
    }
}

/// The quality of a column in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub rows: u64,
    pub missing: Check,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_range: Option<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_categories: Option<Check>,
    pub wrong_type: Check,
}

impl QualityReport {
    pub fn new(counts: &Counts, expected: &Expected) -> QualityReport {
        let rows = counts.rows;
        QualityReport {
            rows,
            missing: Check::new(counts.missing, rows, expected.missing),
            out_of_range: expected
                .out_of_range
                .map(|e| Check::new(counts.out_of_range, rows, e)),
            unseen_categories: expected.unseen.map(|e| Check::new(counts.unseen, rows, e)),
            wrong_type: Check::new(counts.wrong_type, rows, 0.0),
        }
    }

    pub fn failed(&self) -> bool {
        self.missing.failed
            || self.wrong_type.failed
            || self.out_of_range.as_ref().is_some_and(|c| c.failed)
            || self.unseen_categories.as_ref().is_some_and(|c| c.failed)
    }

    /// The names of the failed checks.
    pub fn failures(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.missing.failed {
            out.push("missing");
        }
        if self.out_of_range.as_ref().is_some_and(|c| c.failed) {
            out.push("out_of_range");
        }
        if self.unseen_categories.as_ref().is_some_and(|c| c.failed) {
            out.push("unseen_categories");
        }
        if self.wrong_type.failed {
            out.push("wrong_type");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails() {
        // P(X >= 1 | n = 10, p = 0.5) = 1 - 0.5^10.
        assert!((upper_tail(1, 10, 0.5) - (1.0 - 0.5f64.powi(10))).abs() < 1e-12);
        assert_eq!(upper_tail(0, 10, 0.1), 1.0);
        assert_eq!(upper_tail(3, 10, 0.0), 0.0);
    }

    #[test]
    fn checks_fail_only_when_implausible() {
        let expected = Expected::numeric(150, 0);
        // 1000 draws from the reference's own distribution: about 13 outside its range.
        let ok = Check::new(13, 1000, expected.out_of_range.expect("numeric"));
        assert!(!ok.failed, "{ok:?}");
        let broken = Check::new(80, 1000, expected.out_of_range.expect("numeric"));
        assert!(broken.failed, "{broken:?}");
        assert!(Check::new(1, 1000, 0.0).failed);
        assert!(!Check::new(0, 1000, 0.0).failed);
        let report = QualityReport::new(
            &Counts {
                rows: 1000,
                missing: 40,
                ..Counts::default()
            },
            &expected,
        );
        assert_eq!(report.failures(), vec!["missing"]);
    }
}
