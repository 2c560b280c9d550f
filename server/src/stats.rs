//! Per-model-version statistics, the source of the statistics extension (and of metrics).
//!
//! Counting follows Triton: `success`/`fail` count requests, `inference_count` counts batch
//! items, `execution_count` counts model executions; durations are nanoseconds. One mutex per
//! model version: updates are a handful of additions per request, far below compute time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nereid_protocol::inference::{
    InferBatchStatistics, InferStatistics, ModelStatistics, StatisticDuration,
};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    pub ns: u64,
}

impl Counter {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos() as u64;
    }

    fn message(self) -> Option<StatisticDuration> {
        Some(StatisticDuration {
            count: self.count,
            ns: self.ns,
        })
    }
}

/// Time spent in each phase of one execution.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExecutionTimes {
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

/// Why a request failed, as Triton's `nv_inference_request_failure{reason}` classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Refused by the scheduler: queue full or timed out.
    Rejected,
    /// The caller went away before the request ran.
    Canceled,
    /// The backend failed while executing.
    Backend,
    /// Anything else (e.g. a request that does not match the model).
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Rejected,
        FailureReason::Canceled,
        FailureReason::Backend,
        FailureReason::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }
}

/// Successful request latencies in microseconds (1 µs to 1 hour, 3 significant digits).
pub type LatencyHistogram = hdrhistogram::Histogram<u64>;

