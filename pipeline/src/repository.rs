//! The model repository the pipeline reads and publishes into: a local directory, or a
//! Triton-layout repository on object storage (`s3://`, `gs://`, `az://`, `file://`, parsed by
//! [`crate::location`]).
//!
//! Reading: evaluation and publishing need a few files of one model (its `config.pbtxt` and
//! labels, the lineage and weights of a published version). In a local directory those are the
//! files themselves. From an object store each is downloaded into a private cache folder that
//! has the repository's layout (version files once, since published versions are immutable;
//! model-level files on every read) and that goes away with the [`ModelRepository`].
//!
//! Publishing into a local directory is [`crate::publish`]'s staging folder and rename. An object
//! store has no rename, so a version's files appear one by one; a marker object keeps readers
//! away until the last one is there:
//! 1. reserve a number: create `<model>/<N>/.nereid-publishing` (put-if-absent), N one more than
//!    the highest numeric folder listed, complete or not. When the put finds the marker there
//!    (another publisher got N first), or the folder already holds files (a publisher finished N
//!    and removed its marker between our listing and our put; ours is removed again), try N+1.
//!    The marker names its publisher, so a put whose reply was lost and that the client retried
//!    (finding the marker there) is recognised as this publisher's own reservation;
//! 2. upload the version's files (large ones in multipart uploads);
//! 3. replace the model's `config.pbtxt` and labels (one put each, each atomic), before the
//!    version becomes visible, as a local publish does;
//! 4. delete the marker: the version is complete.
//!
//! Nereid's server leaves a version folder that holds the marker as its mirror had it (nothing
//! of it is loaded while it is being written; a version it already serves stays). The marker's
//! name sorts before version files (`.` before digits and letters), so a paginated listing that
//! passes the marker after its deletion lists every file uploaded before it. A failed publish
//! deletes what it uploaded, then the marker; a publisher that dies leaves the marker, and the
//! folder stays invisible until someone deletes it. Servers that do not know the marker (Triton)
//! can see a half-uploaded version: point them at a repository published to locally instead.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::location::{Location, ObjectLocation};
use crate::publish::{
    check_labels, check_name, model_versions, publish_directory, publish_next_version,
    PublishError, CONFIG_FILE, LABELS_FILE,
};
use crate::util::write_atomic;

/// The object that marks a version folder in an object store as being written.
pub const PUBLISHING_MARKER: &str = ".nereid-publishing";

/// Files at least this large are uploaded in parts of this size.
const MULTIPART_CHUNK: usize = 8 << 20;

/// Parts of one multipart upload in flight at once.
const UPLOAD_PARTS_IN_FLIGHT: usize = 4;

/// Version numbers one publish tries before it gives up (each one lost to another publisher).
const MAX_RESERVE_ATTEMPTS: u32 = 64;

/// A model repository: a local directory or an object-store prefix.
pub struct ModelRepository {
    kind: Kind,
}

enum Kind {
    Local(PathBuf),
    Remote(Box<Remote>),
}

struct Remote {
    location: ObjectLocation,
    runtime: tokio::runtime::Runtime,
    /// Downloaded files, in the repository's layout; removed on drop.
    cache: PathBuf,
    /// Written into this publisher's markers, so that it recognises its own: a create whose
    /// reply was lost (a dropped connection) is retried by the client and then finds the marker
    /// there, which is this publisher's reservation, not a lost race.
    publisher: String,
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.cache);
    }
}

impl fmt::Debug for ModelRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What one listing of a model's folder shows about each numeric folder.
#[derive(Debug, Default)]
struct VersionFolder {
    has_files: bool,
    being_published: bool,
}

impl ModelRepository {
    /// Opens a local path or an object-store URL (no request is made).
    pub fn open(value: &str) -> Result<Self, PublishError> {
        Self::at(Location::parse(value)?)
    }

