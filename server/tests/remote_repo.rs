//! Remote model repositories end to end: a repository in an object store is mirrored into a
//! cache directory, which the real server then loads and serves with its ordinary local code.

use nereid_server::remote;

use std::path::Path;
use std::sync::Arc;

use nereid_server::ServeConfig;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::oneshot;

/// The checked-in model repository.
const MODEL_REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../model-repo");

/// Uploads every file below `dir` to `store` under `prefix`.
async fn upload(store: &InMemory, dir: &Path, prefix: &str) -> usize {
    let mut uploaded = 0;
    let mut pending = vec![(dir.to_path_buf(), prefix.to_string())];
    while let Some((dir, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read model folder") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = format!("{prefix}/{name}");
            if entry.file_type().expect("file type").is_dir() {
                pending.push((entry.path(), key));
            } else {
                let contents = std::fs::read(entry.path()).expect("read model file");
                store
                    .put(&ObjectPath::from(key), PutPayload::from(contents))
                    .await
                    .expect("in-memory put");
                uploaded += 1;
            }
        }
    }
    uploaded
}

#[tokio::test]
async fn synced_cache_is_served_by_the_real_server() {
    let store = Arc::new(InMemory::new());
    let model = Path::new(MODEL_REPO).join("identity_fp32");
    let uploaded = upload(&store, &model, "repo/identity_fp32").await;
    assert!(uploaded >= 2, "config and at least one version file");

    let cache = tempfile::tempdir().expect("tempdir");
    let mut repository = remote::RemoteRepository::new(
        store,
        "repo",
        "memory:///repo".to_string(),
        cache.path().join("mirror"),
    );
    let summary = repository.sync().await.expect("sync");
    assert_eq!(summary.downloaded, uploaded);
    assert!(repository
        .cache_dir()
        .join("identity_fp32/config.pbtxt")
        .is_file());

    let (stop, stopped) = oneshot::channel::<()>();
    let running =
        nereid_server::start(ServeConfig::for_tests(repository.cache_dir()), async move {
            let _ = stopped.await;
        })
        .await
        .expect("server starts on the cache");
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client builds");
    let response = client
        .get(format!(
            "http://{}/v2/models/identity_fp32/ready",
            running.http
        ))
        .send()
        .await
        .expect("ready request");
    assert_eq!(response.status(), 200);

    let _ = stop.send(());
    running.wait().await.expect("server shuts down");
}

/// `nereid serve --model-repository file:///...` in poll mode: served from the synced cache,
/// and a model uploaded later to the store appears through the same polling path as S3's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_polls_a_remote_repository() {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let store = tempfile::tempdir().unwrap();
    copy(
        &Path::new(MODEL_REPO).join("identity_fp32"),
        &store.path().join("identity_fp32"),
    );
    let url = format!("file://{}", store.path().display());
    let mut config = ServeConfig::for_tests(&url);
    config.model_control_mode = nereid_server::ControlMode::Poll;
    config.repository_poll = std::time::Duration::from_millis(50);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = nereid_server::start(config, async move {
        let _ = stopped.await;
    })
    .await
    .expect("server starts on a file:// repository");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready = |model: &'static str| {
        let client = client.clone();
        let url = format!("http://{}/v2/models/{model}/ready", server.http);
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready("identity_fp32").await, 200);
    assert_eq!(ready("identity_bytes").await, 400);

    copy(
        &Path::new(MODEL_REPO).join("identity_bytes"),
        &store.path().join("identity_bytes"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ready("identity_bytes").await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the uploaded model was not served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    server.wait().await.expect("clean shutdown");
}
