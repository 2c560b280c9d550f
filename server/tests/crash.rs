//! Crash consistency: `kill -9` of `nereid` at random points of `repo publish`, `features
//! ingest` and `pipeline run`, many times over. Afterwards no half-written version is ever
//! visible (every numeric version folder is complete), `repo validate` and `features verify` are
//! clean, the next operation succeeds, and a killed pipeline run re-runs to the same weights as
//! a run that was never interrupted. `NEREID_CRASH_ITERATIONS` sets the kills per operation
//! (default 8; the pipeline gets a quarter of them, as each run trains a model).

mod common;

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
    let mut child = Command::new(NEREID)
        .args(args)
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
