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
use nereid_protocol::{bytes_elements, DeviceData, Error, Tensor};
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
    /// Leave this request's outputs in the instances' device memory.
    outputs_on_device: bool,
}

/// A request to queue: its inputs (batch dimension first when the model batches), batch size,
/// priority (0 = default) and requested timeout.
pub struct Submission {
    pub inputs: Vec<Tensor>,
    pub batch_size: u64,
    pub priority: u64,
    pub timeout: Option<Duration>,
    /// Leave the outputs in device memory when the instance runs on a GPU (ensemble steps
    /// whose outputs feed a step on the same GPU); otherwise they come back on the host.
    pub outputs_on_device: bool,
}

pub struct Scheduler {
    route: Route,
    /// Requests waiting in the queue (`nv_inference_pending_request_count`).
    pending: Arc<AtomicU64>,
    /// Admission by the expected wait of a newcomer.
    wait: Arc<WaitLimit>,
}

/// Admission by expected wait, so that an overloaded model answers the excess at once instead
/// of queueing it for minutes: a request is refused (Triton's "Exceeds maximum queue size",
/// HTTP 503 / gRPC UNAVAILABLE) when the requests already queued would take longer than the
/// limit to clear at the measured cost per request (a moving average of each batch's execution
/// time divided by its requests, so batching's savings count) spread over the instances. Until
/// the first execution there is no measure and every request is admitted.
pub struct WaitLimit {
    limit: Option<Duration>,
    instances: u64,
    /// Nanoseconds of instance time per request (0: not measured yet).
    per_request_ns: AtomicU64,
}

impl WaitLimit {
    pub fn new(limit: Option<Duration>, instances: usize) -> Self {
        WaitLimit {
            limit,
            instances: instances.max(1) as u64,
            per_request_ns: AtomicU64::new(0),
        }
    }

    /// Folds one execution of `requests` requests into the cost per request (weight 1/8).
    fn record(&self, elapsed: Duration, requests: usize) {
        let sample = (elapsed.as_nanos() / requests.max(1) as u128).min(u64::MAX as u128) as u64;
        let old = self.per_request_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            (old - old / 8 + sample / 8).max(1)
        };
        self.per_request_ns.store(new, Ordering::Relaxed);
    }

    /// How long `queued` requests take to clear, once a cost is measured.
    fn expected_wait(&self, queued: u64) -> Option<Duration> {
        let per_request = self.per_request_ns.load(Ordering::Relaxed);
        (per_request > 0)
            .then(|| Duration::from_nanos(queued.saturating_mul(per_request) / self.instances))
    }

    /// Whether a request may join `queued` others.
    fn admit(&self, queued: u64) -> Result<(), Error> {
        let (Some(limit), Some(wait)) = (self.limit, self.expected_wait(queued)) else {
            return Ok(());
        };
        if wait <= limit {
            return Ok(());
        }
        Err(Error::unavailable(format!(
            "Exceeds maximum queue size: {queued} requests are queued, about {:.2} s of work, more than this model's {:.2} s limit",
            wait.as_secs_f64(),
            limit.as_secs_f64()
        )))
    }
}

/// How requests reach the instances.
enum Route {
    /// Through the batcher actor (dynamic batching: batch forming, delays, priorities, queue
    /// policies, ordering).
    Batcher(mpsc::UnboundedSender<(Submission, Reply)>),
    /// Without dynamic batching every request runs alone, first come first served, with no
    /// queue policy to apply: requests go straight to the queue the idle instances take from,
    /// with no actor (and no thread hand-off) in between.
    Direct(crossbeam_channel::Sender<Batch>),
}

struct Batch {
    entries: Vec<Entry<Job>>,
    reason: Reason,
}

