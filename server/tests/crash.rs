//! Crash consistency: `kill -9` of `nereid` at random points of `repo publish`, `features
//! ingest`, `pipeline run` and a server's start (mirroring a remote repository, loading its
//! models), many times over. Afterwards no half-written version is ever visible (every numeric
//! version folder is complete, in the repository and in the server's mirror), `repo validate`
//! and `features verify` are clean, the next operation succeeds, a killed pipeline run re-runs to
//! the same weights as a run that was never interrupted, and the server restarts and serves.
//! `NEREID_CRASH_ITERATIONS` sets the kills per operation (default 8; the pipeline gets a
//! quarter of them, as each run trains a model).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{iris, nereid_output};

const NEREID: &str = env!("CARGO_BIN_EXE_nereid");

fn iterations() -> u32 {
    std::env::var("NEREID_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// A fixed pseudo-random sequence in [0, 1) (xorshift), so that a failing run repeats.
struct Delays(u64);

impl Delays {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `nereid ARGS` in `dir` to completion: how long it took.
fn timed(dir: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let (code, out, err) = nereid_output(args, &[], Some(dir));
    assert_eq!(code, 0, "nereid {args:?}: {out}{err}");
    started.elapsed()
}

/// Starts `nereid ARGS` in `dir` and kills it (SIGKILL) after `after`, unless it ended first.
fn killed(dir: &Path, args: &[&str], after: Duration) {
    killed_with(dir, args, &[], after);
}

/// [`killed`] with environment variables added.
fn killed_with(dir: &Path, args: &[&str], env: &[(&str, &Path)], after: Duration) {
    let mut child = Command::new(NEREID)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env("NEREID_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nereid starts");
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn killed_publishes_never_leave_a_partial_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path();
    common::copy_dir(
        &Path::new(common::MODEL_REPO).join("identity_fp32"),
        &here.join("repo/identity_fp32"),
    );
    // A version large enough that a publish takes a while to copy and sync.
    let big: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::create_dir_all(here.join("src")).expect("mkdir");
    std::fs::write(here.join("src/weights.bin"), &big).expect("write");
    std::fs::write(here.join("src/README"), "identity").expect("write");
    let publish = [
        "repo",
        "publish",
        "--repository",
        "repo",
        "--model",
        "identity_fp32",
        "--from",
        "src",
    ];
    let typical = timed(here, &publish);
    let mut delays = Delays(0x9e37_79b9_7f4a_7c15);
    for _ in 0..iterations() {
        killed(here, &publish, typical.mul_f64(delays.next() * 1.2));
        for entry in std::fs::read_dir(here.join("repo/identity_fp32")).expect("model dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<u64>().is_err() || name == "1" {
                continue;
            }
            let weights = entry.path().join("weights.bin");
            let size = std::fs::metadata(&weights).map(|m| m.len()).unwrap_or(0);
            assert_eq!(
                size,
                big.len() as u64,
                "version {name} is visible but incomplete"
            );
            assert!(
                entry.path().join("README").is_file(),
                "version {name} lacks README"
            );
        }
    }
    let (code, out, err) = nereid_output(&["repo", "validate", "repo"], &[], Some(here));
    assert_eq!(code, 0, "{out}{err}");
    // The next publish still gets a version of its own.
    let (code, out, err) = nereid_output(&publish, &[], Some(here));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("published identity_fp32 version "), "{out}");
}

#[test]
fn killed_ingests_leave_a_store_that_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path();
    let mut csv = String::from("id,x,label\n");
    for i in 0..300_000u32 {
        csv.push_str(&format!("{i},{}.25,c{}\n", i % 997, i % 7));
    }
    std::fs::write(here.join("big.csv"), &csv).expect("csv");
    let ingest = [
        "features", "ingest", "big.csv", "--name", "big", "--store", "fs",
    ];
    let typical = timed(here, &ingest);
    let mut delays = Delays(0x2545_f491_4f6c_dd1d);
    for i in 0..iterations() {
        // A new content each time, so that each run writes a new version.
        csv.push_str(&format!("{},{i}.5,c0\n", 1_000_000 + i));
        std::fs::write(here.join("big.csv"), &csv).expect("csv");
        killed(here, &ingest, typical.mul_f64(delays.next() * 1.2));
        let (code, out, err) =
            nereid_output(&["features", "verify", "--store", "fs"], &[], Some(here));
        assert_eq!(code, 0, "after kill {i}: {out}{err}");
    }
    let (code, out, err) = nereid_output(&ingest, &[], Some(here));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = nereid_output(
        &["features", "versions", "big", "--store", "fs"],
        &[],
        Some(here),
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// A small pipeline over Iris: ingest, train (seeded), evaluate, gate, publish.
fn pipeline_workspace(dir: &Path) {
    let mut csv = String::from("sepal_length,sepal_width,petal_length,petal_width,species\n");
    for (x, species) in iris() {
        csv.push_str(&format!("{},{},{},{},{species}\n", x[0], x[1], x[2], x[3]));
    }
    std::fs::write(dir.join("iris.csv"), csv).expect("csv");
    std::fs::write(
        dir.join("iris.toml"),
        r#"name = "iris"
model = "iris"
store = "fs"
runs = "runs"
repository = "repo"

[[step]]
name = "ingest"
kind = "ingest"
source = "iris.csv"
dataset = "iris"

[[step]]
name = "train"
kind = "train"
needs = ["ingest"]
features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
label = "species"
hidden = [8]
epochs = 150
learning_rate = 0.02
seed = 7
test_fraction = 0.2

[[step]]
name = "evaluate"
kind = "evaluate"
needs = ["train"]

[[step]]
name = "gate"
kind = "gate"
needs = ["evaluate"]
metric = "accuracy"
min_improvement = 0.0

[[step]]
name = "publish"
kind = "publish"
needs = ["gate"]
"#,
    )
    .expect("pipeline");
}

fn published_weights(dir: &Path) -> Vec<Vec<u8>> {
    let mut versions: Vec<u64> = std::fs::read_dir(dir.join("repo/iris"))
        .map(|r| {
            r.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    versions
        .iter()
        .map(|v| {
            std::fs::read(dir.join(format!("repo/iris/{v}/model.safetensors")))
                .unwrap_or_else(|e| panic!("version {v} is visible without its weights: {e}"))
        })
        .collect()
}

#[test]
fn killed_pipeline_runs_rerun_to_the_same_result() {
    let reference = tempfile::tempdir().expect("tempdir");
    pipeline_workspace(reference.path());
    let typical = timed(reference.path(), &["pipeline", "run", "iris.toml"]);
    let want = published_weights(reference.path());
    assert_eq!(want.len(), 1);

    let mut delays = Delays(0xdead_beef_cafe_f00d);
    for i in 0..(iterations() / 4).max(1) {
        let dir = tempfile::tempdir().expect("tempdir");
        pipeline_workspace(dir.path());
        killed(
            dir.path(),
            &["pipeline", "run", "iris.toml"],
            typical.mul_f64(delays.next()),
        );
        // Whatever was published before the kill is whole.
        let early = published_weights(dir.path());
        assert!(
            early.iter().all(|w| *w == want[0]),
            "kill {i}: a different model was published"
        );
        // A kill before the store's marker was written leaves no store (or its empty folders,
        // which the next run completes) to verify.
        if dir.path().join("fs/STORE").exists() {
            let (code, out, err) = nereid_output(
                &["features", "verify", "--store", "fs"],
                &[],
                Some(dir.path()),
            );
            assert_eq!(code, 0, "kill {i}: {out}{err}");
        }
        timed(dir.path(), &["pipeline", "run", "iris.toml"]);
        assert_eq!(
            published_weights(dir.path()),
            want,
            "kill {i}: the re-run differs"
        );
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the status code and body (`None` if the
/// server is not answering).
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.get(9..12)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The HTTP port of a server that wrote `port_file`, once it answers ready (or `None` when it
/// is not ready within `limit`).
fn ready_port(port_file: &Path, limit: Duration) -> Option<u16> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let port = std::fs::read(port_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|doc| doc["http"].as_u64())
            .and_then(|port| u16::try_from(port).ok());
        if let Some(port) = port {
            if http(port, "GET", "/v2/health/ready", "").is_some_and(|(code, _)| code == 200) {
                return Some(port);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn killed_server_starts_leave_a_mirror_that_restarts_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path();
    // A remote repository (a file:// URL, mirrored into a cache like any object store): the
    // default repository plus a large second version of identity_fp32, so that a start spends
    // time downloading and loading.
    let remote = here.join("remote");
    common::copy_dir(Path::new(common::MODEL_REPO), &remote);
    let big: Vec<u8> = (0..48 << 20).map(|i: u32| (i % 241) as u8).collect();
    std::fs::create_dir_all(remote.join("identity_fp32/2")).expect("mkdir");
    std::fs::write(remote.join("identity_fp32/2/weights.bin"), &big).expect("write");
    std::fs::write(remote.join("identity_fp32/2/README"), "identity").expect("write");
    let url = format!("file://{}", remote.display());
    let tmp = here.join("tmp");
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let port_file = here.join("ports.json");
    let port_file_arg = port_file.to_string_lossy().into_owned();
    let serve = [
        "serve",
        "--model-repository",
        &url,
        "--host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--port-file",
        &port_file_arg,
        "--prediction-log-dir",
        "log",
    ];
    // The mirror lives under TMPDIR, one folder per URL.
    let env = [("TMPDIR", tmp.as_path())];
    let start = |what: &str| {
        let _ = std::fs::remove_file(&port_file);
        let started = Instant::now();
        let child = Command::new(NEREID)
            .args(serve)
            .envs(env)
            .current_dir(here)
            .env("NEREID_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nereid serve starts");
        let child = common::ChildGuard(child);
        let port = ready_port(&port_file, Duration::from_secs(120))
            .unwrap_or_else(|| panic!("{what}: the server did not become ready"));
        (child, port, started.elapsed())
    };
    let clear_mirror = || {
        for entry in std::fs::read_dir(&tmp).expect("tmp") {
            std::fs::remove_dir_all(entry.expect("entry").path()).expect("clear the mirror");
        }
    };
    let (first, _, typical) = start("first start");
    drop(first);
    eprintln!("a start from an empty mirror to ready: {typical:?}");
    clear_mirror();

    let mut delays = Delays(0x0bad_c0de_1234_5678);
    let mut before_mirrored = 0;
    for i in 0..iterations() {
        // Every other start begins from an empty mirror, so kills land in the download too.
        if i % 2 == 0 {
            clear_mirror();
        }
        let _ = std::fs::remove_file(&port_file);
        killed_with(here, &serve, &env, typical.mul_f64(delays.next() * 1.2));
        // Whatever the mirror shows as a version is whole.
        let mut mirrored = false;
        for mirror in std::fs::read_dir(&tmp).expect("tmp") {
            let weights = mirror
                .expect("entry")
                .path()
                .join("identity_fp32/2/weights.bin");
            if let Ok(meta) = std::fs::metadata(&weights) {
                assert_eq!(meta.len(), big.len() as u64, "kill {i}: a partial version");
                mirrored = true;
            }
        }
        if !mirrored {
            before_mirrored += 1;
        }
    }
    eprintln!(
        "{} kills: {before_mirrored} before the large version was mirrored",
        iterations()
    );

    // After the last kill the server starts from what it left, loads every model and serves
    // the large version of identity_fp32 (the newest; the default policy serves only it) and the
    // Iris classifier.
    let (server, port, _) = start("restart");
    let input = r#"{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
        "data": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}"#;
    for path in [
        "/v2/models/identity_fp32/infer",
        "/v2/models/identity_fp32/versions/2/infer",
    ] {
        let (code, body) = http(port, "POST", path, input).expect("answered");
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body.contains("[1.0,2.0,3.0"), "{path}: {body}");
    }
    let iris = r#"{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 4],
        "data": [6.7, 3.0, 5.2, 2.3]}]}"#;
    let (code, body) =
        http(port, "POST", "/v2/models/iris_classifier/infer", iris).expect("answered");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("PROBABILITIES"), "{body}");
    drop(server);
}
