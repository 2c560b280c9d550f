//! The default classifier's monitor on simulated traffic drawn from its own reference
//! (`model-repo/iris_classifier/1/reference.json`), at the default settings (a tenth of
//! requests sampled, windows of 200 rows every 100): a half-standard-deviation shift of any one
//! feature is found within 2,000 requests (median over 20 seeds), and 10^6 stationary requests
//! raise no dataset drift. Every test's per-window alarm rate and the delays at other shifts
//! are `cargo run --release -p nereid-monitor --example simulate`, recorded in BENCHMARKS.md.

use std::path::PathBuf;

use nereid_monitor::simulate::{detection_delay, false_alarms, ReferenceSampler};
use nereid_monitor::{MonitorConfig, Reference};

fn iris_reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../model-repo/iris_classifier/1/reference.json");
    Reference::read(&path).expect("the default classifier's reference")
}

#[test]
fn a_half_sigma_shift_is_found_within_2000_requests() {
    let reference = iris_reference();
    let sampler = ReferenceSampler::new(&reference).expect("sampler");
    let config = MonitorConfig::default();
    for feature in 0..sampler.names.len() {
        let mut delays: Vec<u64> = (0..20)
            .map(|seed| {
                detection_delay(&reference, &sampler, &config, feature, 0.5, seed, 20_000)
                    .expect("simulation runs")
                    .unwrap_or(u64::MAX)
            })
            .collect();
        delays.sort_unstable();
        let median = delays[9];
        println!(
            "{}: median {median} requests, max {}",
            sampler.names[feature], delays[19]
        );
        assert!(
            median <= 2000,
            "{}: median detection after {median} requests ({delays:?})",
            sampler.names[feature]
        );
    }
}

#[test]
fn stationary_traffic_raises_no_dataset_drift() {
    let reference = iris_reference();
    let sampler = ReferenceSampler::new(&reference).expect("sampler");
    // A million requests at the default sample rate (0.1): 100,000 samples, windows of 200
    // rows every 100.
    let alarms = false_alarms(
        &reference,
        &sampler,
        &MonitorConfig::default(),
        None,
        1_000_000,
        7,
    )
    .expect("simulation runs");
    println!("{alarms:?}");
    assert_eq!((alarms.samples, alarms.windows), (100_000, 999));
    assert_eq!(alarms.dataset_drift, 0, "{alarms:?}");
}
