//! Sensitivity and false alarms of the default classifier's monitor, simulated offline through
//! the `nereid-monitor` crate (release build recommended):
//!
//!     cargo run --release -p nereid-monitor --example simulate [-- REQUESTS]
//!
//! 1. Detection delay: requests until a shift of 0.25, 0.5 or 1 reference standard deviation
//!    in one feature is reported, median and worst of 20 seeds, at the default window.
//! 2. False alarms: REQUESTS (default 10^6) stationary requests drawn from the reference; the
//!    windows with dataset drift, and each test's per-window alarm rate per feature (every
//!    numeric test in turn, at its default threshold, windows uncorrected).
//! 3. The same for a reference that is itself a sample (150 draws from N(0, 1) per feature)
//!    and traffic drawn fresh from N(0, 1): what p-value thresholds give per window when the
//!    reference is a sample of the population rather than the population.

use std::path::PathBuf;
use std::time::Instant;

use nereid_monitor::profile::{reference_numeric_stats, ColumnKind, ColumnProfile, Profile};
use nereid_monitor::simulate::{detection_delay, false_alarms, ReferenceSampler};
use nereid_monitor::stattest::{ColumnType, Method};
use nereid_monitor::{MonitorConfig, Reference, Task};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn main() -> Result<(), String> {
    let requests: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().map_err(|_| format!("not a request count: {a}")))
        .transpose()?
        .unwrap_or(1_000_000);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model-repo/iris_classifier/1/reference.json");
    let reference = Reference::read(&path).map_err(|e| e.to_string())?;
    let sampler = ReferenceSampler::new(&reference)?;
    let config = MonitorConfig::default();
    println!(
        "reference: {} ({} rows), window: {}",
        path.display(),
        reference.profile.rows,
        config.window.describe()
    );

    println!("\n## Detection delay (requests after the shift; median / max of 20 seeds)\n");
    println!("| feature | 0.25 sd | 0.5 sd | 1 sd |");
    println!("|---|---|---|---|");
    for (f, name) in sampler.names.iter().enumerate() {
        let mut cells = Vec::new();
        for sigmas in [0.25, 0.5, 1.0] {
            let mut delays: Vec<u64> = (0..20)
                .map(|seed| {
                    detection_delay(&reference, &sampler, &config, f, sigmas, seed, 50_000)
                        .map(|d| d.unwrap_or(u64::MAX))
                })
                .collect::<Result<_, _>>()?;
            delays.sort_unstable();
            let show = |d: u64| {
                if d == u64::MAX {
                    ">50000".to_string()
                } else {
                    d.to_string()
                }
            };
            cells.push(format!("{} / {}", show(delays[9]), show(delays[19])));
        }
        println!("| {name} | {} |", cells.join(" | "));
    }

    println!("\n## Stationary traffic drawn from the reference: {requests} requests\n");
    alarm_table(&reference, &sampler, &config, requests)?;

    println!("\n## A sampled reference (150 draws of N(0,1) per feature), fresh N(0,1) traffic: {requests} requests\n");
    let (normal_reference, normal_traffic) = normal_case(150, 4);
    alarm_table_with(&normal_reference, &normal_traffic, &config, requests)?;
    Ok(())
}

fn alarm_table(
    reference: &Reference,
    sampler: &ReferenceSampler,
    config: &MonitorConfig,
    requests: u64,
) -> Result<(), String> {
    alarm_table_with(reference, sampler, config, requests)
}

fn alarm_table_with(
    reference: &Reference,
    traffic: &ReferenceSampler,
    config: &MonitorConfig,
    requests: u64,
) -> Result<(), String> {
    println!(
        "| test | windows | dataset-drift windows | per-window alarm rate per feature | seconds |"
    );
    println!("|---|---|---|---|---|");
    let methods: Vec<Option<Method>> = std::iter::once(None)
        .chain(
            Method::ALL
                .into_iter()
                .filter(|m| m.accepts(ColumnType::Numeric))
                .map(Some),
        )
        .collect();
    for method in methods {
        let started = Instant::now();
        let alarms = false_alarms(reference, traffic, config, method, requests, 42)?;
        let rates: Vec<String> = alarms
            .column_alarms
            .iter()
            .map(|a| format!("{:.4}", *a as f64 / alarms.windows.max(1) as f64))
            .collect();
        println!(
            "| {} | {} | {} | {} | {:.1} |",
            method.map_or("default (Evidently's choice)".to_string(), |m| m
                .name()
                .to_string()),
            alarms.windows,
            alarms.dataset_drift,
            rates.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A reference of `rows` standard-normal draws per feature, and a sampler that draws fresh
/// standard-normal traffic (through a sketch of 200,000 draws).
fn normal_case(rows: usize, features: usize) -> (Reference, ReferenceSampler) {
    let mut rng = SmallRng::seed_from_u64(2026);
    let profile = |n: usize, rng: &mut SmallRng| -> Profile {
        Profile {
            rows: n as u64,
            columns: (0..features)
                .map(|f| {
                    let values: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
                    ColumnProfile {
                        name: format!("x{f}"),
                        data_type: "Float64".into(),
                        kind: ColumnKind::Numeric,
                        count: n as u64,
                        nulls: 0,
                        numeric: Some(reference_numeric_stats(&values)),
                        categorical: None,
                        temporal: None,
                    }
                })
                .collect(),
        }
    };
    let make = |profile: Profile| Reference {
        format: 2,
        task: Task::Classification,
        dataset_version: "synthetic".into(),
        input_name: "INPUT".into(),
        features: (0..features).map(|f| format!("x{f}")).collect(),
        label: String::new(),
        classes: Vec::new(),
        profile,
        inputs: Vec::new(),
        prediction: None,
    };
    let sample = make(profile(rows, &mut rng));
    let population = make(profile(200_000, &mut rng));
    let traffic = ReferenceSampler::new(&population).expect("sampler");
    (sample, traffic)
}
