//! Per-model-version request queue and instance workers.
//!
//! One bounded MPMC queue per model version; each instance of the model is an OS thread that
//! owns its [`Backend`] and pulls requests from the queue, so instances run concurrently and
//! compute never blocks the async runtime. A request whose caller has gone (its reply channel
//! closed) is dropped before compute. Dropping the [`Scheduler`] closes the queue: workers
//! finish what is queued and exit, which is how an unloaded version drains.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use nereid_protocol::{Error, Tensor};
use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::stats::{ExecutionTimes, ModelStats};

/// Requests queued per instance before new ones are rejected with 503 (backpressure instead
/// of unbounded queueing).
pub const QUEUE_CAPACITY_PER_INSTANCE: usize = 1024;

/// The result of executing one request.
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub times: ExecutionTimes,
}

struct Job {
    inputs: Vec<Tensor>,
    batch_size: u64,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Executed, Error>>,
}

pub struct Scheduler {
    queue: Sender<Job>,
}

impl Scheduler {
    /// Starts one worker thread per backend instance.
    pub fn start(
        model: &str,
        instances: Vec<Box<dyn Backend>>,
        stats: Arc<ModelStats>,
    ) -> std::io::Result<Self> {
        let (queue, receiver) =
            crossbeam_channel::bounded(QUEUE_CAPACITY_PER_INSTANCE * instances.len().max(1));
        for (index, backend) in instances.into_iter().enumerate() {
            let receiver = receiver.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name(format!("{model}-{index}"))
                .spawn(move || run_instance(backend, receiver, stats))?;
        }
        Ok(Scheduler { queue })
    }

    /// Queues a request and waits for its execution.
    pub async fn submit(&self, inputs: Vec<Tensor>, batch_size: u64) -> Result<Executed, Error> {
        let (reply, response) = oneshot::channel();
        let job = Job {
            inputs,
            batch_size,
            enqueued: Instant::now(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::unavailable("Exceeds maximum queue size"))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::unavailable("model instances have stopped"))
            }
        }
        response
            .await
            .map_err(|_| Error::internal("model instance stopped before replying"))?
    }
}

fn run_instance(mut backend: Box<dyn Backend>, queue: Receiver<Job>, stats: Arc<ModelStats>) {
    for job in queue.iter() {
        if job.reply.is_closed() {
            continue;
        }
        let queue_time = job.enqueued.elapsed();
        let start = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| backend.execute(job.inputs)))
            .unwrap_or_else(|_| {
                Err(Error::internal(
                    "the model's backend panicked while executing",
                ))
            });
        let times = ExecutionTimes {
            compute_infer: start.elapsed(),
            ..Default::default()
        };
        let result = result.map(|outputs| {
            stats.record_execution(job.batch_size, times);
            Executed {
                outputs,
                queue: queue_time,
                times,
            }
        });
        // The caller may have gone while we computed; nothing to do then.
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy(Duration);

    impl Backend for Sleepy {
        fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
            std::thread::sleep(self.0);
            if inputs.is_empty() {
                panic!("no inputs");
            }
            Ok(inputs)
        }
    }

    fn input() -> Vec<Tensor> {
        vec![Tensor::from_f32("x", vec![1, 1], &[1.0])]
    }

    #[tokio::test]
    async fn executes_and_counts() {
        let stats = Arc::new(ModelStats::default());
        let scheduler =
            Scheduler::start("t", vec![Box::new(Sleepy(Duration::ZERO))], stats.clone()).unwrap();
        let out = scheduler.submit(input(), 1).await.unwrap();
        assert_eq!(out.outputs, input());
        assert_eq!(stats.snapshot().execution_count, 1);
    }

    #[tokio::test]
    async fn a_panicking_backend_reports_an_error_and_keeps_serving() {
        let stats = Arc::new(ModelStats::default());
        let scheduler =
            Scheduler::start("t", vec![Box::new(Sleepy(Duration::ZERO))], stats).unwrap();
        let err = scheduler.submit(Vec::new(), 1).await.unwrap_err();
        assert!(err.message.contains("panicked"));
        assert!(scheduler.submit(input(), 1).await.is_ok());
    }

    #[tokio::test]
    async fn instances_run_concurrently() {
        let stats = Arc::new(ModelStats::default());
        let instances: Vec<Box<dyn Backend>> = (0..4)
            .map(|_| Box::new(Sleepy(Duration::from_millis(200))) as Box<dyn Backend>)
            .collect();
        let scheduler = Arc::new(Scheduler::start("t", instances, stats).unwrap());
        let start = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = scheduler.clone();
                tokio::spawn(async move { s.submit(input(), 1).await.map(|_| ()) })
            })
            .collect();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        // Serial execution would take 800 ms; four instances overlap.
        assert!(
            start.elapsed() < Duration::from_millis(700),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn abandoned_requests_are_not_computed() {
        let stats = Arc::new(ModelStats::default());
        let scheduler = Arc::new(
            Scheduler::start(
                "t",
                vec![Box::new(Sleepy(Duration::from_millis(100)))],
                stats.clone(),
            )
            .unwrap(),
        );
        // Occupy the only instance, then queue a request and abandon it.
        let busy = {
            let s = scheduler.clone();
            tokio::spawn(async move { s.submit(input(), 1).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let abandoned =
            tokio::time::timeout(Duration::from_millis(10), scheduler.submit(input(), 1)).await;
        assert!(abandoned.is_err());
        busy.await.unwrap().unwrap();
        scheduler.submit(input(), 1).await.unwrap();
        assert_eq!(
            stats.snapshot().execution_count,
            2,
            "the abandoned request never ran"
        );
    }
}
