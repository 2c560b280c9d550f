//! Model repositories and feature stores on S3, end to end through the real S3 client
//! (object_store's, signed requests, conditional puts with `If-None-Match: *`), against moto's
//! S3 server on loopback: `nereid repo publish --repository s3://...` publishes, racing
//! publishers get distinct versions, and `nereid serve --model-repository s3://...` in poll mode
//! serves each complete version and never one whose upload is still under way; racing
//! `nereid features ingest --store s3://...` writers each get their own dataset version and the
//! store verifies. Everything runs the `nereid` binary, configured only by the provider's
//! environment variables, as users run it.
//!
//! moto comes from PyPI (server/ci/moto-venv.sh); where it cannot be installed the test skips,
//! or fails where the suite is required (CI; see nereid-testkit).

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, ChildGuard, ServedBinary, MODEL_REPO};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde_json::{json, Value};

const BUCKET: &str = "nereid-models";
const MARKER: &str = nereid_pipeline::repository::PUBLISHING_MARKER;

/// moto's S3 server on a free loopback port; killed on drop.
struct Moto {
    endpoint: String,
    _child: ChildGuard,
}

impl Moto {
    /// Starts it and waits for the line that names its port.
    fn start(moto_server: &str) -> Moto {
        let mut child = Command::new(moto_server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let child = ChildGuard(child);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        // Werkzeug logs every request to stderr: keep draining it so moto never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = port_tx.send(port);
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto_server names its port");
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: child,
        }
    }

    /// What `nereid` needs to reach it: the S3 client's standard variables.
    fn env(&self) -> [(&'static str, String); 5] {
        [
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// A client of its bucket, for what the test does behind the publishers' backs.
    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(BUCKET)
                .with_access_key_id("test")
                .with_secret_access_key("test")
                .with_region("us-east-1")
                .build()
                .expect("S3 client"),
        )
    }
}

/// `nereid repo publish` into the bucket, with the S3 settings in `env`: the version it reports.
fn publish(env: &[(&'static str, String)], model: &str, from: &Path) -> u64 {
    let repository = format!("s3://{BUCKET}/repo");
    let from = from.display().to_string();
    let (ok, stdout, stderr) = nereid_with(
        env,
        &[
            "repo",
            "publish",
            "--model",
            model,
            "--repository",
            &repository,
            "--from",
            &from,
        ],
    );
    assert!(ok, "publish failed: {stdout}{stderr}");
    let prefix = format!("published {model} version ");
    stdout
        .trim()
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"))
}

/// A folder to publish: `README`, plus the model's checked-in config when `with_config`.
fn version_source(model: &str, with_config: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("README"), model).expect("README");
    if with_config {
        std::fs::copy(
            Path::new(MODEL_REPO).join(model).join("config.pbtxt"),
            dir.path().join("config.pbtxt"),
        )
        .expect("config");
    }
    dir
}

/// moto with the test bucket created, or `None` where moto cannot be installed (a skip).
async fn moto_with_bucket() -> Option<Moto> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ci/moto-venv.sh");
    let moto_server = match nereid_testkit::run_installer(Path::new(script)) {
        Ok(path) => path,
        Err(reason) => {
            nereid_testkit::skip(&nereid_testkit::S3, reason);
            return None;
        }
    };
    let moto = Moto::start(&moto_server);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let created = client
        .put(format!("{}/{BUCKET}", moto.endpoint))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success(), "{created:?}");
    Some(moto)
}