    /// The repository at `location`.
    pub fn at(location: Location) -> Result<Self, PublishError> {
        let kind = match location {
            Location::Local(root) => Kind::Local(root),
            Location::Object(location) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| PublishError::Io {
                        path: PathBuf::from(&location.url),
                        source,
                    })?;
                let cache = std::env::temp_dir()
                    .join(format!("nereid-repository-{}", crate::util::new_run_id()));
                Kind::Remote(Box::new(Remote {
                    location,
                    runtime,
                    cache,
                    publisher: format!(
                        "{} pid {} on {}",
                        crate::util::new_run_id(),
                        std::process::id(),
                        hostname()
                    ),
                }))
            }
        };
        Ok(ModelRepository { kind })
    }

    /// A local directory.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        ModelRepository {
            kind: Kind::Local(root.into()),
        }
    }

    /// The path or URL, as given.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Local(root) => root.display().to_string(),
            Kind::Remote(remote) => remote.location.url.clone(),
        }
    }

    /// Where version `version` of `model` is (a path or a URL), for records and messages.
    pub fn describe_version(&self, model: &str, version: u64) -> String {
        match &self.kind {
            Kind::Local(root) => root
                .join(model)
                .join(version.to_string())
                .display()
                .to_string(),
            Kind::Remote(remote) => remote.location.describe(&format!("{model}/{version}")),
        }
    }

    /// The complete numeric versions of `model`, ascending (empty if the model is absent).
    pub fn versions(&self, model: &str) -> Result<Vec<u64>, PublishError> {
        match &self.kind {
            Kind::Local(root) => model_versions(root, model),
            Kind::Remote(remote) => {
                check_name(model)?;
                let folders = remote.version_folders(model)?;
                Ok(folders
                    .into_iter()
                    .filter(|(v, f)| *v > 0 && f.has_files && !f.being_published)
                    .map(|(v, _)| v)
                    .collect())
            }
        }
    }

    /// A model-level file (`config.pbtxt`, labels) as a local path, or `None` when there is
    /// none. From an object store it is downloaded again on every call.
    pub fn model_file(&self, model: &str, name: &str) -> Result<Option<PathBuf>, PublishError> {
        check_name(model)?;
        match &self.kind {
            Kind::Local(root) => Ok(existing(root.join(model).join(name))),
            Kind::Remote(remote) => remote.download(&format!("{model}/{name}"), true),
        }
    }

    /// A file of a published version as a local path, or `None` when there is none.
    pub fn version_file(
        &self,
        model: &str,
        version: u64,
        name: &str,
    ) -> Result<Option<PathBuf>, PublishError> {
        check_name(model)?;
        match &self.kind {
            Kind::Local(root) => Ok(existing(
                root.join(model).join(version.to_string()).join(name),
            )),
            Kind::Remote(remote) => remote.download(&format!("{model}/{version}/{name}"), false),
        }
    }

    /// [`crate::publish::publish_next_version`] here: the model's config and labels replaced,
    /// then every file of `source` as the next version. Returns the version and where it is.
    pub fn publish_next_version(
        &self,
        model: &str,
        config_pbtxt: &str,
        labels: &[String],
        source: &Path,
    ) -> Result<(u64, String), PublishError> {
        match &self.kind {
            Kind::Local(root) => publish_next_version(root, model, config_pbtxt, labels, source)
                .map(|(v, path)| (v, path.display().to_string())),
            Kind::Remote(remote) => {
                check_name(model)?;
                check_labels(labels)?;
                let mut model_files = vec![(CONFIG_FILE, Bytes::from(config_pbtxt.to_string()))];
                if !labels.is_empty() {
                    model_files.push((LABELS_FILE, Bytes::from(labels.join("\n") + "\n")));
                }
                remote.publish(model, &model_files, source, None)
            }
        }
    }

    /// [`crate::publish::publish_directory`] here: `source`'s files as the next version, its
    /// top-level `config.pbtxt` (if any) as the model's config. Returns the version and where.
    pub fn publish_directory(
        &self,
        model: &str,
        source: &Path,
    ) -> Result<(u64, String), PublishError> {
        match &self.kind {
            Kind::Local(root) => publish_directory(root, model, source)
                .map(|(v, path)| (v, path.display().to_string())),
            Kind::Remote(remote) => {
                check_name(model)?;
                let config = source.join(CONFIG_FILE);
                let mut model_files = Vec::new();
                if config.is_file() {
                    let text = fs::read(&config).map_err(io_err(&config))?;
                    model_files.push((CONFIG_FILE, Bytes::from(text)));
                }
                remote.publish(model, &model_files, source, Some(CONFIG_FILE))
            }
        }
    }
}

