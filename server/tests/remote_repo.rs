//! Remote model repositories end to end: a repository in an object store is mirrored into a
//! cache directory, which the real server then loads and serves with its ordinary local code.

// `remote.rs` is compiled into this test crate, so that its unit tests run here too; the API the
// server does not use yet would otherwise warn.
#[allow(dead_code)]
#[path = "../src/remote.rs"]
mod remote;

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