fn latency_histogram() -> LatencyHistogram {
    LatencyHistogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("static histogram bounds are valid. This is a bug.")
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: Counter,
    pub fail: Counter,
    pub queue: Counter,
    pub compute_input: Counter,
    pub compute_infer: Counter,
    pub compute_output: Counter,
    /// Per batch size: executions of that size, with their phase times.
    pub batches: BTreeMap<u64, [Counter; 3]>,
    /// Failed requests by reason, indexed like [`FailureReason::ALL`].
    pub failures: [u64; 4],
    pub request_latency_us: LatencyHistogram,
    /// Batch inputs an instance found already in its GPU's memory (put there by an earlier
    /// ensemble step on the same GPU).
    pub device_inputs: u64,
    /// Response cache hits (time to look up and copy out) and misses (time to look up and
    /// insert).
    pub cache_hit: Counter,
    pub cache_miss: Counter,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            last_inference_ms: 0,
            inference_count: 0,
            execution_count: 0,
            success: Counter::default(),
            fail: Counter::default(),
            queue: Counter::default(),
            compute_input: Counter::default(),
            compute_infer: Counter::default(),
            compute_output: Counter::default(),
            batches: BTreeMap::new(),
            failures: [0; 4],
            device_inputs: 0,
            request_latency_us: latency_histogram(),
            cache_hit: Counter::default(),
            cache_miss: Counter::default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ModelStats {
    inner: Mutex<Snapshot>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ModelStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        // A panic while holding this lock leaves plain counters behind; keep counting.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Inputs of one execution that were already in the instance's device memory.
    pub fn record_device_inputs(&self, count: u64) {
        if count > 0 {
            self.lock().device_inputs += count;
        }
    }

    /// One model execution over `batch_size` items.
    pub fn record_execution(&self, batch_size: u64, times: ExecutionTimes) {
        let mut s = self.lock();
        s.execution_count += 1;
        s.inference_count += batch_size;
        let entry = s.batches.entry(batch_size).or_default();
        entry[0].add(times.compute_input);
        entry[1].add(times.compute_infer);
        entry[2].add(times.compute_output);
    }

    /// A request that completed; its queue and compute times are attributed to the request.
    pub fn record_success(&self, total: Duration, queue: Duration, times: ExecutionTimes) {
        let mut s = self.lock();
        s.last_inference_ms = now_ms();
        s.success.add(total);
        s.queue.add(queue);
        s.compute_input.add(times.compute_input);
        s.compute_infer.add(times.compute_infer);
        s.compute_output.add(times.compute_output);
        // Saturates at the histogram's upper bound rather than failing.
        s.request_latency_us
            .saturating_record(total.as_micros().max(1) as u64);
    }

    /// A request answered from the response cache: a success that ran nothing.
    pub fn record_cache_hit(&self, total: Duration, lookup: Duration) {
        let mut s = self.lock();
        s.last_inference_ms = now_ms();
        s.success.add(total);
        s.cache_hit.add(lookup);
        s.request_latency_us
            .saturating_record(total.as_micros().max(1) as u64);
    }

    /// A request the cache did not have; `lookup_and_insert` is the cache's share of its time.
    pub fn record_cache_miss(&self, lookup_and_insert: Duration) {
        self.lock().cache_miss.add(lookup_and_insert);
    }

    pub fn record_failure(&self, total: Duration, reason: FailureReason) {
        let mut s = self.lock();
        s.last_inference_ms = now_ms();
        s.fail.add(total);
        let index = FailureReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL. This is a bug.");
        s.failures[index] += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    /// Counters only, without copying the latency histogram (for the statistics extension).
    fn counters(&self) -> Snapshot {
        let s = self.lock();
        Snapshot {
            last_inference_ms: s.last_inference_ms,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            success: s.success,
            fail: s.fail,
            queue: s.queue,
            compute_input: s.compute_input,
            compute_infer: s.compute_infer,
            compute_output: s.compute_output,
            batches: s.batches.clone(),
            failures: s.failures,
            request_latency_us: latency_histogram(),
            device_inputs: s.device_inputs,
            cache_hit: s.cache_hit,
            cache_miss: s.cache_miss,
        }
    }

    /// The statistics extension's message for this model version.
    pub fn to_message(&self, name: &str, version: u64) -> ModelStatistics {
        let s = self.counters();
        ModelStatistics {
            name: name.to_string(),
            version: version.to_string(),
            last_inference: s.last_inference_ms,
            inference_count: s.inference_count,
            execution_count: s.execution_count,
            inference_stats: Some(InferStatistics {
                success: s.success.message(),
                fail: s.fail.message(),
                queue: s.queue.message(),
                compute_input: s.compute_input.message(),
                compute_infer: s.compute_infer.message(),
                compute_output: s.compute_output.message(),
                cache_hit: s.cache_hit.message(),
                cache_miss: s.cache_miss.message(),
            }),
            batch_stats: s
                .batches
                .iter()
                .map(
                    |(&batch_size, [input, infer, output])| InferBatchStatistics {
                        batch_size,
                        compute_input: input.message(),
                        compute_infer: infer.message(),
                        compute_output: output.message(),
                    },
                )
                .collect(),
            memory_usage: Vec::new(),
            response_stats: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_items_and_executions() {
        let stats = ModelStats::default();
        let t = ExecutionTimes {
            compute_input: Duration::from_nanos(10),
            compute_infer: Duration::from_nanos(100),
            compute_output: Duration::from_nanos(1),
        };
        stats.record_execution(4, t);
        stats.record_execution(2, t);
        stats.record_success(Duration::from_nanos(500), Duration::from_nanos(50), t);
        stats.record_failure(Duration::from_nanos(7), FailureReason::Backend);
        let m = stats.to_message("m", 3);
        assert_eq!((m.inference_count, m.execution_count), (6, 2));
        assert_eq!(m.version, "3");
        let inference = m.inference_stats.unwrap();
        assert_eq!(inference.success.unwrap().count, 1);
        assert_eq!(inference.fail.unwrap().ns, 7);
        assert_eq!(inference.cache_hit.unwrap().count, 0);
        assert_eq!(m.batch_stats.len(), 2);
        assert_eq!(m.batch_stats[0].batch_size, 2);
        assert_eq!(m.batch_stats[1].compute_infer.unwrap().ns, 100);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.failures, [0, 0, 1, 0]);
        assert_eq!(snapshot.request_latency_us.len(), 1);
    }
}
