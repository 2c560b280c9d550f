//! Short, bounded load runs against a real Nereid server and the echo server, both in-process
//! on ephemeral loopback ports: request accounting against the server's own statistics, the
//! open loop's send rate, and errors kept out of latency.

use std::path::Path;
use std::time::Duration;

use nereid_client::{Client, ClientOptions, Protocol};
use nereid_loadtest::echo::{EchoModel, EchoServer};
use nereid_loadtest::server_stats::Counters;
use nereid_loadtest::{Format, LoadConfig, Mode};
use tokio::sync::oneshot;

struct Nereid {
    http: String,
    grpc: String,
    _stop: oneshot::Sender<()>,
    _repo: tempfile::TempDir,
}

impl Nereid {
    /// Serves a copy of `identity_fp32` alone, so that models others add to `model-repo/`
    /// cannot change what these tests measure.
    async fn start() -> Nereid {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model-repo/identity_fp32");
        let repo = tempfile::tempdir().unwrap();
        let model = repo.path().join("identity_fp32");
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::copy(source.join("config.pbtxt"), model.join("config.pbtxt")).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = nereid_server::ServeConfig::for_tests(repo.path());
        let server = nereid_server::start(config, async move {
            let _ = stopped.await;
        })
        .await
        .expect("server starts");
        Nereid {
            http: format!("http://{}", server.http),
            grpc: format!("http://{}", server.grpc),
            _stop: stop,
            _repo: repo,
        }
    }

    fn url(&self, protocol: Protocol) -> &str {
        match protocol {
            Protocol::Http => &self.http,
            Protocol::Grpc => &self.grpc,
        }
    }
}

/// A quick config: short warm-up and windows, a hard bound on the whole run.
fn quick(url: &str, protocol: Protocol, mode: Mode) -> LoadConfig {
    let mut config = LoadConfig::new(url, protocol, "identity_fp32");
    config.mode = mode;
    config.warmup = Duration::from_millis(200);
    config.window = Duration::from_millis(300);
    config.stable_windows = 2;
    config.max_windows = 3;
    config.stability = 0.5;
    config.max_duration = Duration::from_secs(20);
    config.request_timeout = Duration::from_secs(5);
    config
}