impl Scheduler {
    /// Starts one worker thread per backend instance and, for dynamic batching, the batcher
    /// task. Must be called inside a tokio runtime.
    pub fn start(
        model: &str,
        policy: Policy,
        instances: Vec<Box<dyn Backend>>,
        stats: Arc<ModelStats>,
        max_queue_wait: Option<Duration>,
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
        let direct = !policy.batching;
        let instance_count = instances.len();
        let wait = Arc::new(WaitLimit::new(max_queue_wait, instance_count));
        for (index, backend) in instances.into_iter().enumerate() {
            let worker = Worker {
                backend,
                work: work_rx.clone(),
                idle: (!direct).then(|| idle_tx.clone()),
                taken: direct.then(|| Arc::clone(&pending)),
                stats: Arc::clone(&stats),
                sequencer: sequencer.clone(),
                wait: Arc::clone(&wait),
            };
            std::thread::Builder::new()
                .name(format!("{model}-{index}"))
                .spawn(move || worker.run())?;
        }
        if direct {
            return Ok(Scheduler {
                route: Route::Direct(work_tx),
                pending,
                wait,
            });
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
            wait: Arc::clone(&wait),
        };
        runtime.spawn(batcher.run());
        Ok(Scheduler {
            route: Route::Batcher(submissions),
            pending,
            wait,
        })
    }

    /// Whether a request would be admitted now by the wait limit.
    pub fn admits(&self) -> Result<(), Error> {
        self.wait.admit(self.pending.load(Ordering::Relaxed))
    }

    /// Requests waiting for an instance.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Queues a request and waits for its execution.
    pub async fn submit(&self, submission: Submission) -> Result<Executed, Error> {
        let (reply, response) = oneshot::channel();
        match &self.route {
            Route::Batcher(submissions) => submissions
                .send((submission, reply))
                .map_err(|_| Error::unavailable("the model's scheduler has stopped"))?,
            Route::Direct(work) => {
                self.wait.admit(self.pending.load(Ordering::Relaxed))?;
                let entry = Entry {
                    batch_size: submission.batch_size as usize,
                    shape_key: Vec::new(),
                    enqueued: Instant::now(),
                    deadline: None,
                    payload: Job {
                        inputs: submission.inputs,
                        reply,
                        sequence: 0,
                        outputs_on_device: submission.outputs_on_device,
                    },
                };
                self.pending.fetch_add(1, Ordering::Relaxed);
                let batch = Batch {
                    entries: vec![entry],
                    reason: Reason::Single,
                };
                if work.send(batch).is_err() {
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    return Err(Error::unavailable("model instances have stopped"));
                }
            }
        }
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
    wait: Arc<WaitLimit>,
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
                        let entries =
                            without_abandoned(&self.stats, self.sequencer.as_deref(), entries);
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
                outputs_on_device: submission.outputs_on_device,
            },
        };
        if let Err(refused) = self.wait.admit(self.pending.load(Ordering::Relaxed)) {
            self.finish(entry.payload, Err(refused));
            return;
        }
        if let Err((_, entry)) = self.state.admit(level, entry) {
            self.finish(
                entry.payload,
                Err(Error::unavailable("Exceeds maximum queue size")),
            );
        }
    }

    fn finish(&self, job: Job, result: Result<Executed, Error>) {
        deliver(self.sequencer.as_deref(), job.sequence, job.reply, result);
    }
}

/// Drops requests whose caller has gone; they are never computed.
fn without_abandoned(
    stats: &ModelStats,
    sequencer: Option<&Sequencer>,
    entries: Vec<Entry<Job>>,
) -> Vec<Entry<Job>> {
    let (kept, gone): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|e| !e.payload.reply.is_closed());
    for entry in gone {
        // The caller's future is gone, so this is the only place the failure is counted.
        stats.record_failure(entry.enqueued.elapsed(), FailureReason::Canceled);
        deliver(
            sequencer,
            entry.payload.sequence,
            entry.payload.reply,
            Err(Error::new(
                nereid_protocol::Code::Cancelled,
                "request cancelled by the client",
            )),
        );
    }
    kept
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
    /// Batcher route: tells the batcher this instance is free again.
    idle: Option<mpsc::UnboundedSender<()>>,
    /// Direct route: the pending count, which a request leaves when an instance takes it.
    taken: Option<Arc<AtomicU64>>,
    stats: Arc<ModelStats>,
    sequencer: Option<Arc<Sequencer>>,
    wait: Arc<WaitLimit>,
}

