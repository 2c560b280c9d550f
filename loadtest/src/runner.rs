//! Runs the load: one step per concurrency level (closed loop) or rate (open loop), each a
//! warm-up followed by measurement windows repeated until throughput and mean latency are
//! stable, as perf_analyzer does.
//!
//! Concurrency: the step's controller (the caller's task) only sleeps, swaps [`Recorder`]
//! windows and samples the server (statistics, CPU) at window boundaries; the load runs in
//! spawned tasks. Closed loop: `concurrency` worker tasks, each with one request in flight.
//! Open loop: one dispatcher task sleeps until each Poisson-scheduled send time and spawns a
//! task per request; a semaphore bounds requests in flight. Stopping is cooperative: the
//! controller raises a flag and waits for in-flight requests, each bounded by the request
//! timeout, so every request sent is accounted for when a step ends.
//!
//! Timer note: tokio's timer has millisecond resolution, so open-loop sends due within the same
//! millisecond leave together. Latency is still measured from each request's own scheduled
//! time, and the per-send lag is reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nereid_client::{Client, ClientOptions, PreparedInfer, Protocol};
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{Format, LoadConfig, Mode};
use crate::procstat::ProcessCpu;
use crate::recorder::{Latency, Recorder, Window};
use crate::report::{Report, StepReport, Totals};
use crate::server_stats::{Counters, ServerSide};
use crate::{data, LoadError};

/// The server as seen at a window boundary.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    stats: Option<Counters>,
    cpu: Option<Duration>,
}

/// One measured window with the server's view of it.
struct Measured {
    window: Window,
    duration: Duration,
    server: Option<Counters>,
    cpu: Option<Duration>,
    /// Requests that completed while the statistics sample opening (closing) this window was in
    /// flight: the client counts them in this window (the next one), the server in either.
    opening_edge: u64,
    closing_edge: u64,
}

impl Measured {
    fn throughput(&self) -> f64 {
        self.window.succeeded as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// Everything a step needs besides its own load.
struct Context<'a> {
    config: &'a LoadConfig,
    control: Client,
    prepared: Arc<Vec<PreparedInfer>>,
    stats_enabled: bool,
    cpu: Option<&'a ProcessCpu>,
    deadline: Instant,
}

impl Context<'_> {
    async fn sample(&self) -> Sample {
        let stats = if self.stats_enabled {
            self.control
                .model_statistics(&self.config.model, &self.config.model_version)
                .await
                .ok()
                .map(|s| Counters::of(&s))
        } else {
            None
        };
        Sample {
            stats,
            cpu: self.cpu.and_then(|c| c.cpu_time().ok()),
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

fn client_options(config: &LoadConfig) -> ClientOptions {
    ClientOptions {
        timeout: Some(config.request_timeout),
        connect_timeout: config.request_timeout.min(Duration::from_secs(10)),
        http_binary_inputs: config.format == Format::Binary,
        headers: config.headers.clone(),
    }
}

async fn connect(config: &LoadConfig) -> Result<Client, LoadError> {
    Client::connect(&config.url, config.protocol, client_options(config))
        .await
        .map_err(|source| LoadError::Connect {
            url: config.url.clone(),
            source,
        })
}

async fn connect_many(config: &LoadConfig, n: usize) -> Result<Vec<Client>, LoadError> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(config).await?);
    }
    Ok(clients)
}

