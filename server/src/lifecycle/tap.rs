//! [`VersionMonitor`]: the monitor of one model version, between the request path and a
//! monitor thread.
//!
//! The request path only decides whether to sample (every `1 / sample_rate`-th request,
//! counted, no randomness), keeps the request's input and output tensors (reference-counted
//! buffers, no copy) and offers them to a bounded queue with `try_send`. When the queue holds
//! `queue_size` samples or `MAX_QUEUED_BYTES` of tensors, the sample is dropped and counted:
//! a slow monitor never slows or blocks a request and never grows memory without bound.
//!
//! The monitor thread owns the [`Monitor`] (windows, tests) and the prediction log writer. For
//! each sample it fills the windows, appends the request to the log, and indexes its
//! predictions by request id for feedback; when a window closes it publishes the report. Under
//! traffic it drains the queue and naps rather than being woken per sample; when the queue is
//! empty it blocks until the next sample.
//! Feedback requests first wait until the thread has taken every sample queued before them
//! (a flush marker through the same queue), so a label sent right after its response finds
//! its prediction.
//!
//! The thread runs at the lowest scheduling priority: under a load that keeps every core busy
//! with serving, the monitor falls behind and drops samples instead of taking CPU from requests.
//!
//! The thread ends when the version is dropped (the sender with it) and the queue is drained.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use nereid_monitor::feedback::{FeedbackIndex, FeedbackItem};
use nereid_monitor::log::{read_log, LogSettings, LogWriter, Record};
use nereid_monitor::performance::{LivePerformance, PerformanceReport};
use nereid_monitor::{DriftReport, Monitor, MonitorConfig, Reference, Sample};
use nereid_protocol::{Error, Tensor};

/// Tensor bytes a version's queue may hold before samples are dropped.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Closed-window reports kept per version for the page and the JSON history.
const HISTORY: usize = 100;
/// How often the thread hands the log's buffer to the OS when traffic is steady.
const LOG_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Predictions remembered per version for joining feedback.
const FEEDBACK_CAPACITY: usize = 200_000;
/// While samples keep coming, the thread drains the queue, then naps this long instead of
/// being woken for every sample: a wake-up (a futex call and a context switch, several
/// microseconds) per request would cost more than the monitoring itself. At 40,000 samples
/// per second a nap lets about 200 samples queue, far below the queue's capacity.
const NAP: Duration = Duration::from_millis(5);

/// Server-wide monitor settings (from `nereid serve` flags).
#[derive(Debug, Clone, Default)]
pub struct MonitorSettings {
    /// Root of the prediction log (`<root>/<model>/<version>/`); `None` keeps no log.
    pub log_dir: Option<PathBuf>,
    pub log: LogSettings,
}

enum Message {
    Sample(QueuedSample),
    /// Answered once every earlier message was handled and the log flushed.
    Flush(crossbeam_channel::Sender<()>),
}

struct QueuedSample {
    id: String,
    time_ms: u64,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    bytes: usize,
}

/// What HTTP handlers and `/metrics` read.
#[derive(Default)]
struct Shared {
    latest: Option<Arc<DriftReport>>,
    history: VecDeque<Arc<DriftReport>>,
    windows: u64,
}

/// A sampled request, between the decision and the offer.
pub struct Tap {
    inputs: Vec<Tensor>,
}

/// How a version is monitored, as the drift JSON and page show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MonitorInfo {
    pub sample_rate: f64,
    pub window: String,
    pub drift_share: f64,
    pub queue_size: usize,
    pub columns: Vec<String>,
    /// The prediction log folder, when requests are logged.
    pub log_dir: Option<String>,
    pub reference_dataset: String,
}