/// `nereid ARGS` with the S3 settings in `env`: (success, stdout, stderr).
fn nereid_with(env: &[(&'static str, String)], args: &[&str]) -> (bool, String, String) {
    let (code, stdout, stderr) = common::nereid_output(args, env, None);
    (code == 0, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_feature_store_takes_racing_writers() {
    let Some(moto) = moto_with_bucket().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("s3://{BUCKET}/features");
    let files: Vec<String> = (0..4)
        .map(|i| {
            let path = dir.path().join(format!("part{i}.csv"));
            std::fs::write(&path, format!("id,x\n{i},{}.5\n", i * 10)).expect("csv");
            path.display().to_string()
        })
        .collect();
    // Four writers at once, each with its own content, into one dataset.
    let writers: Vec<_> = files
        .iter()
        .map(|file| {
            let (env, file, store) = (moto.env(), file.clone(), store.clone());
            std::thread::spawn(move || {
                nereid_with(
                    &env,
                    &[
                        "features",
                        "ingest",
                        &file,
                        "--name",
                        "customers",
                        "--store",
                        &store,
                    ],
                )
            })
        })
        .collect();
    let mut seqs: Vec<u64> = writers
        .into_iter()
        .map(|w| {
            let (ok, out, err) = w.join().expect("writer");
            assert!(ok, "{out}{err}");
            out.strip_prefix("stored customers@")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|seq| seq.parse().ok())
                .unwrap_or_else(|| panic!("unexpected output: {out}"))
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        [1, 2, 3, 4],
        "racing writers shared a sequence number"
    );
    // The same content again is the same version, not a fifth.
    let (ok, out, err) = nereid_with(
        &moto.env(),
        &[
            "features",
            "ingest",
            &files[2],
            "--name",
            "customers",
            "--store",
            &store,
        ],
    );
    assert!(ok && out.contains("customers@"), "{out}{err}");
    let (ok, out, err) = nereid_with(&moto.env(), &["features", "verify", "--store", &store]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("4 dataset version(s) verified"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repository_publish_race_and_serve() {
    let Some(moto) = moto_with_bucket().await else {
        return;
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");

    // A first version, then four publishers at once: five distinct versions.
    let source = version_source("identity_fp32", true);
    assert_eq!(publish(&moto.env(), "identity_fp32", source.path()), 1);
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (env, from) = (moto.env(), source.path().to_path_buf());
            std::thread::spawn(move || publish(&env, "identity_fp32", &from))
        })
        .collect();
    let mut versions: Vec<u64> = racers
        .into_iter()
        .map(|r| r.join().expect("publisher"))
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, [2, 3, 4, 5], "racing publishers shared a version");
    let store = moto.store();
    let keys: Vec<String> = {
        use futures_util::TryStreamExt as _;
        store
            .list(Some(&ObjectPath::from("repo")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list")
    };
    assert!(
        keys.iter().all(|k| !k.contains(MARKER)),
        "a marker was left behind: {keys:?}"
    );

    // The server follows the bucket.
    let dir = tempfile::tempdir().expect("tempdir");
    let repository = format!("s3://{BUCKET}/repo");
    let args = [
        "--model-repository",
        &repository,
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "1",
    ]
    .map(std::ffi::OsStr::new);
    let mut env = moto.env().to_vec();
    env.push(("TMPDIR", dir.path().display().to_string()));
    let server = ServedBinary::start(dir.path(), &args, &env).await;
    let http = server.http;
    let served = async |model: &str| -> Value {
        let url = format!("http://127.0.0.1:{http}/v2/models/{model}");
        match client.get(url).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or_default()["versions"].clone(),
            Err(_) => Value::Null,
        }
    };
    let limit = Duration::from_secs(60);
    wait_for("version 5 to serve", limit, async || {
        (served("identity_fp32").await == json!(["5"])).then_some(())
    })
    .await;

    // A publisher stalls halfway through version 6; a new model lands completely meanwhile.
    for (key, body) in [
        ("identity_fp32/6/README", "iden"),
        (&*format!("identity_fp32/6/{MARKER}"), "{}"),
    ] {
        store
            .put(
                &ObjectPath::from(format!("repo/{key}")),
                PutPayload::from(body.to_string()),
            )
            .await
            .expect("put");
    }
    let bytes = version_source("identity_bytes", true);
    assert_eq!(publish(&moto.env(), "identity_bytes", bytes.path()), 1);
    wait_for("the new model to serve", limit, async || {
        (served("identity_bytes").await == json!(["1"])).then_some(())
    })
    .await;
    assert_eq!(
        served("identity_fp32").await,
        json!(["5"]),
        "a version under upload was loaded"
    );
    // The upload finishes.
    store
        .put(
            &ObjectPath::from("repo/identity_fp32/6/README"),
            PutPayload::from("identity_fp32"),
        )
        .await
        .expect("put");
    store
        .delete(&ObjectPath::from(format!("repo/identity_fp32/6/{MARKER}")))
        .await
        .expect("delete marker");
    wait_for("version 6 to serve", limit, async || {
        (served("identity_fp32").await == json!(["6"])).then_some(())
    })
    .await;
}

/// A TCP proxy in front of moto that loses every `every`-th connection's first response: the
/// request reaches S3 and takes effect, and the client sees the connection drop (as when a
/// network fails mid-way). Returns its address and the count of responses it lost.
async fn flaky_proxy(
    upstream: std::net::SocketAddr,
    every: u64,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let lost = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&lost);
    tokio::spawn(async move {
        let mut connections = 0u64;
        while let Ok((mut client, _)) = listener.accept().await {
            connections += 1;
            let faulty = connections % every == 0;
            let lost = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if !faulty {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
                // Relay the request; when the response starts, drop both ends instead.
                let (mut client_read, _client_write) = client.split();
                let (mut server_read, mut server_write) = server.split();
                let mut request = [0u8; 16 << 10];
                let mut response = [0u8; 1];
                loop {
                    tokio::select! {
                        read = client_read.read(&mut request) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if server_write.write_all(&request[..n]).await.is_err() {
                                    return;
                                }
                            }
                        },
                        read = server_read.read(&mut response) => {
                            if matches!(read, Ok(n) if n > 0) {
                                lost.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    (address, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_through_a_failing_network_stay_whole() {
    let Some(moto) = moto_with_bucket().await else {
        return;
    };
    let upstream: std::net::SocketAddr = moto
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("moto's address");
    let (proxy, lost) = flaky_proxy(upstream, 3).await;
    let mut env = moto.env().to_vec();
    env[0].1 = format!("http://{proxy}");
    let source = version_source("identity_fp32", true);
    let repository = format!("s3://{BUCKET}/repo");
    let from = source.path().display().to_string();
    let publishers: Vec<_> = (0..8)
        .map(|_| {
            let (env, repository, from) = (env.clone(), repository.clone(), from.clone());
            std::thread::spawn(move || {
                common::nereid_output(
                    &[
                        "repo",
                        "publish",
                        "--model",
                        "identity_fp32",
                        "--repository",
                        &repository,
                        "--from",
                        &from,
                    ],
                    &env,
                    None,
                )
            })
        })
        .collect();
    let mut versions = Vec::new();
    for publisher in publishers {
        let (code, out, err) = publisher.join().expect("publisher");
        // Each publish succeeds or fails with a message: never a crash.
        assert!(code == 0 || code == 1, "exit {code}: {out}{err}");
        if code == 0 {
            let version: u64 = out
                .split_whitespace()
                .nth(3)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unexpected output: {out}"));
            versions.push(version);
        } else {
            assert!(err.contains("error: "), "{err}");
        }
    }
    let distinct: std::collections::BTreeSet<u64> = versions.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        versions.len(),
        "two publishers shared a version: {versions:?}"
    );
    assert!(
        !versions.is_empty(),
        "no publish got through the flaky network"
    );
    assert!(
        lost.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the proxy lost nothing"
    );

    // What the bucket holds: every version without a marker is whole, and the server, reading
    // the bucket directly, serves the newest of them.
    let store = moto.store();
    let keys: Vec<String> = {
        use futures_util::TryStreamExt as _;
        store
            .list(Some(&ObjectPath::from("repo/identity_fp32")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list")
    };
    let mut complete = Vec::new();
    for v in 1..=(distinct.iter().max().copied().unwrap_or(0) + 8) {
        let has = |name: &str| {
            keys.iter()
                .any(|k| k == &format!("repo/identity_fp32/{v}/{name}"))
        };
        if has(MARKER)
            || !keys
                .iter()
                .any(|k| k.starts_with(&format!("repo/identity_fp32/{v}/")))
        {
            continue;
        }
        assert!(
            has("README"),
            "version {v} is visible but incomplete: {keys:?}"
        );
        complete.push(v);
    }
    for v in &versions {
        assert!(
            complete.contains(v),
            "published version {v} is not complete: {keys:?}"
        );
    }
    println!(
        "{} of 8 publishes succeeded through {} lost responses; versions {versions:?}",
        versions.len(),
        lost.load(std::sync::atomic::Ordering::SeqCst)
    );
}
