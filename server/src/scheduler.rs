//! Per-model-version scheduling: one batcher actor and N instance workers.
//!
//! ```text
//! submit() ──mpsc──> batcher task (owns batcher::State) ──crossbeam──> instance thread 1..N
//!    ^                     ^   (forms a batch when an         (concatenate inputs, run the
//!    |                     |    instance is idle)              backend, split outputs)
//!    └──── oneshot reply ──┴──────────── idle token ───────────────────┘
//! ```
//! - The batcher task is the only owner of the queue state; it forms a batch only when an
//!   instance is idle, so requests gather into larger batches exactly when instances are busy,
//!   and the next batch forms while the current one runs.
//! - Compute runs on the instances' own OS threads, never on the async runtime.
//! - A request whose caller has gone (reply channel closed) is dropped before compute.
//! - With `preserve_ordering`, replies pass through a [`Sequencer`] so callers are answered in
//!   arrival order even when instances finish out of order.
//! - Dropping the [`Scheduler`] closes the submission channel: the batcher sends what is queued,
//!   then exits; the instance threads finish their batches and exit. That is how an unloaded
//!   version drains.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nereid_protocol::{bytes_elements, Error, Tensor};
use tokio::sync::{mpsc, oneshot};

use crate::backend::Backend;
use crate::batcher::{Decision, Entry, Policy, Reason, State};
use crate::stats::{ExecutionTimes, FailureReason, ModelStats};

/// The result of executing one request.
#[derive(Debug)]
pub struct Executed {
    pub outputs: Vec<Tensor>,
    pub queue: Duration,
    pub times: ExecutionTimes,
}

type Reply = oneshot::Sender<Result<Executed, Error>>;

/// What travels with a queued request.
pub struct Job {
    inputs: Vec<Tensor>,
    reply: Reply,
    /// Arrival order, for `preserve_ordering`.
    sequence: u64,
}

/// A request to queue: its inputs (batch dimension first when the model batches), batch size,
/// priority (0 = default) and requested timeout.
pub struct Submission {
    pub inputs: Vec<Tensor>,
    pub batch_size: u64,
    pub priority: u64,
    pub timeout: Option<Duration>,
}

pub struct Scheduler {
    submissions: mpsc::UnboundedSender<(Submission, Reply)>,
    /// Requests waiting in the queue (`nv_inference_pending_request_count`).
    pending: Arc<AtomicU64>,
}

struct Batch {
    entries: Vec<Entry<Job>>,
    reason: Reason,
}

impl Scheduler {
    /// Starts the batcher task and one worker thread per backend instance. Must be called
    /// inside a tokio runtime.
    pub fn start(
        model: &str,
        policy: Policy,
        instances: Vec<Box<dyn Backend>>,
        stats: Arc<ModelStats>,
    ) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            std::io::Error::other(format!("the scheduler needs a tokio runtime: {e}"))
        })?;
        let (submissions, submitted) = mpsc::unbounded_channel();
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Batch>();
        let sequencer = policy
            .preserve_ordering
            .then(|| Arc::new(Sequencer::default()));
        let pending = Arc::new(AtomicU64::new(0));
        let instance_count = instances.len();
        for (index, backend) in instances.into_iter().enumerate() {
            let worker = Worker {
                backend,
                work: work_rx.clone(),
                idle: idle_tx.clone(),
                stats: Arc::clone(&stats),
                sequencer: sequencer.clone(),
            };
            std::thread::Builder::new()
                .name(format!("{model}-{index}"))
                .spawn(move || worker.run())?;
        }
        let batcher = Batcher {
            stats: Arc::clone(&stats),
            state: State::new(policy),
            submitted,
            idle: idle_rx,
            idle_instances: instance_count,
            work: work_tx,
            sequencer,
            next_sequence: 0,
            pending: Arc::clone(&pending),
        };
        runtime.spawn(batcher.run());
        Ok(Scheduler {
            submissions,
            pending,
        })
    }

    /// Requests waiting for an instance.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Queues a request and waits for its execution.
    pub async fn submit(&self, submission: Submission) -> Result<Executed, Error> {
        let (reply, response) = oneshot::channel();
        self.submissions
            .send((submission, reply))
            .map_err(|_| Error::unavailable("the model's scheduler has stopped"))?;
        response
            .await
            .map_err(|_| Error::internal("the model's scheduler dropped the request"))?
    }
}