/// Runs every step of `config` and reports them.
pub async fn run(config: &LoadConfig) -> Result<Report, LoadError> {
    config.validate()?;
    let started = Instant::now();
    let deadline = started + config.max_duration;
    let control = connect(config).await?;
    let metadata = control
        .model_metadata(&config.model, &config.model_version)
        .await
        .map_err(|source| LoadError::Metadata {
            model: config.model.clone(),
            source,
        })?;
    let requests = data::build_requests(config, &metadata)?;
    let prepared = requests
        .iter()
        .map(|r| control.prepare_infer(&config.model, &config.model_version, r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(LoadError::Prepare)?;
    let request_bytes = prepared.first().map_or(0, PreparedInfer::body_len);

    // The statistics extension is optional: a server without it still gets measured.
    let (stats_enabled, stats_note) = if config.server_stats {
        match control
            .model_statistics(&config.model, &config.model_version)
            .await
        {
            Ok(_) => (true, None),
            Err(err) => (false, Some(format!("statistics unavailable: {err}"))),
        }
    } else {
        (false, Some("statistics not requested".to_string()))
    };
    let cpu = match config.server_pid {
        Some(pid) => {
            Some(ProcessCpu::new(pid).map_err(|source| LoadError::ProcessCpu { pid, source })?)
        }
        None => None,
    };

    let ctx = Context {
        config,
        control,
        prepared: Arc::new(prepared),
        stats_enabled,
        cpu: cpu.as_ref(),
        deadline,
    };
    let first = ctx.sample().await;
    let mut steps = Vec::new();
    let mut truncated = false;
    let levels: Vec<(Option<usize>, Option<f64>)> = match &config.mode {
        Mode::Closed { concurrency } => concurrency.iter().map(|c| (Some(*c), None)).collect(),
        Mode::Open { rates, .. } => rates.iter().map(|r| (None, Some(*r))).collect(),
    };
    for (concurrency, rate) in levels {
        if ctx.remaining().is_zero() {
            truncated = true;
            break;
        }
        let step = match (&config.mode, concurrency, rate) {
            (Mode::Closed { .. }, Some(c), _) => run_closed(&ctx, c).await?,
            (
                Mode::Open {
                    max_outstanding, ..
                },
                _,
                Some(r),
            ) => run_open(&ctx, r, *max_outstanding).await?,
            _ => unreachable!("levels follow the mode. This is a bug."),
        };
        truncated |= !step.completed;
        steps.push(step);
    }
    let last = ctx.sample().await;
    let mut totals = Totals::default();
    for step in &steps {
        totals.add(&step.totals);
    }
    Ok(Report {
        label: config.label.clone(),
        url: config.url.clone(),
        protocol: config.protocol,
        format: match config.protocol {
            Protocol::Http => config.format,
            Protocol::Grpc => Format::Binary,
        },
        model: config.model.clone(),
        mode: match config.mode {
            Mode::Closed { .. } => "closed",
            Mode::Open { .. } => "open",
        },
        request_bytes,
        server_pid: config.server_pid,
        stats_note,
        steps,
        totals,
        server_totals: match (first.stats, last.stats) {
            (Some(a), Some(b)) => Some(ServerSide::from(&b.since(&a))),
            _ => None,
        },
        elapsed_s: started.elapsed().as_secs_f64(),
        truncated,
    })
}

/// Warm-up, then windows until stable (or the window or time budget runs out). The load must
/// already be running into `recorder`.
async fn measure(
    ctx: &Context<'_>,
    recorder: &Recorder,
    totals: &mut Window,
) -> (Vec<Measured>, bool, bool) {
    let config = ctx.config;
    tokio::time::sleep(config.warmup.min(ctx.remaining())).await;
    let (warm, _) = recorder.take();
    totals.merge(&warm);
    let mut before = ctx.sample().await;
    let mut opening_edge = recorder.completed_in_window();
    let mut windows: Vec<Measured> = Vec::new();
    let mut stable = false;
    let mut completed = true;
    while windows.len() < config.max_windows {
        let remaining = ctx.remaining();
        if remaining < config.window {
            // A short final window would not compare with the others.
            completed = false;
            break;
        }
        tokio::time::sleep(config.window).await;
        let (window, duration) = recorder.take();
        totals.merge(&window);
        let after = ctx.sample().await;
        let closing_edge = recorder.completed_in_window();
        windows.push(Measured {
            window,
            duration,
            server: match (before.stats, after.stats) {
                (Some(a), Some(b)) => Some(b.since(&a)),
                _ => None,
            },
            cpu: match (before.cpu, after.cpu) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            opening_edge,
            closing_edge,
        });
        before = after;
        opening_edge = closing_edge;
        if windows.len() >= config.stable_windows
            && is_stable(
                &windows[windows.len() - config.stable_windows..],
                config.stability,
            )
        {
            stable = true;
            break;
        }
    }
    (windows, stable, completed)
}

/// Whether throughput and mean latency of every window are within `tolerance` of their means.
fn is_stable(windows: &[Measured], tolerance: f64) -> bool {
    let within = |values: &[f64]| {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        mean == 0.0 || values.iter().all(|v| (v - mean).abs() <= tolerance * mean)
    };
    let throughput: Vec<f64> = windows.iter().map(Measured::throughput).collect();
    let latency: Vec<f64> = windows.iter().map(|w| w.window.latency.mean()).collect();
    within(&throughput) && within(&latency)
}

/// Summarises the stable windows (the last `stable_windows`, or as many as ran).
fn summarise(
    ctx: &Context<'_>,
    concurrency: Option<usize>,
    rate: Option<f64>,
    windows: Vec<Measured>,
    stable: bool,
    completed: bool,
    totals: &Window,
) -> StepReport {
    let config = ctx.config;
    let used = &windows[windows.len().saturating_sub(config.stable_windows)..];
    let mut merged = Window::default();
    let mut seconds = 0.0;
    let mut server = ctx.stats_enabled.then(Counters::default);
    let mut cpu = ctx.cpu.map(|_| Duration::ZERO);
    for w in used {
        merged.merge(&w.window);
        seconds += w.duration.as_secs_f64();
        match (&mut server, &w.server) {
            (Some(total), Some(delta)) => total.add(delta),
            _ => server = None,
        }
        match (&mut cpu, w.cpu) {
            (Some(total), Some(delta)) => *total += delta,
            _ => cpu = None,
        }
    }
    let server = server
        .filter(|_| !used.is_empty())
        .map(|c| ServerSide::from(&c));
    // Inferences as the server counts them (batch items); without statistics, the client's
    // count of successful requests times the batch size is the best estimate.
    let inferences = server.map_or(merged.succeeded * config.batch_size as u64, |s| {
        s.inferences
    });
    let per_second = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    // Interior edges cancel: adjacent windows share them on both sides.
    let stats_edge_requests =
        used.first().map_or(0, |w| w.opening_edge) + used.last().map_or(0, |w| w.closing_edge);
    StepReport {
        concurrency,
        rate,
        windows: windows.len(),
        stable,
        completed,
        measured_s: seconds,
        throughput: per_second(merged.succeeded),
        offered_rate: per_second(merged.sent),
        succeeded: merged.succeeded,
        failed: merged.failed(),
        latency_us: Latency::of(&merged.latency),
        send_lag_us: rate.map(|_| Latency::of(&merged.send_lag)),
        error_latency_us: (merged.failed() > 0).then(|| Latency::of(&merged.error_latency)),
        error_service_latency_us: (rate.is_some() && merged.failed() > 0)
            .then(|| Latency::of(&merged.error_service_latency)),
        errors: merged.errors.clone(),
        error_examples: totals.error_examples.clone(),
        server,
        stats_edge_requests,
        server_cpu_us_per_inference: cpu
            .filter(|_| inferences > 0)
            .map(|c| c.as_secs_f64() * 1e6 / inferences as f64),
        server_cpu_utilisation: cpu
            .filter(|_| seconds > 0.0)
            .map(|c| c.as_secs_f64() / seconds),
        totals: Totals {
            sent: totals.sent,
            succeeded: totals.succeeded,
            failed: totals.failed(),
        },
    }
}

async fn run_closed(ctx: &Context<'_>, concurrency: usize) -> Result<StepReport, LoadError> {
    let n = ctx
        .config
        .connections
        .unwrap_or(concurrency)
        .min(concurrency);
    let clients = connect_many(ctx.config, n).await?;
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for i in 0..concurrency {
        let client = clients[i % n].clone();
        let prepared = Arc::clone(&ctx.prepared);
        let recorder = Arc::clone(&recorder);
        let stop = Arc::clone(&stop);
        workers.spawn(async move {
            // Workers start at different entries so that file data is spread across them.
            let mut next = i;
            while !stop.load(Ordering::Relaxed) {
                let request = &prepared[next % prepared.len()];
                next += 1;
                recorder.sent(None);
                let start = Instant::now();
                let outcome = client.infer_prepared(request).await.map(drop);
                recorder.record(outcome, start.elapsed());
            }
        });
    }
    let mut totals = Window::default();
    let (windows, stable, completed) = measure(ctx, &recorder, &mut totals).await;
    stop.store(true, Ordering::Relaxed);
    // Each worker finishes its in-flight request (bounded by the request timeout).
    while workers.join_next().await.is_some() {}
    let (tail, _) = recorder.take();
    totals.merge(&tail);
    Ok(summarise(
        ctx,
        Some(concurrency),
        None,
        windows,
        stable,
        completed,
        &totals,
    ))
}

/// Poisson arrivals: exponentially distributed gaps with mean `1 / rate` seconds.
pub fn next_gap(rng: &mut impl Rng, rate: f64) -> Duration {
    // 1 - U lies in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.random::<f64>();
    Duration::from_secs_f64(-u.ln() / rate)
}

async fn run_open(
    ctx: &Context<'_>,
    rate: f64,
    max_outstanding: usize,
) -> Result<StepReport, LoadError> {
    let n = ctx.config.connections.unwrap_or(1);
    let clients = connect_many(ctx.config, n).await?;
    let recorder = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let dispatcher = {
        let recorder = Arc::clone(&recorder);
        let stop = Arc::clone(&stop);
        let prepared = Arc::clone(&ctx.prepared);
        let seed = ctx.config.seed ^ rate.to_bits();
        tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let permits = Arc::new(Semaphore::new(max_outstanding));
            let mut in_flight = JoinSet::new();
            let mut scheduled = Instant::now();
            let mut k = 0usize;
            loop {
                scheduled += next_gap(&mut rng, rate);
                tokio::time::sleep_until(scheduled.into()).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let sent_at = Instant::now();
                recorder.sent(Some(sent_at.saturating_duration_since(scheduled)));
                let client = clients[k % clients.len()].clone();
                let prepared = Arc::clone(&prepared);
                let recorder = Arc::clone(&recorder);
                let index = k % prepared.len();
                in_flight.spawn(async move {
                    let outcome = client.infer_prepared(&prepared[index]).await.map(drop);
                    // From the scheduled time: waiting to be sent is part of the latency.
                    recorder.record_scheduled(outcome, scheduled.elapsed(), sent_at.elapsed());
                    drop(permit);
                });
                k += 1;
                while in_flight.try_join_next().is_some() {}
            }
            while in_flight.join_next().await.is_some() {}
        })
    };
    let mut totals = Window::default();
    let (windows, stable, completed) = measure(ctx, &recorder, &mut totals).await;
    stop.store(true, Ordering::Relaxed);
    // The dispatcher task does not panic; a join error would mean it was cancelled, and then
    // its requests are gone with it.
    let _ = dispatcher.await;
    let (tail, _) = recorder.take();
    totals.merge(&tail);
    Ok(summarise(
        ctx,
        None,
        Some(rate),
        windows,
        stable,
        completed,
        &totals,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_have_the_right_mean_and_spread() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let rate = 500.0;
        let gaps: Vec<f64> = (0..20_000)
            .map(|_| next_gap(&mut rng, rate).as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        // Exponential: mean 1/rate, coefficient of variation 1.
        assert!((mean * rate - 1.0).abs() < 0.03, "mean {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "cv {}",
            var.sqrt() / mean
        );
        assert!(gaps.iter().all(|g| g.is_finite() && *g >= 0.0));
    }

    fn measured(succeeded: u64, latency_us: u64) -> Measured {
        let recorder = Recorder::default();
        for _ in 0..succeeded {
            recorder.record(Ok(()), Duration::from_micros(latency_us));
        }
        Measured {
            window: recorder.take().0,
            duration: Duration::from_secs(1),
            server: None,
            cpu: None,
            opening_edge: 0,
            closing_edge: 0,
        }
    }

    #[test]
    fn stability_needs_throughput_and_latency_to_agree() {
        assert!(is_stable(
            &[measured(100, 50), measured(105, 52), measured(98, 49)],
            0.1
        ));
        assert!(!is_stable(
            &[measured(100, 50), measured(150, 50), measured(100, 50)],
            0.1
        ));
        assert!(!is_stable(
            &[measured(100, 50), measured(100, 90), measured(100, 50)],
            0.1
        ));
        assert!(is_stable(
            &[measured(0, 0), measured(0, 0), measured(0, 0)],
            0.1
        ));
    }
}
