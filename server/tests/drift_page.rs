//! The drift page in a real browser: Debian's Chromium, headless, renders
//! `/v2/models/iris_classifier/drift.html` after a stationary and a shifted window; the test
//! checks the screenshot's pixels (both distributions drawn as bars, the drift badge shown)
//! and the rendered DOM, and keeps the screenshot at `$CARGO_TARGET_TMPDIR/drift-page.png`.
//!
//! Without Chromium the test skips, saying so; under CI it fails instead (nereid-testkit;
//! `.ci/run` installs the `chromium` package).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{iris_with, TestServer, EVERY_REQUEST};
use serde_json::json;

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NEREID_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Runs headless Chromium with the flags a closed network needs; returns stdout.
fn headless(browser: &Path, profile: &Path, args: &[String]) -> String {
    let output = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Pixels within 6 of `rgb` on every channel.
fn count_colour(pixels: &[u8], channels: usize, rgb: [u8; 3]) -> usize {
    pixels
        .chunks(channels)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 6))
        .count()
}

fn hex(colour: &str) -> [u8; 3] {
    let v = u32::from_str_radix(colour.trim_start_matches('#'), 16).expect("hex colour");
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drift_page_renders_in_headless_chromium() {
    let Some(browser) = chromium() else {
        nereid_testkit::skip(
            &nereid_testkit::CHROMIUM,
            "no chromium on PATH (Debian: apt-get install chromium; or set NEREID_CHROMIUM)",
        );
        return;
    };
    let server = TestServer::start_repo(iris_with(EVERY_REQUEST)).await;
    // Window 1 as trained, window 2 with petal length 1.5 cm longer.
    let rows: Vec<[f32; 4]> = vec![
        [5.1, 3.5, 1.4, 0.2],
        [4.9, 3.0, 1.4, 0.2],
        [7.0, 3.2, 4.7, 1.4],
        [6.4, 3.2, 4.5, 1.5],
        [6.3, 3.3, 6.0, 2.5],
        [5.8, 2.7, 5.1, 1.9],
        [5.0, 3.6, 1.4, 0.2],
        [5.5, 2.3, 4.0, 1.3],
        [6.5, 3.0, 5.8, 2.2],
        [5.7, 2.8, 4.5, 1.3],
    ];
    for shift in [0.0f32, 1.5] {
        for _ in 0..20 {
            let mut data = Vec::new();
            for i in 0..50 {
                let mut r = rows[i % rows.len()];
                r[2] += shift;
                data.extend(r);
            }
            let body = json!({"inputs": [{"name": "INPUT", "shape": [50, 4], "datatype": "FP32", "data": data}]});
            assert_eq!(
                server.infer_json("iris_classifier", &body).await.status,
                200
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/v2/models/iris_classifier/drift").await.json()["windows"] != 2 {
        assert!(Instant::now() < deadline, "two windows did not close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let url = server.url("/v2/models/iris_classifier/drift.html");
    let profile = tempfile::tempdir().expect("profile dir");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("drift-page.png");
    let _ = std::fs::remove_file(&shot);
    let (browser2, profile2, shot2, url2) = (
        browser.clone(),
        profile.path().to_path_buf(),
        shot.clone(),
        url.clone(),
    );
    tokio::task::spawn_blocking(move || {
        headless(
            &browser2,
            &profile2,
            &[
                "--window-size=1200,2400".into(),
                format!("--screenshot={}", shot2.display()),
                url2,
            ],
        )
    })
    .await
    .expect("screenshot");
    let (browser3, profile3) = (browser.clone(), profile.path().to_path_buf());
    let dom = tokio::task::spawn_blocking(move || {
        headless(&browser3, &profile3, &["--dump-dom".into(), url])
    })
    .await
    .expect("dom");
    println!("screenshot: {}", shot.display());

    // The DOM as the browser built it.
    assert!(
        dom.contains("<h1>Drift: iris_classifier version 1</h1>"),
        "{dom}"
    );
    assert_eq!(
        dom.matches("<svg class=\"bars\"").count(),
        5,
        "four features and the prediction"
    );
    assert!(dom.contains("id=\"column-petal_length\""));

    // The pixels: both distributions drawn, and red drift badges.
    let decoder = png::Decoder::new(std::fs::File::open(&shot).expect("screenshot written"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("PNG frame");
    assert_eq!((info.width, info.height), (1200, 2400));
    let channels = info.color_type.samples();
    let reference = count_colour(
        &pixels,
        channels,
        hex(nereid_server::lifecycle::page::REFERENCE_COLOUR),
    );
    let current = count_colour(
        &pixels,
        channels,
        hex(nereid_server::lifecycle::page::CURRENT_COLOUR),
    );
    let drift = count_colour(&pixels, channels, hex("#d62728"));
    println!("reference bars {reference} px, current bars {current} px, drift red {drift} px");
    assert!(reference > 3000, "reference bars: {reference} px");
    assert!(current > 3000, "current bars: {current} px");
    assert!(drift > 300, "drift badges: {drift} px");
    server.shutdown().await.expect("clean shutdown");
}