/// The batcher actor: owns the queue, decides batches, hands them to idle instances.
struct Batcher {
    stats: Arc<ModelStats>,
    state: State<Job>,
    submitted: mpsc::UnboundedReceiver<(Submission, Reply)>,
    idle: mpsc::UnboundedReceiver<()>,
    idle_instances: usize,
    work: crossbeam_channel::Sender<Batch>,
    sequencer: Option<Arc<Sequencer>>,
    next_sequence: u64,
    pending: Arc<AtomicU64>,
}

impl Batcher {
    async fn run(mut self) {
        let mut open = true;
        loop {
            let now = Instant::now();
            for entry in self.state.expire(now) {
                self.finish(
                    entry.payload,
                    Err(Error::unavailable("Request timeout expired")),
                );
            }
            let mut wake = self.state.next_deadline();
            while self.idle_instances > 0 {
                match self.state.next_batch(now) {
                    Decision::Send(entries, reason) => {
                        let entries = self.without_abandoned(entries);
                        if entries.is_empty() {
                            continue;
                        }
                        self.idle_instances -= 1;
                        if let Err(crossbeam_channel::SendError(batch)) =
                            self.work.send(Batch { entries, reason })
                        {
                            for entry in batch.entries {
                                self.finish(
                                    entry.payload,
                                    Err(Error::unavailable("model instances have stopped")),
                                );
                            }
                        }
                    }
                    Decision::WaitUntil(at) => {
                        wake = Some(wake.map_or(at, |w| w.min(at)));
                        break;
                    }
                    Decision::Empty => break,
                }
            }
            self.pending
                .store(self.state.len() as u64, Ordering::Relaxed);
            if !open && self.state.is_empty() {
                return;
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = self.submitted.recv(), if open => match message {
                    Some((submission, reply)) => {
                        self.admit(submission, reply);
                        // Take everything already waiting before deciding a batch.
                        while let Ok((submission, reply)) = self.submitted.try_recv() {
                            self.admit(submission, reply);
                        }
                    }
                    None => open = false,
                },
                token = self.idle.recv() => match token {
                    Some(()) => self.idle_instances += 1,
                    // Every instance thread is gone: nothing can run any more.
                    None => {
                        for entry in self.state.remove_where(|_| true) {
                            self.finish(entry.payload, Err(Error::unavailable("model instances have stopped")));
                        }
                        return;
                    }
                },
                _ = sleep => {}
            }
        }
    }

    fn admit(&mut self, submission: Submission, reply: Reply) {
        let now = Instant::now();
        let policy = self.state.policy();
        let level = policy.level_of(submission.priority);
        let timeout = policy.timeout_of(level, submission.timeout);
        let shape_key = submission
            .inputs
            .iter()
            .map(|t| t.shape.get(1..).unwrap_or_default().to_vec())
            .collect();
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let entry = Entry {
            batch_size: submission.batch_size as usize,
            shape_key,
            enqueued: now,
            deadline: timeout.map(|t| now + t),
            payload: Job {
                inputs: submission.inputs,
                reply,
                sequence,
            },
        };
        if let Err((_, entry)) = self.state.admit(level, entry) {
            self.finish(
                entry.payload,
                Err(Error::unavailable("Exceeds maximum queue size")),
            );
        }
    }

    /// Drops requests whose caller has gone; they are never computed.
    fn without_abandoned(&mut self, entries: Vec<Entry<Job>>) -> Vec<Entry<Job>> {
        let (kept, gone): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| !e.payload.reply.is_closed());
        for entry in gone {
            // The caller's future is gone, so this is the only place the failure is counted.
            self.stats
                .record_failure(entry.enqueued.elapsed(), FailureReason::Canceled);
            self.finish(
                entry.payload,
                Err(Error::new(
                    nereid_protocol::Code::Cancelled,
                    "request cancelled by the client",
                )),
            );
        }
        kept
    }

    fn finish(&self, job: Job, result: Result<Executed, Error>) {
        deliver(self.sequencer.as_deref(), job.sequence, job.reply, result);
    }
}

fn deliver(
    sequencer: Option<&Sequencer>,
    sequence: u64,
    reply: Reply,
    result: Result<Executed, Error>,
) {
    match sequencer {
        Some(sequencer) => sequencer.deliver(sequence, reply, result),
        // The caller may have gone meanwhile; nothing to do then.
        None => drop(reply.send(result)),
    }
}