/// The monitor of one model version (see the module docs).
pub struct VersionMonitor {
    pub model: String,
    pub version: u64,
    pub info: MonitorInfo,
    sample_every: f64,
    seen: AtomicU64,
    ids: AtomicU64,
    id_prefix: u64,
    sender: Sender<Message>,
    queued_bytes: Arc<AtomicUsize>,
    samples: AtomicU64,
    dropped: AtomicU64,
    shared: Arc<Mutex<Shared>>,
    feedback: Arc<Mutex<FeedbackIndex>>,
    performance: Arc<Mutex<LivePerformance>>,
    log: Arc<Mutex<Option<LogWriter>>>,
    classes: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl VersionMonitor {
    /// Starts the monitor of a version: `reference` is its `reference.json`, `log_dir` its
    /// prediction log folder (replayed to restore feedback and live performance).
    pub fn start(
        monitor: Monitor,
        reference: &Reference,
        config: &MonitorConfig,
        log_dir: Option<&Path>,
        log_settings: &LogSettings,
        delay_per_sample: Option<Duration>,
    ) -> Result<Arc<VersionMonitor>, Error> {
        let (model, version) = (monitor.model().to_string(), monitor.version());
        let task = monitor.task();
        let classes = match monitor.prediction().map(|p| &p.kind) {
            Some(nereid_monitor::monitor::PredictionKind::ClassScores { classes }) => {
                classes.iter().map(|c| c.to_string()).collect()
            }
            _ => reference.classes.clone(),
        };
        let log = match (config.log, log_dir) {
            (true, Some(dir)) => Some(LogWriter::open(dir, log_settings.clone()).map_err(|e| {
                Error::internal(format!(
                    "failed to open the prediction log {}: {e}",
                    dir.display()
                ))
            })?),
            _ => None,
        };
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_size);
        let info = MonitorInfo {
            sample_rate: config.sample_rate,
            window: config.window.describe(),
            drift_share: config.drift_share,
            queue_size: config.queue_size,
            columns: monitor
                .column_names()
                .iter()
                .map(|c| c.to_string())
                .collect(),
            log_dir: log
                .as_ref()
                .map(|l: &LogWriter| l.dir().display().to_string()),
            reference_dataset: reference.dataset_version.clone(),
        };
        let vm = Arc::new(VersionMonitor {
            info,
            sample_every: 1.0 / config.sample_rate,
            seen: AtomicU64::new(0),
            ids: AtomicU64::new(0),
            id_prefix: id_prefix(&model, version),
            sender,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            samples: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shared: Arc::new(Mutex::new(Shared::default())),
            feedback: Arc::new(Mutex::new(FeedbackIndex::new(
                task,
                classes.clone(),
                FEEDBACK_CAPACITY,
            ))),
            performance: Arc::new(Mutex::new(LivePerformance::new(
                task,
                config.performance_window,
            ))),
            log: Arc::new(Mutex::new(log)),
            classes,
            model,
            version,
        });
        let worker = Worker {
            monitor,
            receiver,
            queued_bytes: Arc::clone(&vm.queued_bytes),
            shared: Arc::clone(&vm.shared),
            feedback: Arc::clone(&vm.feedback),
            performance: Arc::clone(&vm.performance),
            log: Arc::clone(&vm.log),
            replay_dir: log_dir.map(Path::to_path_buf),
            delay_per_sample,
        };
        std::thread::Builder::new()
            .name(format!("monitor-{}-{}", vm.model, vm.version))
            .spawn(move || worker.run())
            .map_err(|e| Error::internal(format!("failed to start the monitor thread: {e}")))?;
        Ok(vm)
    }

    /// The request path's decision: `Some` for a request to sample. Counting, not random: with
    /// rate r, a request is sampled whenever the running count crosses a multiple of 1/r.
    pub fn sample(&self, inputs: &[Tensor]) -> Option<Tap> {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        let due = (n / self.sample_every).floor() != ((n + 1.0) / self.sample_every).floor()
            || self.sample_every <= 1.0;
        due.then(|| Tap {
            inputs: inputs.to_vec(),
        })
    }

