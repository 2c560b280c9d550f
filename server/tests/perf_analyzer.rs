//! NVIDIA's perf_analyzer (2.60, the `perf-analyzer` wheel; installed by `ci/perf-analyzer.sh`)
//! benchmarks Nereid the way a Triton user's first benchmark would: over HTTP (binary and JSON
//! tensors) and gRPC, synchronous, asynchronous and streaming, and with its tensors in system
//! shared memory. Each run must exit 0, and the
//! requests it counts must match what the server's statistics count: perf_analyzer's own
//! server-side figures (read from the statistics extension around its window) and the totals
//! before and after the run.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;
use serde_json::Value;

/// The command prefix that runs perf_analyzer, or `None` after reporting why it cannot run.
fn perf_analyzer() -> Option<Vec<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/perf-analyzer.sh");
    match nereid_testkit::run_installer(&script) {
        Ok(prefix) => Some(prefix.split_whitespace().map(str::to_string).collect()),
        Err(reason) => {
            nereid_testkit::skip(&nereid_testkit::PERF_ANALYZER, reason);
            None
        }
    }
}

/// The number after `label` on the first line that has it.
fn figure(output: &str, label: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.trim().parse().ok())
}

/// identity_fp32's successful and failed request counts, as the statistics extension says.
async fn counts(server: &TestServer) -> (u64, u64) {
    let stats: Value = server.get("/v2/models/identity_fp32/stats").await.json();
    let model = &stats["model_stats"][0]["inference_stats"];
    let count = |what: &str| model[what]["count"].as_u64().expect("a count");
    (count("success"), count("fail"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_analyzer_runs_over_http_and_grpc() {
    let Some(prefix) = perf_analyzer() else {
        return;
    };
    let server = TestServer::start_default().await;
    let runs: [(&str, &[&str]); 8] = [
        ("http", &[]),
        ("http", &["--async"]),
        (
            "http",
            &[
                "--input-tensor-format",
                "json",
                "--output-tensor-format",
                "json",
            ],
        ),
        ("http", &["--shared-memory", "system"]),
        ("grpc", &[]),
        ("grpc", &["--async"]),
        ("grpc", &["--streaming"]),
        ("grpc", &["--shared-memory", "system"]),
    ];
    for (protocol, extra) in runs {
        let port = if protocol == "http" {
            server.http.port()
        } else {
            server.grpc.port()
        };
        let (succeeded_before, failed_before) = counts(&server).await;
        let mut command = Command::new(&prefix[0]);
        command
            .args(&prefix[1..])
            .args(["-m", "identity_fp32", "-i", protocol])
            .arg("-u")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--concurrency-range", "4"])
            // Windows of a fixed request count, and any three windows count as stable: this
            // checks what is served and counted, not how fast (a busy 2-core machine can miss
            // perf_analyzer's default 10% stability and fail a run that served everything).
            .args(["--measurement-mode", "count_windows"])
            .args(["--measurement-request-count", "200"])
            .args(["--stability-percentage", "1000", "--max-trials", "10"])
            .args(extra);
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("perf_analyzer runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let what = format!("perf_analyzer -i {protocol} {}", extra.join(" "));
        assert!(
            out.status.success(),
            "{what}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let client = figure(&stdout, "Request count:").expect("a client request count");
        let server_side =
            figure(&stdout, "Successful request count:").expect("a server request count");
        assert!(client > 0, "{what}:\n{stdout}");
        // The same window seen from both ends; requests in flight at its edges may fall on
        // either side of it.
        assert!(
            client.abs_diff(server_side) <= 8,
            "{what}: client {client}, server {server_side}\n{stdout}"
        );
        if extra.contains(&"--shared-memory") {
            // It registered its regions, sent every tensor through them, and unregistered.
            let regions = server.get("/v2/systemsharedmemory/status").await;
            assert_eq!(regions.text(), "[]", "{what}: regions left registered");
        }
        let (succeeded, failed) = counts(&server).await;
        assert_eq!(failed, failed_before, "{what}: failures\n{stdout}");
        assert!(
            succeeded - succeeded_before >= client,
            "{what}: the server served {} requests, perf_analyzer measured {client}",
            succeeded - succeeded_before
        );
    }
    server.shutdown().await.expect("clean shutdown");
}
