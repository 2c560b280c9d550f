//! [`Recorder`]: where request outcomes land while load runs, one [`Window`] at a time.
//!
//! Concurrency: workers (closed loop) or request tasks (open loop) record into the current
//! window under a `std` mutex held for a few additions, never across an `.await`; the step's
//! controller swaps in a fresh window at each boundary. A request belongs to the window in which
//! it completes. Errors are counted by kind and never enter the latency histogram (their own
//! histogram says how long failing took).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nereid_client::ClientError;
use serde::Serialize;

/// Largest latency the histograms hold (one hour, in microseconds); larger values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("static histogram bounds are valid. This is a bug.")
}

/// What happened during one window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// Open loop: how late each send left relative to its scheduled time, in microseconds.
    pub send_lag: Histogram<u64>,
    /// How long failed requests took to fail, in microseconds (a server that refuses overload
    /// should refuse it quickly).
    pub error_latency: Histogram<u64>,
    /// The same from the moment each failed request was actually sent: in an open loop whose
    /// generator falls behind its schedule, what the server took, without the generator's lag.
    pub error_service_latency: Histogram<u64>,
    pub sent: u64,
    pub succeeded: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error kind, to show what went wrong.
    pub error_examples: BTreeMap<String, String>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            latency: histogram(),
            send_lag: histogram(),
            error_latency: histogram(),
            error_service_latency: histogram(),
            sent: 0,
            succeeded: 0,
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
        }
    }
}

impl Window {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &Window) {
        self.latency
            .add(&other.latency)
            .expect("histograms share bounds. This is a bug.");
        self.send_lag
            .add(&other.send_lag)
            .expect("histograms share bounds. This is a bug.");
        self.error_latency
            .add(&other.error_latency)
            .expect("histograms share bounds. This is a bug.");
        self.error_service_latency
            .add(&other.error_service_latency)
            .expect("histograms share bounds. This is a bug.");
        self.sent += other.sent;
        self.succeeded += other.succeeded;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += count;
        }
        for (kind, example) in &other.error_examples {
            self.error_examples
                .entry(kind.clone())
                .or_insert_with(|| example.clone());
        }
    }
}

pub struct Recorder {
    current: Mutex<(Window, Instant)>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            current: Mutex::new((Window::default(), Instant::now())),
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Window, Instant)> {
        // Only counters live here; a panic elsewhere leaves them usable.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request is about to be sent; `lag` is its delay past the scheduled time (open loop).
    pub fn sent(&self, lag: Option<Duration>) {
        let mut guard = self.lock();
        guard.0.sent += 1;
        if let Some(lag) = lag {
            guard.0.send_lag.saturating_record(micros(lag));
        }
    }

    /// A request completed after `latency` (measured by the caller from the right origin).
    pub fn record(&self, outcome: Result<(), ClientError>, latency: Duration) {
        self.record_scheduled(outcome, latency, latency);
    }

    /// An open-loop request completed `latency` after its scheduled time and `since_sent` after
    /// it was actually sent.
    pub fn record_scheduled(
        &self,
        outcome: Result<(), ClientError>,
        latency: Duration,
        since_sent: Duration,
    ) {
        let mut guard = self.lock();
        let window = &mut guard.0;
        match outcome {
            Ok(()) => {
                window.succeeded += 1;
                window.latency.saturating_record(micros(latency));
            }
            Err(err) => {
                window.error_latency.saturating_record(micros(latency));
                window
                    .error_service_latency
                    .saturating_record(micros(since_sent));
                let kind = err.kind();
                if !window.error_examples.contains_key(&kind) {
                    window.error_examples.insert(kind.clone(), err.to_string());
                }
                *window.errors.entry(kind).or_default() += 1;
            }
        }
    }

    /// Requests completed (either way) since the current window started.
    pub fn completed_in_window(&self) -> u64 {
        let guard = self.lock();
        guard.0.succeeded + guard.0.failed()
    }

    /// Ends the current window and starts a new one; returns it with its duration.
    pub fn take(&self) -> (Window, Duration) {
        let now = Instant::now();
        let mut guard = self.lock();
        let window = std::mem::take(&mut guard.0);
        let started = std::mem::replace(&mut guard.1, now);
        (window, now - started)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_not_timed() {
        let r = Recorder::default();
        r.sent(None);
        r.record(Ok(()), Duration::from_micros(100));
        for _ in 0..3 {
            r.sent(None);
            r.record(
                Err(ClientError::Http {
                    status: 400,
                    message: "bad shape".into(),
                }),
                Duration::from_secs(5),
            );
        }
        let (w, _) = r.take();
        assert_eq!((w.sent, w.succeeded, w.failed()), (4, 1, 3));
        assert_eq!(w.errors["http_400"], 3);
        assert_eq!(w.error_examples["http_400"], "HTTP 400: bad shape");
        let l = Latency::of(&w.latency);
        assert_eq!(l.count, 1);
        assert!(l.max >= 100 && l.max < 101, "{l:?}");
        let (next, _) = r.take();
        assert_eq!(next.sent, 0, "take starts a fresh window");
    }

    #[test]
    fn open_loop_failures_are_timed_from_schedule_and_from_send() {
        let r = Recorder::default();
        r.record_scheduled(
            Err(ClientError::Http {
                status: 503,
                message: "Exceeds maximum queue size".into(),
            }),
            Duration::from_millis(900),
            Duration::from_micros(200),
        );
        r.record_scheduled(Ok(()), Duration::from_millis(5), Duration::from_millis(1));
        let (w, _) = r.take();
        let (scheduled, sent) = (
            Latency::of(&w.error_latency),
            Latency::of(&w.error_service_latency),
        );
        assert_eq!((scheduled.count, sent.count), (1, 1));
        assert!(
            scheduled.max >= 899_000 && scheduled.max <= 901_000,
            "{scheduled:?}"
        );
        assert!(sent.max >= 199 && sent.max <= 201, "{sent:?}");
        // Successes keep their latency from the schedule.
        assert!(Latency::of(&w.latency).max >= 4_990, "{w:?}");
    }

    #[test]
    fn percentiles_and_merge() {
        let r = Recorder::default();
        for us in 1..=1000 {
            r.record(Ok(()), Duration::from_micros(us));
        }
        let (mut a, _) = r.take();
        let l = Latency::of(&a.latency);
        assert_eq!(l.count, 1000);
        assert!((l.p50 as i64 - 500).abs() <= 1, "{l:?}");
        assert!((l.p99 as i64 - 990).abs() <= 1, "{l:?}");
        assert!((l.mean - 500.5).abs() < 1.0);
        r.record(
            Err(ClientError::Timeout(Duration::from_secs(1))),
            Duration::ZERO,
        );
        r.sent(Some(Duration::from_millis(3)));
        let (b, _) = r.take();
        a.merge(&b);
        assert_eq!((a.succeeded, a.failed(), a.sent), (1000, 1, 1));
        assert_eq!(Latency::of(&a.send_lag).count, 1);
        assert_eq!(
            Latency::of(&Histogram::<u64>::new(3).unwrap()),
            Latency::default()
        );
    }
}