impl Worker {
    fn run(mut self) {
        let work = self.work.clone();
        for mut batch in work.iter() {
            if let Some(pending) = &self.taken {
                pending.fetch_sub(1, Ordering::Relaxed);
                batch.entries = without_abandoned(&self.stats, None, batch.entries);
                if batch.entries.is_empty() {
                    continue;
                }
            }
            self.execute(batch);
            if let Some(idle) = &self.idle {
                if idle.send(()).is_err() {
                    break;
                }
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
        let device = self.backend.device();
        let on_device: Vec<bool> = batch
            .entries
            .iter()
            .map(|e| e.payload.outputs_on_device && device.is_some())
            .collect();
        let (jobs, inputs): (Vec<(u64, Reply)>, Vec<Vec<Tensor>>) = batch
            .entries
            .into_iter()
            .map(|e| ((e.payload.sequence, e.payload.reply), e.payload.inputs))
            .unzip();
        tracing::trace!(batch_size = total, requests = jobs.len(), reason = ?batch.reason, "executing batch");

        let result = concatenate(inputs, total, device).inspect(|inputs| {
            let resident = inputs.iter().filter(|t| t.device.is_some()).count();
            self.stats.record_device_inputs(resident as u64);
        });
        let input_done = Instant::now();
        let result = result.and_then(|inputs| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                if on_device.contains(&true) {
                    self.backend.execute_to_device(inputs)
                } else {
                    self.backend.execute(inputs)
                }
            }))
            .unwrap_or_else(|_| {
                Err(Error::internal(
                    "the model's backend panicked while executing",
                ))
            })
        });
        let infer_done = Instant::now();
        let split = result.and_then(|outputs| split(outputs, &sizes, &on_device));
        let times = ExecutionTimes {
            compute_input: input_done - started,
            compute_infer: infer_done - input_done,
            compute_output: infer_done.elapsed(),
        };
        self.wait.record(started.elapsed(), jobs.len());
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
///
/// Inputs in device memory stay there when the instance computes on that `device` (several
/// are joined on the device); anything else is brought to the host first.
fn concatenate(
    mut requests: Vec<Vec<Tensor>>,
    total: usize,
    device: Option<usize>,
) -> Result<Vec<Tensor>, Error> {
    let usable = |t: &Tensor| match &t.device {
        None => true,
        Some(d) => Some(d.ordinal()) == device,
    };
    if requests.len() == 1 {
        let inputs = requests.pop().unwrap_or_default();
        return inputs
            .into_iter()
            .map(|t| if usable(&t) { Ok(t) } else { t.into_host() })
            .collect();
    }
    // One column of pieces per input.
    let mut columns: Vec<Vec<Tensor>> = Vec::new();
    for request in requests {
        for (index, tensor) in request.into_iter().enumerate() {
            if columns.len() <= index {
                columns.push(Vec::new());
            }
            columns[index].push(tensor);
        }
    }
    let mut merged: Vec<Tensor> = Vec::new();
    for pieces in columns {
        let first = &pieces[0];
        let mut shape = first.shape.clone();
        if let Some(batch) = shape.first_mut() {
            *batch = total as i64;
        }
        let (name, datatype) = (first.name.clone(), first.datatype);
        let all_on_device: Option<Vec<Arc<dyn DeviceData>>> = pieces
            .iter()
            .map(|t| t.device.clone().filter(|_| usable(t)))
            .collect();
        if let Some(buffers) = all_on_device {
            let joined = buffers[0].concat(&buffers[1..])?;
            merged.push(Tensor::on_device(name, datatype, shape, joined));
            continue;
        }
        let pieces = pieces
            .into_iter()
            .map(Tensor::into_host)
            .collect::<Result<Vec<_>, _>>()?;
        let size: usize = pieces.iter().map(|t| t.data.len()).sum();
        let mut data = BytesMut::with_capacity(size);
        for piece in &pieces {
            data.extend_from_slice(&piece.data);
        }
        merged.push(Tensor::new(name, datatype, shape, data.freeze()));
    }
    Ok(merged)
}

