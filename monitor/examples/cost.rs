//! CPU cost of monitoring per sampled request on the monitor thread, in isolation (release
//! build): `cargo run --release -p nereid-monitor --example cost`.
//!
//! For the default classifier (4 features + prediction, 150-row reference) and a 16-feature
//! model (5,000-row reference, 16 outputs), one row per request, at the default window (200
//! rows every 100): the windows and tests alone, then with the prediction log and the feedback
//! index as the server runs them, and that per served request at the default sample rate.

use std::path::PathBuf;
use std::time::Instant;

use nereid_monitor::feedback::FeedbackIndex;
use nereid_monitor::log::{LogSettings, LogWriter, Record};
use nereid_monitor::profile::{reference_numeric_stats, ColumnKind, ColumnProfile, Profile};
use nereid_monitor::{Layout, Monitor, MonitorConfig, Reference, Sample, Task, TensorInfo};
use nereid_protocol::{DataType, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

struct Case {
    name: &'static str,
    reference: Reference,
    layout: Layout,
    requests: Vec<(Vec<Tensor>, Vec<Tensor>)>,
}

fn iris() -> Case {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model-repo/iris_classifier/1/reference.json");
    let reference = Reference::read(&path).expect("reference");
    let layout = Layout {
        inputs: vec![TensorInfo {
            name: "INPUT".into(),
            datatype: DataType::Fp32,
            per_row: Some(4),
        }],
        outputs: vec![TensorInfo {
            name: "PROBABILITIES".into(),
            datatype: DataType::Fp32,
            per_row: Some(3),
        }],
        batched: true,
        labels: Default::default(),
    };
    let mut rng = SmallRng::seed_from_u64(1);
    let requests = (0..1000)
        .map(|_| {
            let x: Vec<f32> = (0..4)
                .map(|i| [5.8f32, 3.0, 3.7, 1.2][i] + rng.random_range(-0.5..0.5))
                .collect();
            let mut p = [
                rng.random::<f32>(),
                rng.random::<f32>(),
                rng.random::<f32>(),
            ];
            let s: f32 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= s);
            (
                vec![Tensor::from_f32("INPUT", vec![1, 4], &x)],
                vec![Tensor::from_f32("PROBABILITIES", vec![1, 3], &p)],
            )
        })
        .collect();
    Case {
        name: "iris_classifier (4 features, 150-row reference)",
        reference,
        layout,
        requests,
    }
}

fn wide() -> Case {
    let mut rng = SmallRng::seed_from_u64(2);
    let columns = (0..16)
        .map(|f| {
            let values: Vec<f64> = (0..5000)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    (z * 10_000.0).round() / 10_000.0
                })
                .collect();
            ColumnProfile {
                name: format!("x{f}"),
                data_type: "Float64".into(),
                kind: ColumnKind::Numeric,
                count: 5000,
                nulls: 0,
                numeric: Some(reference_numeric_stats(&values)),
                categorical: None,
                temporal: None,
            }
        })
        .collect();
    let reference = Reference {
        format: 2,
        task: Task::Classification,
        dataset_version: "synthetic".into(),
        input_name: "INPUT0".into(),
        features: (0..16).map(|f| format!("x{f}")).collect(),
        label: String::new(),
        classes: Vec::new(),
        profile: Profile {
            rows: 5000,
            columns,
        },
        inputs: Vec::new(),
        prediction: None,
    };
    let layout = Layout {
        inputs: vec![TensorInfo {
            name: "INPUT0".into(),
            datatype: DataType::Fp32,
            per_row: Some(16),
        }],
        outputs: vec![TensorInfo {
            name: "OUTPUT0".into(),
            datatype: DataType::Fp32,
            per_row: Some(16),
        }],
        batched: true,
        labels: Default::default(),
    };
    let requests = (0..1000)
        .map(|_| {
            let x: Vec<f32> = (0..16).map(|_| StandardNormal.sample(&mut rng)).collect();
            (
                vec![Tensor::from_f32("INPUT0", vec![1, 16], &x)],
                vec![Tensor::from_f32("OUTPUT0", vec![1, 16], &x)],
            )
        })
        .collect();
    Case {
        name: "16 features (5,000-row reference)",
        reference,
        layout,
        requests,
    }
}

fn main() {
    const N: usize = 200_000;
    let rate = MonitorConfig::default().sample_rate;
    println!("| model | per sample: windows and tests | + prediction log + feedback index | per request at sample rate {rate} |");
    println!("|---|---|---|---|");
    for case in [iris(), wide()] {
        let mut cells: Vec<f64> = Vec::new();
        for with_log in [false, true] {
            let mut monitor = Monitor::new(
                "m",
                1,
                &case.reference,
                &MonitorConfig::default(),
                &case.layout,
            )
            .expect("monitor");
            let dir = tempfile::tempdir().expect("tempdir");
            let mut log = LogWriter::open(dir.path(), LogSettings::default()).expect("log");
            let mut index = FeedbackIndex::new(Task::Classification, Vec::new(), 200_000);
            let started = Instant::now();
            let mut windows = 0;
            for i in 0..N {
                let (inputs, outputs) = &case.requests[i % case.requests.len()];
                let observed = monitor.observe(&Sample {
                    inputs,
                    outputs,
                    time_ms: i as u64,
                });
                windows += observed.reports.len();
                if with_log {
                    let id = format!("{i:016x}");
                    index.insert(&id, i as u64, &observed.predictions);
                    log.append(&Record::Prediction {
                        time_ms: i as u64,
                        id,
                        inputs: inputs.clone(),
                        outputs: outputs.clone(),
                    })
                    .expect("append");
                }
            }
            let per = started.elapsed().as_nanos() as f64 / N as f64;
            assert!(windows > 0);
            cells.push(per / 1000.0);
        }
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.3} µs |",
            case.name,
            cells[0],
            cells[1],
            cells[1] * rate
        );
    }
}