    /// A request id for a sampled request that came without one: unique within the process,
    /// and unlikely to repeat across restarts (a per-version random prefix).
    pub fn next_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}", self.id_prefix ^ n)
    }

    /// Offers a served request to the monitor; never blocks.
    pub fn offer(&self, tap: Tap, id: &str, outputs: &[Tensor]) {
        let bytes: usize = tap.inputs.iter().chain(outputs).map(Tensor::byte_len).sum();
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sample = QueuedSample {
            id: id.to_string(),
            time_ms: now_ms(),
            inputs: tap.inputs,
            outputs: outputs.to_vec(),
            bytes,
        };
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        match self.sender.try_send(Message::Sample(sample)) {
            Ok(()) => {
                self.samples.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Samples handed to the monitor, and samples dropped because it was behind.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.samples.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    pub fn latest(&self) -> Option<Arc<DriftReport>> {
        lock(&self.shared).latest.clone()
    }

    pub fn history(&self) -> Vec<Arc<DriftReport>> {
        lock(&self.shared).history.iter().cloned().collect()
    }

    pub fn windows(&self) -> u64 {
        lock(&self.shared).windows
    }

    pub fn performance(&self) -> PerformanceReport {
        lock(&self.performance).report()
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Waits (blocking, up to `timeout`) until the monitor thread has handled everything
    /// queued so far and flushed the log.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let (ack, done) = crossbeam_channel::bounded(1);
        self.sender
            .send_timeout(Message::Flush(ack), timeout)
            .map_err(|_| {
                Error::unavailable(
                    "the model's monitor is not keeping up; retry the feedback later",
                )
            })?;
        done.recv_timeout(timeout).map_err(|_| {
            Error::unavailable("the model's monitor is not keeping up; retry the feedback later")
        })
    }

    /// When the request `id` was served by this version, if it was sampled and is still in the
    /// feedback index. Blocking (waits briefly for the queue to drain, so that a request just
    /// answered is found).
    pub fn served_at(&self, id: &str) -> Option<u64> {
        let _ = self.flush(Duration::from_secs(1));
        lock(&self.feedback).lookup(id).map(|(time_ms, _)| time_ms)
    }

    /// Applies a feedback batch (all or nothing): joins it with the logged predictions,
    /// scores it and logs the labels. Blocking; returns the rows labelled.
    pub fn apply_feedback(&self, items: &[FeedbackItem]) -> Result<usize, Error> {
        self.flush(Duration::from_secs(10))?;
        let joined = lock(&self.feedback)
            .apply(items)
            .map_err(Error::invalid_arg)?;
        let now = now_ms();
        let mut rows = 0;
        {
            let mut performance = lock(&self.performance);
            for j in &joined {
                for (p, t) in j.predicted.iter().zip(&j.truth) {
                    performance.record(p, t, now);
                    rows += 1;
                }
            }
        }
        if let Some(log) = lock(&self.log).as_mut() {
            for j in joined {
                let record = Record::Feedback {
                    time_ms: now,
                    id: j.id,
                    truth: j.truth,
                };
                log.append(&record)
                    .and_then(|()| log.flush())
                    .map_err(|e| Error::internal(format!("failed to log feedback: {e}")))?;
            }
        }
        Ok(rows)
    }
}

fn id_prefix(model: &str, version: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(model.as_bytes());
    h.write_u64(version);
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Leave the low 32 bits to the counter's XOR, so ids differ in their last digits.
    h.finish() & !0xffff_ffff
}

struct Worker {
    monitor: Monitor,
    receiver: Receiver<Message>,
    queued_bytes: Arc<AtomicUsize>,
    shared: Arc<Mutex<Shared>>,
    feedback: Arc<Mutex<FeedbackIndex>>,
    performance: Arc<Mutex<LivePerformance>>,
    log: Arc<Mutex<Option<LogWriter>>>,
    replay_dir: Option<PathBuf>,
    delay_per_sample: Option<Duration>,
}

impl Worker {
    fn run(mut self) {
        // The lowest priority (nice 19 on Linux): a busy server's serving threads come first,
        // and when they leave the monitor too little CPU its queue fills and samples are
        // dropped and counted, rather than requests slowed.
        if let Err(err) =
            thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
        {
            tracing::debug!(%err, "cannot lower the monitor thread's priority");
        }
        self.replay();
        let mut last_flush = Instant::now();
        loop {
            // Busy: take everything queued, then nap while more accumulates.
            let mut handled = 0usize;
            loop {
                match self.receiver.try_recv() {
                    Ok(message) => {
                        handled += 1;
                        if !self.dispatch(message, &mut last_flush) {
                            return;
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        self.flush_log();
                        return;
                    }
                }
            }
            if last_flush.elapsed() >= LOG_FLUSH_EVERY {
                self.flush_log();
                last_flush = Instant::now();
            }
            let reports = self.monitor.tick(now_ms());
            self.publish(reports);
            if handled > 0 {
                std::thread::sleep(NAP);
                continue;
            }
            // Idle: block until a message arrives, a time window ends or the log is due.
            let wait = self
                .monitor
                .next_deadline_ms()
                .map(|d| Duration::from_millis(d.saturating_sub(now_ms())).min(LOG_FLUSH_EVERY))
                .unwrap_or(LOG_FLUSH_EVERY);
            match self.receiver.recv_timeout(wait) {
                Ok(message) => {
                    if !self.dispatch(message, &mut last_flush) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush_log();
                    return;
                }
            }
        }
    }

    /// Handles one message; `false` when the thread should stop.
    fn dispatch(&mut self, message: Message, last_flush: &mut Instant) -> bool {
        match message {
            Message::Sample(sample) => {
                self.queued_bytes.fetch_sub(sample.bytes, Ordering::Relaxed);
                self.handle(sample);
                if let Some(delay) = self.delay_per_sample {
                    std::thread::sleep(delay);
                }
            }
            Message::Flush(ack) => {
                self.flush_log();
                *last_flush = Instant::now();
                let _ = ack.send(());
            }
        }
        true
    }

    fn handle(&mut self, sample: QueuedSample) {
        let observed = self.monitor.observe(&Sample {
            inputs: &sample.inputs,
            outputs: &sample.outputs,
            time_ms: sample.time_ms,
        });
        if !observed.predictions.is_empty() {
            lock(&self.feedback).insert(&sample.id, sample.time_ms, &observed.predictions);
        }
        if let Some(log) = lock(&self.log).as_mut() {
            let record = Record::Prediction {
                time_ms: sample.time_ms,
                id: sample.id,
                inputs: sample.inputs,
                outputs: sample.outputs,
            };
            if let Err(err) = log.append(&record) {
                tracing::warn!(dir = %log.dir().display(), %err, "prediction log append failed");
            }
        }
        self.publish(observed.reports);
    }

    fn publish(&self, reports: Vec<DriftReport>) {
        if reports.is_empty() {
            return;
        }
        let mut shared = lock(&self.shared);
        for report in reports {
            if report.dataset_drift.drift {
                tracing::warn!(
                    model = %report.model,
                    version = report.version,
                    window = report.window.index,
                    drifted = report.dataset_drift.drifted,
                    columns = report.dataset_drift.columns,
                    "dataset drift detected"
                );
            }
            let report = Arc::new(report);
            shared.windows += 1;
            if shared.history.len() == HISTORY {
                shared.history.pop_front();
            }
            shared.history.push_back(Arc::clone(&report));
            shared.latest = Some(report);
        }
    }

    /// Hands buffered records to the OS and drops segments past the size or age limit (age
    /// limits apply even when too little traffic comes to fill a segment).
    fn flush_log(&self) {
        if let Some(log) = lock(&self.log).as_mut() {
            if let Err(err) = log.flush().and_then(|()| log.enforce_retention(now_ms())) {
                tracing::warn!(dir = %log.dir().display(), %err, "prediction log flush failed");
            }
        }
    }

    /// Restores the feedback index and live performance from the log a previous run wrote.
    fn replay(&mut self) {
        let Some(dir) = self.replay_dir.clone() else {
            return;
        };
        let mut feedback = lock(&self.feedback);
        let mut performance = lock(&self.performance);
        let result = read_log(&dir, |record| match record {
            Record::Prediction {
                time_ms,
                id,
                inputs,
                outputs,
            } => {
                let rows = self.monitor.predictions_of(&inputs, &outputs);
                feedback.insert(&id, time_ms, &rows);
            }
            Record::Feedback { time_ms, id, truth } => {
                feedback.mark_labelled(&id);
                if let Some((_, rows)) = feedback.lookup(&id) {
                    for (p, t) in rows.iter().zip(&truth) {
                        performance.record(p, t, time_ms);
                    }
                }
            }
        });
        match result {
            Ok(summary) if summary.records > 0 => tracing::info!(
                dir = %dir.display(),
                records = summary.records,
                torn_segments = summary.torn_segments,
                "prediction log replayed"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(dir = %dir.display(), %err, "prediction log replay failed"),
        }
    }
}