/// Releases replies in arrival order (`preserve_ordering`).
#[derive(Default)]
struct Sequencer {
    inner: Mutex<SequencerState>,
}

#[derive(Default)]
struct SequencerState {
    next: u64,
    waiting: BTreeMap<u64, (Reply, Result<Executed, Error>)>,
}

impl Sequencer {
    fn deliver(&self, sequence: u64, reply: Reply, result: Result<Executed, Error>) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.insert(sequence, (reply, result));
        loop {
            let next = state.next;
            let Some((reply, result)) = state.waiting.remove(&next) else {
                break;
            };
            state.next += 1;
            let _ = reply.send(result);
        }
    }
}

/// One model instance: a thread that owns its backend.
struct Worker {
    backend: Box<dyn Backend>,
    work: crossbeam_channel::Receiver<Batch>,
    idle: mpsc::UnboundedSender<()>,
    stats: Arc<ModelStats>,
    sequencer: Option<Arc<Sequencer>>,
}

impl Worker {
    fn run(mut self) {
        let work = self.work.clone();
        for batch in work.iter() {
            self.execute(batch);
            if self.idle.send(()).is_err() {
                break;
            }
        }
    }

    fn execute(&mut self, batch: Batch) {
        let started = Instant::now();
        let sizes: Vec<usize> = batch.entries.iter().map(|e| e.batch_size).collect();
        let total: usize = sizes.iter().sum();
        let queue_times: Vec<Duration> = batch
            .entries
            .iter()
            .map(|e| started.saturating_duration_since(e.enqueued))
            .collect();
        let (jobs, inputs): (Vec<(u64, Reply)>, Vec<Vec<Tensor>>) = batch
            .entries
            .into_iter()
            .map(|e| ((e.payload.sequence, e.payload.reply), e.payload.inputs))
            .unzip();
        tracing::trace!(batch_size = total, requests = jobs.len(), reason = ?batch.reason, "executing batch");

        let inputs = concatenate(inputs, total);
        let input_done = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.backend.execute(inputs)))
            .unwrap_or_else(|_| {
                Err(Error::internal(
                    "the model's backend panicked while executing",
                ))
            });
        let infer_done = Instant::now();
        let split = result.and_then(|outputs| split(outputs, &sizes));
        let times = ExecutionTimes {
            compute_input: input_done - started,
            compute_infer: infer_done - input_done,
            compute_output: infer_done.elapsed(),
        };
        match split {
            Ok(per_request) => {
                self.stats.record_execution(total as u64, times);
                for (((sequence, reply), outputs), queue) in
                    jobs.into_iter().zip(per_request).zip(queue_times)
                {
                    deliver(
                        self.sequencer.as_deref(),
                        sequence,
                        reply,
                        Ok(Executed {
                            outputs,
                            queue,
                            times,
                        }),
                    );
                }
            }
            Err(err) => {
                for (sequence, reply) in jobs {
                    deliver(self.sequencer.as_deref(), sequence, reply, Err(err.clone()));
                }
            }
        }
    }
}

/// Joins the requests' inputs along the batch dimension (byte concatenation: every datatype,
/// BYTES included, is laid out so that this is exact). A single request passes through as is.
fn concatenate(mut requests: Vec<Vec<Tensor>>, total: usize) -> Vec<Tensor> {
    if requests.len() == 1 {
        return requests.pop().unwrap_or_default();
    }
    let mut merged: Vec<Tensor> = Vec::new();
    for (index, first) in requests[0].iter().enumerate() {
        let size: usize = requests.iter().map(|r| r[index].data.len()).sum();
        let mut data = BytesMut::with_capacity(size);
        for request in &requests {
            data.extend_from_slice(&request[index].data);
        }
        let mut shape = first.shape.clone();
        if let Some(batch) = shape.first_mut() {
            *batch = total as i64;
        }
        merged.push(Tensor::new(
            first.name.clone(),
            first.datatype,
            shape,
            data.freeze(),
        ));
    }
    merged
}

