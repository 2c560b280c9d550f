//! The server-side view of a window, from the statistics extension: requests, inferences and
//! executions, and where the time went (queue vs. compute), as the difference of two snapshots
//! of `/v2/models/{m}/stats` (or `ModelStatistics`) taken around the window.

use nereid_client::ModelStatisticsResponse;
use serde::Serialize;

/// Cumulative counters of a model (all versions summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub success: u64,
    pub success_ns: u64,
    pub fail: u64,
    pub inferences: u64,
    pub executions: u64,
    pub queue_ns: u64,
    pub compute_input_ns: u64,
    pub compute_infer_ns: u64,
    pub compute_output_ns: u64,
}

impl Counters {
    pub fn of(response: &ModelStatisticsResponse) -> Counters {
        let mut c = Counters::default();
        for m in &response.model_stats {
            c.inferences += m.inference_count;
            c.executions += m.execution_count;
            if let Some(s) = &m.inference_stats {
                let d = |x: &Option<nereid_protocol::inference::StatisticDuration>| {
                    x.as_ref().map_or((0, 0), |d| (d.count, d.ns))
                };
                let (count, ns) = d(&s.success);
                c.success += count;
                c.success_ns += ns;
                c.fail += d(&s.fail).0;
                c.queue_ns += d(&s.queue).1;
                c.compute_input_ns += d(&s.compute_input).1;
                c.compute_infer_ns += d(&s.compute_infer).1;
                c.compute_output_ns += d(&s.compute_output).1;
            }
        }
        c
    }

    /// `self - earlier`, saturating (a model reloaded mid-run restarts its counters).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            success: self.success.saturating_sub(earlier.success),
            success_ns: self.success_ns.saturating_sub(earlier.success_ns),
            fail: self.fail.saturating_sub(earlier.fail),
            inferences: self.inferences.saturating_sub(earlier.inferences),
            executions: self.executions.saturating_sub(earlier.executions),
            queue_ns: self.queue_ns.saturating_sub(earlier.queue_ns),
            compute_input_ns: self
                .compute_input_ns
                .saturating_sub(earlier.compute_input_ns),
            compute_infer_ns: self
                .compute_infer_ns
                .saturating_sub(earlier.compute_infer_ns),
            compute_output_ns: self
                .compute_output_ns
                .saturating_sub(earlier.compute_output_ns),
        }
    }

    pub fn add(&mut self, o: &Counters) {
        self.success += o.success;
        self.success_ns += o.success_ns;
        self.fail += o.fail;
        self.inferences += o.inferences;
        self.executions += o.executions;
        self.queue_ns += o.queue_ns;
        self.compute_input_ns += o.compute_input_ns;
        self.compute_infer_ns += o.compute_infer_ns;
        self.compute_output_ns += o.compute_output_ns;
    }
}

/// Per-request averages over the measured windows, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerSide {
    pub requests: u64,
    pub failed: u64,
    pub inferences: u64,
    pub executions: u64,
    /// Time from arrival to response inside the server.
    pub request_us: f64,
    pub queue_us: f64,
    pub compute_input_us: f64,
    pub compute_infer_us: f64,
    pub compute_output_us: f64,
}

impl ServerSide {
    pub fn from(c: &Counters) -> ServerSide {
        let per = |ns: u64| {
            if c.success == 0 {
                0.0
            } else {
                ns as f64 / c.success as f64 / 1000.0
            }
        };
        ServerSide {
            requests: c.success,
            failed: c.fail,
            inferences: c.inferences,
            executions: c.executions,
            request_us: per(c.success_ns),
            queue_us: per(c.queue_ns),
            compute_input_us: per(c.compute_input_ns),
            compute_infer_us: per(c.compute_infer_ns),
            compute_output_us: per(c.compute_output_ns),
        }
    }

    pub fn compute_us(&self) -> f64 {
        self.compute_input_us + self.compute_infer_us + self.compute_output_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::inference::{InferStatistics, ModelStatistics, StatisticDuration};

    fn stats(success: u64, queue_ns: u64, versions: usize) -> ModelStatisticsResponse {
        let d = |count, ns| Some(StatisticDuration { count, ns });
        ModelStatisticsResponse {
            model_stats: (0..versions)
                .map(|v| ModelStatistics {
                    name: "m".into(),
                    version: v.to_string(),
                    inference_count: success * 2,
                    execution_count: success,
                    inference_stats: Some(InferStatistics {
                        success: d(success, success * 10_000),
                        queue: d(success, queue_ns),
                        compute_infer: d(success, 4_000 * success),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn deltas_and_averages() {
        let before = Counters::of(&stats(10, 1_000, 1));
        let after = Counters::of(&stats(30, 41_000, 1));
        let delta = after.since(&before);
        assert_eq!((delta.success, delta.inferences), (20, 40));
        let s = ServerSide::from(&delta);
        assert_eq!(s.queue_us, 2.0);
        assert_eq!(s.compute_infer_us, 4.0);
        assert_eq!(s.request_us, 10.0);
        assert_eq!(s.compute_us(), 4.0);
        assert_eq!(
            Counters::of(&stats(5, 0, 2)).success,
            10,
            "versions are summed"
        );
        assert_eq!(before.since(&after).success, 0, "saturates");
        assert_eq!(ServerSide::from(&Counters::default()).queue_us, 0.0);
    }
}
