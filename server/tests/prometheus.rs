//! Nereid's alert rules (deploy/prometheus/alerts.yml) with the tools users run: promtool checks
//! the rules and the example config and runs the rules' unit tests (every alert fires on the
//! series that should fire it and stays quiet on healthy ones); then a real Prometheus scrapes a
//! real Nereid, with a monitored model that has closed a drift window and has feedback, and
//! evaluates every rule against it: each loads, evaluates without error, and each metric it
//! reads has data. The Grafana dashboards (deploy/grafana/dashboards) are checked for form and
//! every panel query is run against the same Prometheus. Prometheus and promtool come from
//! Debian's package (server/ci/prometheus.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{iris_with, send_rows, wait_for, ChildGuard, Picker, TestServer, EVERY_REQUEST};
use serde_json::{json, Value};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");

/// The metrics the alert rules read.
const RULE_METRICS: &[&str] = &[
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_request_summary_us",
    "nereid_dataset_drift",
    "nereid_live_metric",
    "nereid_monitor_samples_dropped_total",
];

fn promtool(bin: &Path, args: &[&str]) {
    let out = Command::new(bin.join("promtool"))
        .args(args)
        .current_dir(DEPLOY)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn query(client: &reqwest::Client, prometheus: &str, expr: &str) -> Option<Vec<Value>> {
    let encoded: String =
        percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC).collect();
    let reply: Value = client
        .get(format!("{prometheus}/api/v1/query?query={encoded}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    reply["data"]["result"].as_array().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_check_and_evaluate_against_a_live_server() {
    let installer = Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/prometheus.sh");
    let bin = match nereid_testkit::run_installer(&installer) {
        Ok(dir) => PathBuf::from(dir),
        Err(reason) => {
            nereid_testkit::skip(&nereid_testkit::PROMETHEUS, reason);
            return;
        }
    };
    promtool(&bin, &["check", "rules", "alerts.yml"]);
    promtool(&bin, &["test", "rules", "alerts_test.yml"]);
    promtool(&bin, &["check", "config", "prometheus.yml"]);

    // A monitored Iris classifier: one drift window closed, and one labelled prediction.
    let server = TestServer::start_repo(iris_with(EVERY_REQUEST)).await;
    send_rows(&server, 1000, &mut Picker(0x51ce), None).await;
    let row = json!({"id": "p-1", "inputs": [{"name": "INPUT", "shape": [1, 4],
                                             "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    assert_eq!(server.infer_json("iris_classifier", &row).await.status, 200);
    let feedback = server
        .post_json(
            "/v2/models/iris_classifier/feedback",
            &json!({"feedback": [{"id": "p-1", "truth": "setosa"}]}),
        )
        .await;
    assert_eq!(feedback.status, 200, "{}", feedback.text());

    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {DEPLOY}/alerts.yml\n\
         scrape_configs:\n  - job_name: nereid\n    static_configs:\n      - targets: [\"{}\"]\n",
        server.metrics
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let child = Command::new(bin.join("prometheus"))
        .arg(format!(
            "--config.file={}/prometheus.yml",
            dir.path().display()
        ))
        .arg(format!("--storage.tsdb.path={}/data", dir.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus starts");
    let _prometheus = ChildGuard(child);
    let prometheus = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    // Scraped: every metric a rule reads has data.
    for metric in RULE_METRICS {
        let series = wait_for(metric, Duration::from_secs(60), async || {
            query(&client, &prometheus, metric)
                .await
                .filter(|r| !r.is_empty())
        })
        .await;
        assert!(!series.is_empty(), "{metric}");
    }
    let accuracy = query(
        &client,
        &prometheus,
        "nereid_live_metric{metric=\"accuracy\"}",
    )
    .await
    .unwrap_or_default();
    assert_eq!(accuracy.len(), 1, "{accuracy:?}");

    // Evaluated: every rule loaded and evaluated against the live data without an error.
    let rules = wait_for(
        "the rules' evaluation",
        Duration::from_secs(60),
        async || {
            let reply: Value = client
                .get(format!("{prometheus}/api/v1/rules"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let rules = reply["data"]["groups"][0]["rules"].as_array()?.clone();
            let evaluated = rules.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            });
            (rules.len() == 6 && evaluated).then_some(rules)
        },
    )
    .await;
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "NereidHighErrorRate",
            "NereidLatencySLO",
            "NereidQueueSaturated",
            "NereidDatasetDrift",
            "NereidLiveMetricDrop",
            "NereidMonitorDroppingSamples"
        ]
    );

    // The dashboards: well formed, and every panel's query returns data from this server, but
    // for the panels that need what this machine lacks (a GPU) or a setting the test server does
    // not use (--triggers).
    let needs_more = [
        "nv_gpu_utilization",
        "nv_gpu_memory_used_bytes",
        "nereid_trigger_fired_total",
    ];
    for file in ["serving.json", "lifecycle.json"] {
        let path = Path::new(DEPLOY).join("../grafana/dashboards").join(file);
        let dashboard: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("dashboard")).expect("JSON");
        assert!(
            dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{file}"
        );
        assert!(
            dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
            "{file}"
        );
        let panels = dashboard["panels"].as_array().expect("panels");
        let mut ids = std::collections::BTreeSet::new();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_u64().expect("id")),
                "{file}: duplicate id"
            );
            assert_eq!(
                panel["datasource"]["uid"], "prometheus",
                "{file}: {}",
                panel["title"]
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: {}", panel["title"]);
            for target in targets {
                let expr = target["expr"].as_str().expect("expr");
                if needs_more.iter().any(|m| expr.contains(m)) {
                    continue;
                }
                // Grafana's variables, as Grafana would expand them for "All".
                let expr = expr
                    .replace("$model", ".*")
                    .replace("$__rate_interval", "1m");
                let data = wait_for(&expr, Duration::from_secs(60), async || {
                    query(&client, &prometheus, &expr)
                        .await
                        .filter(|r| !r.is_empty())
                })
                .await;
                assert!(!data.is_empty(), "{file}: {expr}");
            }
        }
    }
    server.shutdown().await.expect("clean shutdown");
}