async fn server_counters(url: &str, protocol: Protocol) -> Counters {
    let client = Client::connect(url, protocol, ClientOptions::default())
        .await
        .unwrap();
    Counters::of(&client.model_statistics("identity_fp32", "").await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_requests_match_the_server_statistics() {
    let server = Nereid::start().await;
    for (protocol, format) in [
        (Protocol::Http, Format::Binary),
        (Protocol::Http, Format::Json),
        (Protocol::Grpc, Format::Binary),
    ] {
        let url = server.url(protocol);
        let before = server_counters(url, protocol).await;
        let mut config = quick(
            url,
            protocol,
            Mode::Closed {
                concurrency: vec![1, 4],
            },
        );
        config.format = format;
        let report = nereid_loadtest::run(&config).await.unwrap();
        let after = server_counters(url, protocol).await;
        let what = format!("{protocol} {format:?}");

        assert_eq!(report.steps.len(), 2, "{what}");
        assert!(!report.truncated, "{what}");
        let t = report.totals;
        assert!(t.succeeded > 0, "{what}");
        assert_eq!(t.failed, 0, "{what}: {:?}", report.steps[0].error_examples);
        assert_eq!(
            t.sent,
            t.succeeded + t.failed,
            "{what}: every request is accounted for"
        );
        // The server counted exactly the requests the generator says succeeded.
        assert_eq!(after.since(&before).success, t.succeeded, "{what}");
        assert_eq!(
            report.server_totals.map(|s| s.requests),
            Some(t.succeeded),
            "{what}"
        );
        for step in &report.steps {
            assert!(
                step.windows >= 2 && step.windows <= 3,
                "{what}: {}",
                step.windows
            );
            assert!(step.throughput > 0.0, "{what}");
            assert_eq!(step.latency_us.count, step.succeeded, "{what}");
            assert!(step.latency_us.p50 > 0 && step.latency_us.p50 <= step.latency_us.p99);
            assert!(step.latency_us.p99 <= step.latency_us.max);
            let server = step.server.expect("Nereid serves statistics");
            // Requests in flight, or completing while a statistics sample was taken, at the
            // window edges may land on either side.
            let slack = step.concurrency.unwrap_or(1) as u64 + step.stats_edge_requests;
            assert!(
                server.requests.abs_diff(step.succeeded) <= slack,
                "{what}: server {} vs client {}",
                server.requests,
                step.succeeded
            );
            assert!(server.compute_us() > 0.0, "{what}");
        }
        let table = report.table();
        assert!(
            table.contains("infer/s") && table.lines().count() >= 4,
            "{table}"
        );
        assert_eq!(report.csv_rows().lines().count(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_at_the_requested_rate() {
    let server = Nereid::start().await;
    for protocol in [Protocol::Grpc, Protocol::Http] {
        let rate = 400.0;
        let mut config = quick(
            server.url(protocol),
            protocol,
            Mode::Open {
                rates: vec![rate],
                max_outstanding: 256,
            },
        );
        config.window = Duration::from_millis(600);
        config.stable_windows = 2;
        config.max_windows = 2;
        let report = nereid_loadtest::run(&config).await.unwrap();
        let step = &report.steps[0];
        assert_eq!(step.windows, 2);
        // Sends counted in the measured windows are the Poisson arrivals scheduled in them
        // (about 480; standard deviation sqrt(480) = 22), shifted at the two edges by how late the
        // generator sent (on a loaded machine) and, for completions, by the latency. Five
        // standard deviations plus those shifts: a wrong rate fails, a slow machine does not.
        let expected = rate * step.measured_s;
        let noise = 5.0 * expected.sqrt();
        let lag = step.send_lag_us.expect("open loop reports send lag");
        let late_sends = rate * lag.max as f64 / 1e6;
        let slow_completions = rate * step.latency_us.max as f64 / 1e6;
        let sent = step.offered_rate * step.measured_s;
        assert!(
            (sent - expected).abs() <= noise + late_sends,
            "{protocol}: sent {sent:.0} in {:.2} s for {rate}/s (lag max {} us)",
            step.measured_s,
            lag.max
        );
        let completed = step.throughput * step.measured_s;
        assert!(
            (completed - expected).abs() <= noise + late_sends + slow_completions,
            "{protocol}: completed {completed:.0} in {:.2} s for {rate}/s",
            step.measured_s
        );
        assert_eq!(step.failed, 0);
        assert_eq!(
            lag.count,
            (step.offered_rate * step.measured_s).round() as u64
        );
        assert_eq!(report.totals.sent, report.totals.succeeded);
        assert_eq!(
            report.server_totals.map(|s| s.requests),
            Some(report.totals.succeeded)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_errors_not_latency() {
    let server = Nereid::start().await;
    for (protocol, kind) in [
        (Protocol::Http, "http_400"),
        (Protocol::Grpc, "grpc_invalid_argument"),
    ] {
        let url = server.url(protocol);
        let before = server_counters(url, protocol).await;
        let mut config = quick(
            url,
            protocol,
            Mode::Closed {
                concurrency: vec![2],
            },
        );
        // identity_fp32 takes [-1, 16]: every request with 15 elements is refused.
        config.shapes.insert("INPUT0".into(), vec![1, 15]);
        let report = nereid_loadtest::run(&config).await.unwrap();
        let after = server_counters(url, protocol).await;
        let step = &report.steps[0];

        assert_eq!(step.succeeded, 0, "{protocol}");
        assert_eq!(step.throughput, 0.0);
        assert_eq!(step.latency_us.count, 0, "{protocol}: no failure is timed");
        assert_eq!(step.latency_us.p99, 0);
        assert!(step.failed > 0);
        assert_eq!(step.errors.keys().collect::<Vec<_>>(), vec![kind]);
        assert!(
            step.error_examples[kind].contains("INPUT0"),
            "{}",
            step.error_examples[kind]
        );
        assert_eq!(report.totals.succeeded, 0);
        assert_eq!(report.totals.failed, report.totals.sent);
        assert_eq!(
            after.since(&before).fail,
            report.totals.failed,
            "{protocol}"
        );
        assert!(report.table().contains(&format!("x {kind}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_is_a_loadable_v2_server() {
    let echo = EchoServer::start(EchoModel::default(), [127, 0, 0, 1].into(), 0, 0)
        .await
        .unwrap();
    for (protocol, format) in [
        (Protocol::Http, Format::Binary),
        (Protocol::Http, Format::Json),
        (Protocol::Grpc, Format::Binary),
    ] {
        let url = format!(
            "http://{}",
            match protocol {
                Protocol::Http => echo.http,
                Protocol::Grpc => echo.grpc,
            }
        );
        let client = Client::connect(&url, protocol, ClientOptions::default())
            .await
            .unwrap();
        assert!(client.server_ready().await.unwrap());
        let metadata = client.model_metadata("identity_fp32", "").await.unwrap();
        assert_eq!(metadata.inputs[0].shape, vec![-1, 16]);
        assert!(client.model_metadata("other", "").await.is_err());

        let mut config = quick(
            &url,
            protocol,
            Mode::Closed {
                concurrency: vec![2],
            },
        );
        config.format = format;
        let before = server_counters(&url, protocol).await;
        let report = nereid_loadtest::run(&config).await.unwrap();
        let after = server_counters(&url, protocol).await;
        assert_eq!(report.totals.failed, 0, "{protocol} {format:?}");
        assert_eq!(after.since(&before).success, report.totals.succeeded);
    }
    echo.stop().await;
}

#[test]
fn command_line_runs_and_writes_reports() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = runtime
        .block_on(EchoServer::start(
            EchoModel::default(),
            [127, 0, 0, 1].into(),
            0,
            0,
        ))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("nereid-loadtest-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, json) = (dir.join("r.csv"), dir.join("r.json"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nereid-loadtest"))
        .args([
            "--url",
            &format!("http://{}", echo.grpc),
            "--protocol",
            "grpc",
        ])
        .args([
            "-m",
            "identity_fp32",
            "--concurrency",
            "1,2",
            "--warmup-ms",
            "100",
        ])
        .args([
            "--window-ms",
            "200",
            "--stable-windows",
            "2",
            "--max-windows",
            "2",
        ])
        .args([
            "--max-duration-s",
            "10",
            "--label",
            "echo",
            "--threads",
            "1",
        ])
        .args(["--server-pid", &std::process::id().to_string()])
        .arg("--csv")
        .arg(&csv)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("[echo] closed loop, grpc raw"), "{stdout}");
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 3, "{rows}");
    assert!(rows.starts_with("label,protocol"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["steps"].as_array().unwrap().len(), 2);
    assert!(
        report["steps"][0]["server_cpu_us_per_inference"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_nereid-loadtest"))
        .args(["-m", "x", "--concurrency", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    runtime.block_on(echo.stop());
    std::fs::remove_dir_all(&dir).unwrap();
}