fn existing(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Remote {
    fn remote_err<'a>(
        &'a self,
        action: &'static str,
        key: &'a str,
    ) -> impl FnOnce(object_store::Error) -> PublishError + 'a {
        move |source| PublishError::Remote {
            action,
            url: self.location.describe(key),
            source,
        }
    }

    /// Downloads `key` into the cache (again when `fresh`, else only when not cached yet).
    fn download(&self, key: &str, fresh: bool) -> Result<Option<PathBuf>, PublishError> {
        let local = key
            .split('/')
            .fold(self.cache.clone(), |path, part| path.join(part));
        if !fresh && local.is_file() {
            return Ok(Some(local));
        }
        let path = self.location.child(key);
        let data = self.runtime.block_on(async {
            match self.location.store.get(&path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let Some(data) = data.map_err(self.remote_err("download", key))? else {
            return Ok(None);
        };
        if let Some(dir) = local.parent() {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        write_atomic(&local, &data).map_err(io_err(&local))?;
        Ok(Some(local))
    }

    /// Every numeric folder below `model`, from one listing.
    fn version_folders(&self, model: &str) -> Result<BTreeMap<u64, VersionFolder>, PublishError> {
        let prefix = self.location.child(model);
        let listing: Vec<_> = self
            .runtime
            .block_on(self.location.store.list(Some(&prefix)).try_collect())
            .map_err(self.remote_err("list", model))?;
        let mut folders: BTreeMap<u64, VersionFolder> = BTreeMap::new();
        for meta in listing {
            let Some(parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let parts: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            let [folder, rest @ ..] = parts.as_slice() else {
                continue;
            };
            let Ok(version) = folder.parse::<u64>() else {
                continue;
            };
            let entry = folders.entry(version).or_default();
            match rest {
                [] => {}
                [name] if name == PUBLISHING_MARKER => entry.being_published = true,
                _ if rest.iter().all(|p| !p.starts_with('.')) => entry.has_files = true,
                _ => {}
            }
        }
        Ok(folders)
    }

    /// The marker of `model`'s version `version`.
    fn marker_key(model: &str, version: u64) -> String {
        format!("{model}/{version}/{PUBLISHING_MARKER}")
    }

    /// Reserves the next free version number of `model` (step 1 of the module documentation).
    fn reserve(&self, model: &str) -> Result<u64, PublishError> {
        let highest = self.version_folders(model)?.keys().next_back().copied();
        self.reserve_from(model, highest.unwrap_or(0) + 1)
    }

    /// Reserves `version`, or the first free number after it.
    fn reserve_from(&self, model: &str, mut version: u64) -> Result<u64, PublishError> {
        let note = serde_json::json!({
            "publisher": self.publisher,
            "started_at": crate::util::now_rfc3339(),
        });
        let note = Bytes::from(note.to_string());
        for _ in 0..MAX_RESERVE_ATTEMPTS {
            let key = Self::marker_key(model, version);
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            let created = self.runtime.block_on(self.location.store.put_opts(
                &self.location.child(&key),
                PutPayload::from(note.clone()),
                options,
            ));
            let ours = match created {
                Ok(_) => true,
                Err(object_store::Error::AlreadyExists { .. }) => self.is_own_marker(&key)?,
                Err(e) => return Err(self.remote_err("create", &key)(e)),
            };
            if ours {
                let taken = self
                    .version_folders(model)?
                    .get(&version)
                    .is_some_and(|f| f.has_files);
                if !taken {
                    return Ok(version);
                }
                self.delete(&key)?;
            }
            version += 1;
        }
        Err(PublishError::NoFreeVersion {
            model: model.to_string(),
            attempts: MAX_RESERVE_ATTEMPTS,
        })
    }

    /// Whether the marker at `key` is this publisher's own.
    fn is_own_marker(&self, key: &str) -> Result<bool, PublishError> {
        let path = self.location.child(key);
        let text = self.runtime.block_on(async {
            match self.location.store.get(&path).await {
                Ok(result) => result.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let Some(text) = text.map_err(self.remote_err("read", key))? else {
            return Ok(false);
        };
        Ok(serde_json::from_slice::<serde_json::Value>(&text)
            .is_ok_and(|note| note["publisher"] == self.publisher.as_str()))
    }

    fn delete(&self, key: &str) -> Result<(), PublishError> {
        match self
            .runtime
            .block_on(self.location.store.delete(&self.location.child(key)))
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.remote_err("delete", key)(e)),
        }
    }

    /// Publishes `source` (less the top-level file `skip`) as the next version of `model`,
    /// writing `model_files` into the model's folder first.
    fn publish(
        &self,
        model: &str,
        model_files: &[(&str, Bytes)],
        source: &Path,
        skip: Option<&str>,
    ) -> Result<(u64, String), PublishError> {
        if !source.is_dir() {
            return Err(PublishError::NotADirectory(source.to_path_buf()));
        }
        let mut files = Vec::new();
        collect_files(source, "", skip, &mut files)?;
        let version = self.reserve(model)?;
        let base = format!("{model}/{version}");
        let mut uploaded = Vec::new();
        let result = (|| {
            for (rel, path) in &files {
                let key = format!("{base}/{rel}");
                uploaded.push(key.clone());
                self.upload(&key, path)?;
            }
            for (name, contents) in model_files {
                let key = format!("{model}/{name}");
                self.runtime
                    .block_on(
                        self.location
                            .store
                            .put(&self.location.child(&key), contents.clone().into()),
                    )
                    .map_err(self.remote_err("upload", &key))?;
            }
            self.delete(&Self::marker_key(model, version))
        })();
        if let Err(e) = result {
            // Best effort: what stays behind keeps its marker, so no reader takes it.
            let cleaned = uploaded
                .iter()
                .try_for_each(|key| self.delete(key))
                .and_then(|()| self.delete(&Self::marker_key(model, version)));
            if let Err(cleanup) = cleaned {
                tracing::warn!(
                    version = %self.location.describe(&base),
                    "a failed publish left files behind (the folder keeps its {PUBLISHING_MARKER} marker, so it is never loaded; delete it): {cleanup}"
                );
            }
            return Err(e);
        }
        Ok((version, self.location.describe(&base)))
    }

    /// Uploads the file at `path` as `key`: one put, or a multipart upload for a large file.
    fn upload(&self, key: &str, path: &Path) -> Result<(), PublishError> {
        let mut file = fs::File::open(path).map_err(io_err(path))?;
        let size = file.metadata().map_err(io_err(path))?.len();
        let object = self.location.child(key);
        let store = &self.location.store;
        if size < MULTIPART_CHUNK as u64 {
            let mut data = Vec::with_capacity(size as usize);
            file.read_to_end(&mut data).map_err(io_err(path))?;
            return self
                .runtime
                .block_on(store.put(&object, PutPayload::from(data)))
                .map(drop)
                .map_err(self.remote_err("upload", key));
        }
        // One future for the whole upload: the writer spawns its part uploads on the runtime.
        // Reading the file inside it blocks only this private runtime's thread.
        self.runtime.block_on(async {
            let upload = store
                .put_multipart(&object)
                .await
                .map_err(self.remote_err("start uploading", key))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
            let mut chunk = vec![0; MULTIPART_CHUNK];
            loop {
                let read = match file.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(io_err(path)(e));
                    }
                };
                writer
                    .wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT)
                    .await
                    .map_err(self.remote_err("upload", key))?;
                writer.write(&chunk[..read]);
            }
            writer
                .finish()
                .await
                .map(drop)
                .map_err(self.remote_err("upload", key))
        })
    }
}

/// The files below `dir` as (`/`-separated relative path, path), leaving out the top-level
/// `skip`.
fn collect_files(
    dir: &Path,
    rel: &str,
    skip: Option<&str>,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), PublishError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<io::Result<_>>()
        .map_err(io_err(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && Some(name.as_str()) == skip {
            continue;
        }
        let path = entry.path();
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if path.is_dir() {
            collect_files(&path, &child, None, out)?;
        } else {
            out.push((child, path));
        }
    }
    Ok(())
}

fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::ObjectStore;

    use super::*;

    fn memory_repository(store: &Arc<InMemory>) -> ModelRepository {
        let location = ObjectLocation {
            store: Arc::clone(store) as Arc<dyn ObjectStore>,
            prefix: ObjectPath::from("repo"),
            url: "memory://bucket/repo".into(),
            local_dir: None,
        };
        ModelRepository::at(Location::Object(location)).expect("repository")
    }

    fn source(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, contents) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        }
        dir
    }

    fn keys(store: &InMemory) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut keys: Vec<String> = runtime
            .block_on(store.list(None).try_collect::<Vec<_>>())
            .expect("list")
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    fn put(store: &InMemory, rel: &str, contents: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(store.put(
                &ObjectPath::from(format!("repo/{rel}")),
                PutPayload::from(contents.to_string()),
            ))
            .expect("put");
    }

    #[test]
    fn publishes_versions_and_reads_them_back() {
        let store = Arc::new(InMemory::new());
        let repo = memory_repository(&store);
        assert!(repo.versions("m").expect("versions").is_empty());
        let files = source(&[("model.safetensors", "w1"), ("extra/notes.txt", "n")]);
        let labels = vec!["a".to_string(), "b".to_string()];
        let (v, at) = repo
            .publish_next_version("m", "name: \"m\"\n", &labels, files.path())
            .expect("publish");
        assert_eq!((v, at.as_str()), (1, "memory://bucket/repo/m/1"));
        let (v2, _) = repo
            .publish_next_version("m", "name: \"m\"\n", &labels, files.path())
            .expect("publish again");
        assert_eq!(v2, 2);
        assert_eq!(
            keys(&store),
            [
                "repo/m/1/extra/notes.txt",
                "repo/m/1/model.safetensors",
                "repo/m/2/extra/notes.txt",
                "repo/m/2/model.safetensors",
                "repo/m/config.pbtxt",
                "repo/m/labels.txt",
            ]
        );
        assert_eq!(repo.versions("m").expect("versions"), [1, 2]);
        let weights = repo
            .version_file("m", 2, "model.safetensors")
            .expect("download")
            .expect("present");
        assert_eq!(fs::read_to_string(weights).expect("read"), "w1");
        let labels_path = repo
            .model_file("m", LABELS_FILE)
            .expect("download")
            .expect("present");
        assert_eq!(fs::read_to_string(labels_path).expect("read"), "a\nb\n");
        assert_eq!(repo.version_file("m", 3, "x").expect("download"), None);
        // A directory publish takes its config.pbtxt as the model's.
        let dir = source(&[("config.pbtxt", "name: \"m\" # v3\n"), ("model.onnx", "o")]);
        let (v3, _) = repo
            .publish_directory("m", dir.path())
            .expect("publish dir");
        assert_eq!(v3, 3);
        let config = repo
            .model_file("m", CONFIG_FILE)
            .expect("download")
            .expect("present");
        assert!(fs::read_to_string(config).expect("read").contains("# v3"));
        assert!(!keys(&store).contains(&"repo/m/3/config.pbtxt".to_string()));
    }

    #[test]
    fn a_folder_being_published_is_not_a_version_and_its_number_is_skipped() {
        let store = Arc::new(InMemory::new());
        put(&store, "m/1/model.safetensors", "w");
        put(&store, "m/2/model.safetensors", "half");
        put(&store, &format!("m/2/{PUBLISHING_MARKER}"), "{}");
        let repo = memory_repository(&store);
        assert_eq!(repo.versions("m").expect("versions"), [1]);
        let files = source(&[("model.safetensors", "w3")]);
        let (v, _) = repo
            .publish_next_version("m", "", &[], files.path())
            .expect("publish");
        assert_eq!(v, 3, "the number under way is not reused");
    }

    #[test]
    fn a_reservation_on_a_finished_folder_moves_on() {
        // Another publisher finished version 2 (its marker gone) after our listing said 1 was
        // the highest: our marker at 2 goes again and 3 is taken.
        let store = Arc::new(InMemory::new());
        put(&store, "m/1/model.safetensors", "w");
        put(&store, "m/2/model.safetensors", "other");
        let repo = memory_repository(&store);
        let Kind::Remote(remote) = &repo.kind else {
            panic!("remote");
        };
        assert_eq!(remote.reserve_from("m", 2).expect("reserve"), 3);
        assert_eq!(
            keys(&store),
            [
                "repo/m/1/model.safetensors",
                "repo/m/2/model.safetensors",
                &format!("repo/m/3/{PUBLISHING_MARKER}"),
            ]
        );
        // And a marker that is there already (another publisher at work) is never taken over.
        let other = memory_repository(&store);
        let Kind::Remote(other) = &other.kind else {
            panic!("remote");
        };
        assert_eq!(other.reserve_from("m", 3).expect("reserve"), 4);
    }

    #[test]
    fn a_reservation_whose_reply_was_lost_is_still_ours() {
        // The create went through but its reply was lost; the client's retry finds the marker.
        let store = Arc::new(InMemory::new());
        let repo = memory_repository(&store);
        let Kind::Remote(remote) = &repo.kind else {
            panic!("remote");
        };
        let note = serde_json::json!({ "publisher": remote.publisher }).to_string();
        put(&store, &format!("m/1/{PUBLISHING_MARKER}"), &note);
        assert_eq!(remote.reserve_from("m", 1).expect("reserve"), 1);
        // Another publisher's marker is not.
        put(
            &store,
            &format!("m/2/{PUBLISHING_MARKER}"),
            r#"{"publisher": "someone else"}"#,
        );
        assert_eq!(remote.reserve_from("m", 2).expect("reserve"), 3);
    }

    #[test]
    fn racing_publishers_get_distinct_versions() {
        let store = Arc::new(InMemory::new());
        let files = source(&[("model.safetensors", "w")]);
        let path = files.path().to_path_buf();
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let store = Arc::clone(&store);
                let path = path.clone();
                std::thread::spawn(move || {
                    memory_repository(&store)
                        .publish_next_version("m", "", &[], &path)
                        .expect("publish")
                        .0
                })
            })
            .collect();
        let mut versions: Vec<u64> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
        assert!(keys(&store).iter().all(|k| !k.contains(PUBLISHING_MARKER)));
    }

    #[test]
    fn a_failed_upload_leaves_nothing() {
        let store = Arc::new(InMemory::new());
        let repo = memory_repository(&store);
        let files = source(&[("a.bin", "a")]);
        // A dangling link cannot be read: the upload fails after `a.bin` went up.
        std::os::unix::fs::symlink(files.path().join("missing"), files.path().join("b.bin"))
            .expect("symlink");
        let err = repo
            .publish_next_version("m", "", &[], files.path())
            .expect_err("unreadable file");
        assert!(err.to_string().contains("b.bin"), "{err}");
        assert!(keys(&store).is_empty(), "{:?}", keys(&store));
    }

    #[test]
    fn large_files_go_up_in_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("repo").display());
        fs::create_dir_all(dir.path().join("repo")).expect("mkdir");
        let repo = ModelRepository::open(&url).expect("open");
        let big: Vec<u8> = (0..MULTIPART_CHUNK * 2 + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let files = tempfile::tempdir().expect("tempdir");
        fs::write(files.path().join("model.safetensors"), &big).expect("write");
        let (v, at) = repo
            .publish_next_version("m", "", &[], files.path())
            .expect("publish");
        assert_eq!(at, format!("{url}/m/1"));
        let published = dir.path().join("repo/m/1/model.safetensors");
        assert_eq!(fs::read(published).expect("read"), big);
        assert!(!dir.path().join("repo/m/1").join(PUBLISHING_MARKER).exists());
        assert_eq!(repo.versions("m").expect("versions"), [v]);
    }
}
