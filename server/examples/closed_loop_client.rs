//! The labelled half of the closed-loop demo (`examples/closed-loop/`): sends Fisher's Iris
//! rows to a Nereid serving `iris_classifier` with a drift trigger, first as they are, then with
//! one feature shifted, and feeds the true species back for every request; measures when the
//! trigger fires and when version 2 serves, waits for a window of version 2, and prints the
//! lineage of one request before and one after the swap.
//!
//!   closed_loop_client --url http://127.0.0.1:8000 --shift petal_length=+1.5
//!
//! Bounded: stops after --max-seconds (default 300) whatever happens.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

const FEATURES: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
const SPECIES: [&str; 3] = ["setosa", "versicolor", "virginica"];
const MODEL: &str = "iris_classifier";

struct Args {
    url: String,
    /// Write the shifted rows in perf_analyzer's JSON form (for nereid-loadtest) and exit.
    write_shifted: Option<String>,
    /// A file created when the shift starts (so that other traffic can start with it).
    shift_marker: Option<String>,
    shift: (usize, f32),
    stationary_requests: u64,
    rows: usize,
    max: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8000".into(),
        write_shifted: None,
        shift_marker: None,
        shift: (2, 1.5),
        stationary_requests: 40,
        rows: 25,
        max: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--write-shifted" => args.write_shifted = Some(value()?),
            "--shift-marker" => args.shift_marker = Some(value()?),
            "--shift" => {
                let v = value()?;
                let (name, by) = v
                    .split_once('=')
                    .ok_or("--shift is FEATURE=+CM, e.g. petal_length=+1.5")?;
                let index = FEATURES
                    .iter()
                    .position(|f| *f == name)
                    .ok_or(format!("unknown feature {name} (one of {FEATURES:?})"))?;
                let by: f32 = by.parse().map_err(|e| format!("--shift {v}: {e}"))?;
                args.shift = (index, by);
            }
            "--stationary-requests" => {
                args.stationary_requests = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--rows" => args.rows = value()?.parse().map_err(|e| format!("{e}"))?,
            "--max-seconds" => {
                args.max = Duration::from_secs(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let client = Client {
        http: reqwest::Client::new(),
        url: args.url.trim_end_matches('/').to_string(),
    };
    let data = linfa_datasets::iris();
    let rows: Vec<([f32; 4], &str)> = (0..data.records.nrows())
        .map(|i| {
            let r = data.records.row(i);
            (
                [r[0] as f32, r[1] as f32, r[2] as f32, r[3] as f32],
                SPECIES[data.targets[i]],
            )
        })
        .collect();

    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    if let Some(path) = &args.write_shifted {
        // Shuffled: nereid-loadtest sends the rows in order, and Fisher's are sorted by species.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, next(i + 1));
        }
        let data: Vec<Value> = order
            .iter()
            .map(|&i| {
                let mut x = rows[i].0;
                x[args.shift.0] += args.shift.1;
                json!({"INPUT": x})
            })
            .collect();
        std::fs::write(path, json!({"data": data}).to_string())
            .map_err(|e| format!("{path}: {e}"))?;
        return Ok(());
    }

    let started = Instant::now();
    let (mut sent, mut failed, mut labels_lost) = (0u64, 0u64, 0u64);
    let mut shift_started: Option<Instant> = None;
    let mut fired_after: Option<Duration> = None;
    let mut serving_after: Option<Duration> = None;
    let mut first_shifted_id = String::new();
    let mut last_id;
    let mut v2_windows_at_swap = 0;
    loop {
        if started.elapsed() > args.max {
            return Err(format!(
                "stopped after {} s without the loop closing ({sent} requests, {failed} failed)",
                args.max.as_secs()
            ));
        }
        let shifted = sent >= args.stationary_requests;
        if shifted && shift_started.is_none() {
            shift_started = Some(Instant::now());
            if let Some(marker) = &args.shift_marker {
                std::fs::write(marker, b"").map_err(|e| format!("{marker}: {e}"))?;
            }
            println!(
                "{sent} requests as the training data; now {} shifted by {:+} cm",
                FEATURES[args.shift.0], args.shift.1
            );
        }
        sent += 1;
        let id = format!("demo-{sent}");
        let mut values = Vec::with_capacity(args.rows * 4);
        let mut truth = Vec::with_capacity(args.rows);
        for _ in 0..args.rows {
            let (mut x, species) = rows[next(rows.len())];
            if shifted {
                x[args.shift.0] += args.shift.1;
            }
            values.extend(x);
            truth.push(species);
        }
        let body = json!({"id": id, "inputs": [{"name": "INPUT", "shape": [args.rows, 4], "datatype": "FP32", "data": values}]});
        let (status, reply) = client
            .post(&format!("/v2/models/{MODEL}/infer"), &body)
            .await?;
        if status != 200 {
            failed += 1;
            eprintln!("request {id}: {status} {reply}");
            continue;
        }
        let version = reply["model_version"].as_str().unwrap_or("1").to_string();
        let (status, _) = client
            .post(
                &format!("/v2/models/{MODEL}/versions/{version}/feedback"),
                &json!({"feedback": [{"id": id, "truth": truth}]}),
            )
            .await?;
        if status != 200 {
            labels_lost += 1;
        }
        if shifted && first_shifted_id.is_empty() {
            first_shifted_id = id.clone();
        }
        last_id = id;
        let Some(shift) = shift_started else { continue };
        if fired_after.is_none() {
            let (_, triggers) = client.get("/v2/triggers").await?;
            if let Some(f) = triggers["firings"].as_array().and_then(|f| f.first()) {
                fired_after = Some(shift.elapsed());
                println!(
                    "{:.2} s after the shift: trigger {} fired ({})",
                    shift.elapsed().as_secs_f64(),
                    f["trigger"].as_str().unwrap_or("?"),
                    f["reason"]["summary"].as_str().unwrap_or("?")
                );
            }
        }
        if serving_after.is_none() && version == "2" {
            serving_after = Some(shift.elapsed());
            println!(
                "{:.2} s after the shift: version 2 answers",
                shift.elapsed().as_secs_f64()
            );
            let (_, drift) = client
                .get(&format!("/v2/models/{MODEL}/versions/2/drift"))
                .await?;
            v2_windows_at_swap = drift["windows"].as_u64().unwrap_or(0);
        }
        if serving_after.is_some() {
            let (_, drift) = client
                .get(&format!("/v2/models/{MODEL}/versions/2/drift"))
                .await?;
            if drift["windows"].as_u64().unwrap_or(0) > v2_windows_at_swap {
                let drifted: Vec<&str> = drift["latest"]["columns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["test"]["drift"] == true)
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                println!(
                    "version 2's first window: dataset drift {}, drifted columns {:?}",
                    drift["latest"]["dataset_drift"]["drift"], drifted
                );
                break;
            }
        }
    }
    println!(
        "{sent} requests, {failed} failed; {labels_lost} label batches refused (sent to a version swapped out meanwhile)"
    );
    if let (Some(f), Some(s)) = (fired_after, serving_after) {
        println!(
            "drift onset -> trigger fired: {:.2} s; -> version 2 serving: {:.2} s",
            f.as_secs_f64(),
            s.as_secs_f64()
        );
    }
    for id in [first_shifted_id, last_id] {
        let (status, chain) = client.get(&format!("/v2/lineage/{id}")).await?;
        println!("\nlineage of {id} ({status}):");
        print!("{}", nereid_pipeline::lineage::render(&chain));
    }
    if failed > 0 {
        return Err(format!("{failed} requests failed"));
    }
    Ok(())
}