/// Splits each batched output back into per-request tensors by batch sizes. Outputs in device
/// memory are split there (views of one buffer) for the requests that asked for device outputs
/// (`on_device`) and downloaded for the others.
fn split(
    outputs: Vec<Tensor>,
    sizes: &[usize],
    on_device: &[bool],
) -> Result<Vec<Vec<Tensor>>, Error> {
    let mut per_request: Vec<Vec<Tensor>> = sizes
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    let total: usize = sizes.iter().sum();
    if sizes.len() == 1 {
        per_request[0] = outputs;
    } else {
        for output in outputs {
            if output.shape.first().copied() != Some(total as i64) {
                return Err(Error::internal(format!(
                    "output '{}' has shape {:?}, which does not start with the batch size {total}",
                    output.name, output.shape
                )));
            }
            let parts = split_data(&output, sizes, total)?;
            for ((request, size), part) in per_request.iter_mut().zip(sizes).zip(parts) {
                let mut shape = output.shape.clone();
                shape[0] = *size as i64;
                let mut tensor =
                    Tensor::new(output.name.clone(), output.datatype, shape, part.host);
                tensor.device = part.device;
                request.push(tensor);
            }
        }
    }
    for (request, keep) in per_request.iter_mut().zip(on_device) {
        if !keep && request.iter().any(|t| t.device.is_some()) {
            *request = std::mem::take(request)
                .into_iter()
                .map(Tensor::into_host)
                .collect::<Result<_, _>>()?;
        }
    }
    Ok(per_request)
}

/// One request's share of a batched output.
struct Part {
    host: Bytes,
    device: Option<Arc<dyn DeviceData>>,
}