/// Splits each batched output back into per-request tensors by batch sizes.
fn split(outputs: Vec<Tensor>, sizes: &[usize]) -> Result<Vec<Vec<Tensor>>, Error> {
    let mut per_request: Vec<Vec<Tensor>> = sizes
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    if sizes.len() == 1 {
        per_request[0] = outputs;
        return Ok(per_request);
    }
    let total: usize = sizes.iter().sum();
    for output in outputs {
        if output.shape.first().copied() != Some(total as i64) {
            return Err(Error::internal(format!(
                "output '{}' has shape {:?}, which does not start with the batch size {total}",
                output.name, output.shape
            )));
        }
        let parts = split_data(&output, sizes, total)?;
        for ((request, size), data) in per_request.iter_mut().zip(sizes).zip(parts) {
            let mut shape = output.shape.clone();
            shape[0] = *size as i64;
            request.push(Tensor::new(
                output.name.clone(),
                output.datatype,
                shape,
                data,
            ));
        }
    }
    Ok(per_request)
}

fn split_data(output: &Tensor, sizes: &[usize], total: usize) -> Result<Vec<Bytes>, Error> {
    let bad = || {
        Error::internal(format!(
            "output '{}' does not divide into its batch",
            output.name
        ))
    };
    let mut parts = Vec::with_capacity(sizes.len());
    match output.datatype.element_size() {
        Some(_) => {
            if output.data.len() % total != 0 {
                return Err(bad());
            }
            let per_item = output.data.len() / total;
            let mut offset = 0;
            for size in sizes {
                parts.push(output.data.slice(offset..offset + size * per_item));
                offset += size * per_item;
            }
        }
        None => {
            // BYTES: walk the length prefixes to find element boundaries.
            let mut ends = Vec::new();
            let mut position = 0;
            for element in bytes_elements(&output.data) {
                position += 4 + element.map_err(|()| bad())?.len();
                ends.push(position);
            }
            if ends.len() % total != 0 {
                return Err(bad());
            }
            let per_item = ends.len() / total;
            let (mut start, mut elements) = (0, 0);
            for size in sizes {
                elements += size * per_item;
                let end = if elements == 0 { 0 } else { ends[elements - 1] };
                parts.push(output.data.slice(start..end));
                start = end;
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::config::parse_pbtxt;
    use nereid_protocol::{encode_bytes_elements, DataType};

    /// Echoes its inputs after a pause; panics on an empty batch; counts batch sizes.
    struct Echo {
        pause: Duration,
        seen: Arc<Mutex<Vec<i64>>>,
    }

    impl Backend for Echo {
        fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
            std::thread::sleep(self.pause);
            let first = inputs.first().expect("test inputs");
            self.seen.lock().unwrap().push(first.shape[0]);
            if first.shape[0] == 99 {
                panic!("asked to panic");
            }
            Ok(inputs)
        }
    }

    fn start(
        batching: &str,
        instances: usize,
        pause: Duration,
    ) -> (Arc<Scheduler>, Arc<Mutex<Vec<i64>>>, Arc<ModelStats>) {
        let config = parse_pbtxt(
            &format!("name: \"m\" backend: \"identity\" max_batch_size: 128 {batching}"),
            "t",
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let backends = (0..instances)
            .map(|_| {
                Box::new(Echo {
                    pause,
                    seen: seen.clone(),
                }) as Box<dyn Backend>
            })
            .collect();
        let stats = Arc::new(ModelStats::default());
        let scheduler = Scheduler::start(
            "m",
            Policy::from_config(&config).unwrap(),
            backends,
            stats.clone(),
        )
        .unwrap();
        (Arc::new(scheduler), seen, stats)
    }

    fn request(batch: usize, value: f32) -> Submission {
        Submission {
            inputs: vec![Tensor::from_f32(
                "x",
                vec![batch as i64, 2],
                &vec![value; batch * 2],
            )],
            batch_size: batch as u64,
            priority: 0,
            timeout: None,
        }
    }

    #[tokio::test]
    async fn batches_concatenate_and_split_back() {
        let (scheduler, seen, stats) = start(
            "dynamic_batching { preferred_batch_size: [3] max_queue_delay_microseconds: 2000000 }",
            1,
            Duration::ZERO,
        );
        let a = {
            let s = scheduler.clone();
            tokio::spawn(async move { s.submit(request(1, 1.0)).await })
        };
        let b = {
            let s = scheduler.clone();
            tokio::spawn(async move { s.submit(request(2, 2.0)).await })
        };
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!(a.outputs[0].to_vec::<f32>(), vec![1.0; 2]);
        assert_eq!(a.outputs[0].shape, vec![1, 2]);
        assert_eq!(b.outputs[0].to_vec::<f32>(), vec![2.0; 4]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![3],
            "one execution of the preferred size"
        );
        let snapshot = stats.snapshot();
        assert_eq!((snapshot.execution_count, snapshot.inference_count), (1, 3));
    }

    #[tokio::test]
    async fn bytes_outputs_split_on_element_boundaries() {
        let outputs = vec![Tensor::new(
            "s",
            DataType::Bytes,
            vec![3, 1],
            encode_bytes_elements(["a", "", "ccc"]),
        )];
        let parts = split(outputs, &[2, 1]).unwrap();
        assert_eq!(parts[0][0].data, encode_bytes_elements(["a", ""]));
        assert_eq!(parts[0][0].shape, vec![2, 1]);
        assert_eq!(parts[1][0].data, encode_bytes_elements(["ccc"]));
    }

    #[tokio::test]
    async fn a_panicking_backend_fails_its_batch_and_keeps_serving() {
        let (scheduler, _, _) = start("", 1, Duration::ZERO);
        let err = scheduler.submit(request(99, 0.0)).await.unwrap_err();
        assert!(err.message.contains("panicked"));
        assert!(scheduler.submit(request(1, 0.0)).await.is_ok());
    }

    #[tokio::test]
    async fn queue_limit_rejects_the_excess() {
        let (scheduler, _, _) = start("dynamic_batching { max_queue_delay_microseconds: 10000000 default_queue_policy { max_queue_size: 2 } }", 1, Duration::ZERO);
        let mut handles = Vec::new();
        for _ in 0..4 {
            let s = scheduler.clone();
            handles.push(tokio::spawn(async move {
                s.submit(request(1, 0.0)).await.map(|_| ())
            }));
            // Let the batcher take each request in before the next.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rejected = 0;
        for h in handles.drain(2..) {
            let err = h.await.unwrap().unwrap_err();
            assert_eq!(err.message, "Exceeds maximum queue size");
            rejected += 1;
        }
        assert_eq!(rejected, 2);
        assert_eq!(scheduler.pending(), 2);
    }

    #[tokio::test]
    async fn timeouts_expire_queued_requests() {
        let (scheduler, _, _) = start("dynamic_batching { max_queue_delay_microseconds: 10000000 default_queue_policy { default_timeout_microseconds: 50000 } }", 1, Duration::ZERO);
        let err = scheduler.submit(request(1, 0.0)).await.unwrap_err();
        assert_eq!(err.message, "Request timeout expired");
    }

    #[tokio::test]
    async fn abandoned_requests_are_not_computed() {
        let (scheduler, seen, _) = start("", 1, Duration::from_millis(100));
        let busy = {
            let s = scheduler.clone();
            tokio::spawn(async move { s.submit(request(1, 0.0)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let abandoned =
            tokio::time::timeout(Duration::from_millis(10), scheduler.submit(request(2, 0.0)))
                .await;
        assert!(abandoned.is_err());
        busy.await.unwrap().unwrap();
        scheduler.submit(request(3, 0.0)).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![1, 3],
            "the abandoned request never ran"
        );
    }

    #[tokio::test]
    async fn instances_run_batches_concurrently() {
        let (scheduler, seen, _) = start("", 4, Duration::from_millis(200));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = scheduler.clone();
                tokio::spawn(async move { s.submit(request(1, 0.0)).await.map(|_| ()) })
            })
            .collect();
        let start = Instant::now();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        // Four sequential executions would take 800 ms.
        assert!(
            start.elapsed() < Duration::from_millis(700),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(seen.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn preserve_ordering_answers_in_arrival_order() {
        let sequencer = Sequencer::default();
        let (tx0, rx0) = oneshot::channel();
        let (tx1, mut rx1) = oneshot::channel();
        let done = || {
            Ok(Executed {
                outputs: vec![],
                queue: Duration::ZERO,
                times: Default::default(),
            })
        };
        sequencer.deliver(1, tx1, done());
        assert!(rx1.try_recv().is_err(), "held until request 0 is answered");
        sequencer.deliver(0, tx0, done());
        assert!(rx0.await.is_ok());
        assert!(rx1.try_recv().is_ok());
    }
}