fn split_data(output: &Tensor, sizes: &[usize], total: usize) -> Result<Vec<Part>, Error> {
    let bad = || {
        Error::internal(format!(
            "output '{}' does not divide into its batch",
            output.name
        ))
    };
    let mut parts = Vec::with_capacity(sizes.len());
    match output.datatype.element_size() {
        Some(_) => {
            let len = output.byte_len();
            if len % total != 0 {
                return Err(bad());
            }
            let per_item = len / total;
            let mut offset = 0;
            for size in sizes {
                let range = offset..offset + size * per_item;
                parts.push(match &output.device {
                    Some(device) => Part {
                        host: Bytes::new(),
                        device: Some(device.slice(range)),
                    },
                    None => Part {
                        host: output.data.slice(range),
                        device: None,
                    },
                });
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
                parts.push(Part {
                    host: output.data.slice(start..end),
                    device: None,
                });
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
        start_with_wait_limit(batching, instances, pause, None)
    }

    fn start_with_wait_limit(
        batching: &str,
        instances: usize,
        pause: Duration,
        max_queue_wait: Option<Duration>,
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
            max_queue_wait,
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
            outputs_on_device: false,
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
        let parts = split(outputs, &[2, 1], &[false, false]).unwrap();
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

    #[test]
    fn wait_limit_refuses_what_would_wait_too_long() {
        let wait = WaitLimit::new(Some(Duration::from_millis(100)), 2);
        // Nothing measured yet: everything is admitted.
        assert!(wait.admit(1_000_000).is_ok());
        // 10 ms per request on 2 instances: 20 queued clear in 100 ms, 21 do not.
        wait.record(Duration::from_millis(40), 4);
        assert!(wait.admit(20).is_ok());
        let refused = wait.admit(21).unwrap_err();
        assert_eq!(refused.code, nereid_protocol::Code::Unavailable);
        assert!(
            refused.message.starts_with(
                "Exceeds maximum queue size: 21 requests are queued, about 0.10 s of work"
            ),
            "{}",
            refused.message
        );
        // The cost follows the measurements (a moving average).
        for _ in 0..64 {
            wait.record(Duration::from_millis(1), 1);
        }
        assert!(wait.admit(150).is_ok());
        // No limit: always admitted.
        let unlimited = WaitLimit::new(None, 1);
        unlimited.record(Duration::from_secs(1), 1);
        assert!(unlimited.admit(1_000_000).is_ok());
    }

    /// A burst on a model without dynamic batching: the excess is refused at once, and
    /// everything admitted is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_beyond_the_wait_limit_is_refused_at_once() {
        let pause = Duration::from_millis(5);
        let (scheduler, _, _) =
            start_with_wait_limit("", 1, pause, Some(Duration::from_millis(50)));
        // One request measures the cost.
        scheduler.submit(request(1, 0.0)).await.unwrap();
        let replies: Vec<_> = (0..200)
            .map(|i| {
                let scheduler = Arc::clone(&scheduler);
                tokio::spawn(async move { scheduler.submit(request(1, i as f32)).await })
            })
            .collect();
        let (mut served, mut refused) = (0, 0);
        for reply in replies {
            match reply.await.unwrap() {
                Ok(_) => served += 1,
                Err(e) => {
                    assert!(
                        e.message.starts_with("Exceeds maximum queue size"),
                        "{}",
                        e.message
                    );
                    refused += 1;
                }
            }
        }
        // About limit / cost requests fit (50 ms / 5 ms = 10, a few more as the queue drains
        // while the burst arrives); without the limit all 200 would queue for a second.
        assert!(refused > 100, "{served} served, {refused} refused");
        assert!(served >= 10, "{served} served, {refused} refused");
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
    async fn without_a_batcher_pending_counts_requests_no_instance_has_taken() {
        let (scheduler, seen, _) = start("", 1, Duration::from_millis(100));
        let submit = |batch| {
            let s = scheduler.clone();
            tokio::spawn(async move { s.submit(request(batch, 0.0)).await.map(|_| ()) })
        };
        let (running, queued) = (submit(1), submit(2));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(scheduler.pending(), 1, "one runs, one waits");
        running.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        assert_eq!(scheduler.pending(), 0);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![1, 2],
            "first come, first served"
        );
    }

    /// Waits inside `execute` until `expected` instances are inside at once (or 10 s pass),
    /// which only concurrent instances can bring about.
    struct Rendezvous {
        inside: Arc<AtomicU64>,
        expected: u64,
    }

    impl Backend for Rendezvous {
        fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
            self.inside.fetch_add(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.inside.load(Ordering::SeqCst) < self.expected {
                if Instant::now() > deadline {
                    return Err(Error::internal("the instances never ran at the same time"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(inputs)
        }
    }

    #[tokio::test]
    async fn instances_run_batches_concurrently() {
        let inside = Arc::new(AtomicU64::new(0));
        let backends = (0..4)
            .map(|_| {
                Box::new(Rendezvous {
                    inside: Arc::clone(&inside),
                    expected: 4,
                }) as Box<dyn Backend>
            })
            .collect();
        let config =
            parse_pbtxt("name: \"m\" backend: \"identity\" max_batch_size: 8", "t").unwrap();
        let scheduler = Arc::new(
            Scheduler::start(
                "m",
                Policy::from_config(&config).unwrap(),
                backends,
                Arc::new(ModelStats::default()),
                None,
            )
            .unwrap(),
        );
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = scheduler.clone();
                tokio::spawn(async move { s.submit(request(1, 0.0)).await.map(|_| ()) })
            })
            .collect();
        // Each execution returns only once all four are running at the same time.
        for h in handles {
            h.await.unwrap().unwrap();
        }
        assert_eq!(inside.load(Ordering::SeqCst), 4);
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

    /// A stand-in for device memory (host bytes that claim to live on device `ordinal`), so the
    /// scheduler's device handling is tested without a GPU.
    #[derive(Debug)]
    struct FakeDevice {
        ordinal: usize,
        bytes: Bytes,
        downloads: Arc<AtomicU64>,
    }

    impl DeviceData for FakeDevice {
        fn ordinal(&self) -> usize {
            self.ordinal
        }
        fn len(&self) -> usize {
            self.bytes.len()
        }
        fn slice(&self, range: std::ops::Range<usize>) -> Arc<dyn DeviceData> {
            Arc::new(FakeDevice {
                ordinal: self.ordinal,
                bytes: self.bytes.slice(range),
                downloads: self.downloads.clone(),
            })
        }
        fn concat(&self, rest: &[Arc<dyn DeviceData>]) -> Result<Arc<dyn DeviceData>, Error> {
            let mut all = BytesMut::from(&self.bytes[..]);
            for other in rest {
                let other = other.as_any().downcast_ref::<FakeDevice>().expect("fake");
                all.extend_from_slice(&other.bytes);
            }
            Ok(Arc::new(FakeDevice {
                ordinal: self.ordinal,
                bytes: all.freeze(),
                downloads: self.downloads.clone(),
            }))
        }
        fn to_host(&self) -> Result<Bytes, Error> {
            self.downloads.fetch_add(1, Ordering::SeqCst);
            Ok(self.bytes.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// Doubles its FP32 input, like a model on device 0: reports whether each batch's input
    /// arrived in device memory, and leaves outputs there when asked.
    struct FakeGpuModel {
        ordinal: Option<usize>,
        input_on_device: Arc<Mutex<Vec<bool>>>,
        downloads: Arc<AtomicU64>,
    }

    impl FakeGpuModel {
        fn run(&mut self, inputs: Vec<Tensor>, to_device: bool) -> Result<Vec<Tensor>, Error> {
            let input = inputs.into_iter().next().expect("one input");
            self.input_on_device
                .lock()
                .unwrap()
                .push(input.device.is_some());
            if input.device.is_some() {
                assert_eq!(
                    self.ordinal,
                    Some(0),
                    "device inputs only reach device backends"
                );
            }
            let values: Vec<f32> = match &input.device {
                Some(d) => bytemuck::pod_collect_to_vec(
                    &d.as_any().downcast_ref::<FakeDevice>().expect("fake").bytes,
                ),
                None => input.to_vec::<f32>(),
            };
            let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
            let out = Tensor::from_f32("y", input.shape.clone(), &doubled);
            if !to_device {
                return Ok(vec![out]);
            }
            let device = FakeDevice {
                ordinal: 0,
                bytes: out.data.clone(),
                downloads: self.downloads.clone(),
            };
            Ok(vec![Tensor::on_device(
                "y",
                DataType::Fp32,
                out.shape,
                Arc::new(device),
            )])
        }
    }

    impl Backend for FakeGpuModel {
        fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
            self.run(inputs, false)
        }
        fn device(&self) -> Option<usize> {
            self.ordinal
        }
        fn execute_to_device(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
            self.run(inputs, self.ordinal.is_some())
        }
    }

    /// A scheduler over one [`FakeGpuModel`], with what it saw: whether each batch's input was
    /// in device memory, the count of device-to-host copies, and the model's statistics.
    struct FakeGpu {
        scheduler: Arc<Scheduler>,
        seen: Arc<Mutex<Vec<bool>>>,
        downloads: Arc<AtomicU64>,
        stats: Arc<ModelStats>,
    }

    fn start_fake(ordinal: Option<usize>) -> FakeGpu {
        let config = parse_pbtxt(
            "name: \"g\" backend: \"candle\" max_batch_size: 16 dynamic_batching { preferred_batch_size: [3] max_queue_delay_microseconds: 2000000 }",
            "t",
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let downloads = Arc::new(AtomicU64::new(0));
        let backend = Box::new(FakeGpuModel {
            ordinal,
            input_on_device: seen.clone(),
            downloads: downloads.clone(),
        }) as Box<dyn Backend>;
        let stats = Arc::new(ModelStats::default());
        let scheduler = Scheduler::start(
            "g",
            Policy::from_config(&config).unwrap(),
            vec![backend],
            stats.clone(),
            None,
        )
        .unwrap();
        FakeGpu {
            scheduler: Arc::new(scheduler),
            seen,
            downloads,
            stats,
        }
    }

    fn device_request(values: &[f32], on_device: bool, downloads: &Arc<AtomicU64>) -> Submission {
        let host = Tensor::from_f32("x", vec![values.len() as i64, 1], values);
        let input = if on_device {
            let device = FakeDevice {
                ordinal: 0,
                bytes: host.data.clone(),
                downloads: downloads.clone(),
            };
            Tensor::on_device("x", DataType::Fp32, host.shape, Arc::new(device))
        } else {
            host
        };
        Submission {
            inputs: vec![input],
            batch_size: values.len() as u64,
            priority: 0,
            timeout: None,
            outputs_on_device: on_device,
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.clone().into_host().expect("host").to_vec::<f32>()
    }

    #[tokio::test]
    async fn device_tensors_stay_on_the_device_for_the_requests_that_ask() {
        let FakeGpu {
            scheduler,
            seen,
            downloads,
            stats,
        } = start_fake(Some(0));
        // Two requests whose inputs are in device memory and that want device outputs, and one
        // from the host that wants host outputs, batched together (3 rows).
        let submit = |values: Vec<f32>, on_device: bool| {
            let s = scheduler.clone();
            let d = downloads.clone();
            tokio::spawn(async move { s.submit(device_request(&values, on_device, &d)).await })
        };
        let a = submit(vec![1.0], true);
        let b = submit(vec![2.0], true);
        let c = submit(vec![3.0], false);
        let (a, b, c) = (
            a.await.unwrap().unwrap(),
            b.await.unwrap().unwrap(),
            c.await.unwrap().unwrap(),
        );
        // Mixed pieces are joined on the host (a download per device piece), and c's share of
        // the device output comes back to the host (one more).
        assert_eq!(*seen.lock().unwrap(), [false]);
        assert_eq!(downloads.load(Ordering::SeqCst), 3);
        // Device outputs for the requests that asked, host for the other, each its own rows.
        assert!(a.outputs[0].device.is_some() && b.outputs[0].device.is_some());
        assert!(c.outputs[0].device.is_none());
        assert_eq!(values(&a.outputs[0]), [2.0]);
        assert_eq!(values(&b.outputs[0]), [4.0]);
        assert_eq!(c.outputs[0].to_vec::<f32>(), [6.0]);
        assert_eq!(a.outputs[0].shape, [1, 1]);

        // All pieces in device memory: joined there and handed over without a download.
        downloads.store(0, Ordering::SeqCst);
        let a = submit(vec![1.0, 5.0], true);
        let b = submit(vec![2.0], true);
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!(seen.lock().unwrap()[1..], [true]);
        assert_eq!(downloads.load(Ordering::SeqCst), 0);
        assert_eq!(values(&a.outputs[0]), [2.0, 10.0]);
        assert_eq!(values(&b.outputs[0]), [4.0]);
        assert_eq!(stats.snapshot().device_inputs, 1);
    }

    #[tokio::test]
    async fn a_backend_without_a_device_gets_host_tensors() {
        let FakeGpu {
            scheduler,
            seen,
            downloads,
            stats,
        } = start_fake(None);
        let executed = scheduler
            .submit(device_request(&[1.5, 2.5], true, &downloads))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), [false]);
        assert_eq!(downloads.load(Ordering::SeqCst), 1);
        assert!(executed.outputs[0].device.is_none());
        assert_eq!(executed.outputs[0].to_vec::<f32>(), [3.0, 5.0]);
        assert_eq!(stats.snapshot().device_inputs, 0);
    }
}
