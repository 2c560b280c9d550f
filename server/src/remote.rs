//! Remote model repositories: a Triton-layout repository on object storage (S3, GCS, Azure Blob,
//! or `file://` for tests), served through a local mirror.
//!
//! This module owns the mirror ("cache") directory and nothing else. The server loads models
//! from the cache with its ordinary local code (`repository::scan`, the registry and its poll),
//! so a remote repository needs no special case once the cache is in place.
//!
//! Data flow: `--model-repository s3://bucket/prefix` -> [`RepositoryLocation::parse`] builds an
//! `ObjectStore` from the URL and the provider's standard environment variables ->
//! [`RemoteRepository::sync`] lists the prefix, downloads new and changed objects into the cache
//! in Triton layout (`prefix/<model>/config.pbtxt` -> `cache/<model>/config.pbtxt`,
//! `prefix/<model>/<version>/...` -> `cache/<model>/<version>/...`) and removes local files whose
//! objects are gone -> the server serves [`RemoteRepository::cache_dir`]. Calling `sync` before
//! each repository poll makes the poll follow the remote repository.
//!
//! Atomicity: the loader never sees a half-downloaded version.
//! - A folder below a model (a version folder) is published whole. When any of its objects is
//!   new or changed, the folder is rebuilt in a hidden staging folder `<model>/.sync-<version>-<n>`
//!   (changed objects downloaded and fsynced, unchanged files hard-linked from the current folder)
//!   and renamed into place only when every object has arrived. A failed download deletes the
//!   staging folder and leaves the current folder as it was.
//! - A model that is new to the cache is staged whole, config and versions together, in
//!   `.sync-<model>-<n>` at the cache root and renamed into place.
//! - Model-level files (`config.pbtxt`, labels) are downloaded to a hidden temporary name and
//!   renamed over the old file. Versions are published before the config of their model.
//! - Removed versions and models are renamed to a hidden name, then deleted: they vanish at once.
//! - Replacing an existing version folder whose contents changed takes two renames (old out, new
//!   in); a scan that falls between them sees that version missing for that instant. Published
//!   versions are normally immutable (new weights go in a new version), so this is rare.
//! - A version folder that holds a publisher's marker (`<model>/<version>/.nereid-publishing`,
//!   see [`nereid_pipeline::repository`]) is still being uploaded: the cache keeps it as it was
//!   (absent, or the files it had) until the marker is gone, and a model whose only folder is
//!   such a one is not added yet.
//!
//! Leftover hidden `.sync-*` entries (from a crash or a cancelled sync) are ignored by the loader
//! (hidden names, non-numeric version names) and deleted by the next sync.
//!
//! Change detection: an object counts as changed when its size, or its e_tag (its last-modified
//! time where the store gives no e_tag), differs from the object the local file came from. Those
//! fingerprints are kept in a hidden manifest in the cache (`.nereid-remote.json`), so a restart
//! over the same cache downloads only what changed.
//!
//! Object storage has no directories: a folder exists only through the objects in it, so an empty
//! version folder cannot exist remotely (Triton needs at least one file in a version folder
//! anyway). Empty "directory marker" objects (keys ending in `/`, which list as the folder's own
//! path) are ignored, as are hidden names (starting with `.`) and names that could escape the
//! cache.
//!
//! Concurrency: `sync` takes `&mut self`, so one sync at a time owns the cache; a cache directory
//! must not be shared between processes. Within one folder at most [`DOWNLOAD_CONCURRENCY`]
//! objects download at once; each streams to its file through a bounded channel to a blocking
//! writer task, so neither large objects nor file I/O sit on the async workers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use nereid_pipeline::location::{Location, LocationError, ObjectLocation, SCHEMES};
use nereid_pipeline::repository::PUBLISHING_MARKER;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Objects of one folder downloaded at once.
pub const DOWNLOAD_CONCURRENCY: usize = 4;

/// Chunks buffered between one download stream and its file writer.
const WRITE_QUEUE: usize = 4;

/// Name prefix of everything a sync writes before publishing it (hidden, so never loaded).
const STAGING_PREFIX: &str = ".sync-";

/// The manifest: for each cached file, the fingerprint of the object it was downloaded from.
const MANIFEST: &str = ".nereid-remote.json";

/// Why a remote repository could not be opened or mirrored.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("invalid model repository URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error(
        "unsupported model repository URL scheme '{scheme}://' in '{url}' (supported: {SCHEMES})"
    )]
    UnsupportedScheme { url: String, scheme: String },

    #[error("cannot open model repository {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },

    #[error("failed to list model repository {url}: {source}")]
    List {
        url: String,
        source: object_store::Error,
    },

    #[error("failed to download {object}: {source}")]
    Download {
        object: String,
        source: object_store::Error,
    },

    #[error(
        "downloaded {actual} bytes of {object}, expected {expected} (the transfer was cut short)"
    )]
    Incomplete {
        object: String,
        expected: u64,
        actual: u64,
    },

    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("the repository sync was cancelled: the runtime is shutting down")]
    Cancelled,
}

/// A model repository location: a local path, or an object-store URL.
#[derive(Debug)]
pub enum RepositoryLocation {
    Local(PathBuf),
    Remote(RemoteRepository),
}

impl RepositoryLocation {
    /// Parses `--model-repository`: a local path, or an object-storage URL as
    /// [`nereid_pipeline::location`] reads them (`s3://`, `gs://`, `az://`, `azure://`,
    /// `file://`; credentials from the providers' environment variables). Nothing here touches the
    /// network (a `file://` directory must exist); a wrong bucket or missing credentials show up
    /// in the first [`RemoteRepository::sync`].
    ///
    /// A remote repository gets a default cache directory under the system temp directory, one
    /// per URL (so a restart reuses it); [`RemoteRepository::with_cache_dir`] chooses another.
    pub fn parse(value: &str) -> Result<Self, RemoteError> {
        match Location::parse(value) {
            Ok(Location::Local(path)) => Ok(Self::Local(path)),
            Ok(Location::Object(location)) => RemoteRepository::open(location).map(Self::Remote),
            Err(LocationError::Invalid { url, reason }) => {
                Err(RemoteError::InvalidUrl { url, reason })
            }
            Err(LocationError::UnsupportedScheme { url, scheme }) => {
                Err(RemoteError::UnsupportedScheme { url, scheme })
            }
            Err(LocationError::Store { url, source }) => Err(RemoteError::Store { url, source }),
        }
    }
}

/// A remote repository and its local mirror.
pub struct RemoteRepository {
    /// Where the repository lives.
    store: Arc<dyn ObjectStore>,
    /// The repository root inside `store`.
    prefix: ObjectPath,
    /// The repository as the user named it, for messages.
    url: String,
    /// The mirror that the server loads from.
    cache_dir: PathBuf,
    /// For each cached file (relative path, `/`-separated), the fingerprint of the object it was
    /// downloaded from: what makes a sync incremental. `None` until the first sync reads the
    /// manifest.
    mirrored: Option<BTreeMap<String, Fingerprint>>,
    /// Makes staging names unique within this process (leftovers of others are deleted first).
    next_staging: u64,
}

impl fmt::Debug for RemoteRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteRepository")
            .field("url", &self.url)
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

/// What one [`RemoteRepository::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Objects downloaded because they were new or changed.
    pub downloaded: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Local files removed because their objects are gone.
    pub removed: usize,
    /// Files already up to date.
    pub unchanged: usize,
    /// Keys left out: hidden or unsafe names, directory markers.
    pub skipped: usize,
    /// Version folders left as they were because a publisher is still writing them.
    pub being_published: usize,
}

impl SyncSummary {
    /// Whether the cache changed.
    pub fn changed(&self) -> bool {
        self.downloaded > 0 || self.removed > 0
    }
}

impl fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "downloaded {} objects ({} bytes), removed {} files, {} unchanged, {} keys skipped, {} versions being published",
            self.downloaded, self.bytes, self.removed, self.unchanged, self.skipped, self.being_published
        )
    }
}

impl RemoteRepository {
    /// Builds from a store and the repository's prefix in it (tests pass
    /// `object_store::memory::InMemory` or `local::LocalFileSystem`). `url` names the repository
    /// in messages; `cache_dir` is created by the first sync.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: String, cache_dir: PathBuf) -> Self {
        Self::with_prefix(store, ObjectPath::from(prefix), url, cache_dir)
    }

    fn with_prefix(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        url: String,
        cache_dir: PathBuf,
    ) -> Self {
        RemoteRepository {
            store,
            prefix,
            url,
            cache_dir,
            mirrored: None,
            next_staging: 0,
        }
    }

    /// Mirrors into `cache_dir` instead (the manifest there is read by the next sync).
    pub fn with_cache_dir(mut self, cache_dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = cache_dir.into();
        self.mirrored = None;
        self
    }

    /// Where the mirrored repository lives (serve from here).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The repository URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens an object location as a repository.
    fn open(location: ObjectLocation) -> Result<Self, RemoteError> {
        // A missing directory would list as an empty repository and empty the cache.
        if let Some(directory) = &location.local_dir {
            if !directory.is_dir() {
                return Err(RemoteError::InvalidUrl {
                    url: location.url.clone(),
                    reason: format!("{} is not a directory", directory.display()),
                });
            }
        }
        let cache_dir = default_cache_dir(&location.url);
        Ok(Self::with_prefix(
            location.store,
            location.prefix,
            location.url,
            cache_dir,
        ))
    }

    /// Mirrors the remote prefix into the cache: downloads new and changed objects, removes local
    /// files whose objects are gone, publishing each version folder atomically (see the module
    /// documentation). On error the cache holds every folder either as before or complete, and
    /// the next sync carries on from there.
    pub async fn sync(&mut self) -> Result<SyncSummary, RemoteError> {
        let prefix = (!self.prefix.is_root()).then_some(&self.prefix);
        let listing: Vec<ObjectMeta> =
            self.store
                .list(prefix)
                .try_collect()
                .await
                .map_err(|source| RemoteError::List {
                    url: self.url.clone(),
                    source,
                })?;
        self.sync_listing(listing).await
    }

    /// [`Self::sync`] after the listing: `listing` is what the store holds now.
    async fn sync_listing(&mut self, listing: Vec<ObjectMeta>) -> Result<SyncSummary, RemoteError> {
        let layout = Layout::new(&self.prefix, listing);
        let cache_dir = self.cache_dir.clone();
        let local = blocking(move || LocalTree::prepare(&cache_dir)).await?;
        if self.mirrored.is_none() {
            let (cache_dir, url) = (self.cache_dir.clone(), self.url.clone());
            self.mirrored = Some(blocking(move || Ok(read_manifest(&cache_dir, &url))).await?);
        }
        let mut summary = SyncSummary {
            skipped: layout.skipped,
            being_published: layout
                .models
                .values()
                .map(|m| m.being_published.len())
                .sum(),
            ..SyncSummary::default()
        };
        let applied = self.apply(&layout, &local, &mut summary).await;
        if applied.is_ok() {
            let wanted = layout.keys();
            // What the cache has of a folder being published stays, fingerprints included.
            self.mirrored_mut()
                .retain(|key, _| wanted.contains(key) || layout.is_being_published(key));
        }
        let saved = self.save_manifest().await;
        applied?;
        saved?;
        Ok(summary)
    }

    fn mirrored_mut(&mut self) -> &mut BTreeMap<String, Fingerprint> {
        self.mirrored.get_or_insert_with(BTreeMap::new)
    }

    /// Whether the file at `key`, `local_size` bytes on disk, came from the object `meta`.
    fn is_fresh(&self, key: &str, meta: &ObjectMeta, local_size: Option<u64>) -> bool {
        local_size == Some(meta.size)
            && self
                .mirrored
                .as_ref()
                .and_then(|mirrored| mirrored.get(key))
                .is_some_and(|fingerprint| fingerprint.same_object(&Fingerprint::of(meta)))
    }

    /// Drops the fingerprints of `key` and everything below it.
    fn forget(&mut self, key: &str) {
        let below = format!("{key}/");
        self.mirrored_mut()
            .retain(|k, _| k != key && !k.starts_with(&below));
    }

    fn staging_name(&mut self, what: &str) -> String {
        self.next_staging += 1;
        format!("{STAGING_PREFIX}{what}-{}", self.next_staging)
    }

    /// The object behind `key` (a cache-relative path), for messages.
    fn object_url(&self, key: &str) -> String {
        format!("{}/{key}", self.url.trim_end_matches('/'))
    }

    /// Brings the cache (`local`, as scanned) to `layout`: per model, versions first, then
    /// model-level files, then removals; then models and root files that are gone.
    async fn apply(
        &mut self,
        layout: &Layout,
        local: &LocalTree,
        summary: &mut SyncSummary,
    ) -> Result<(), RemoteError> {
        for (model, remote) in &layout.models {
            match local.models.get(model) {
                // Only a first version under way: the model appears with it.
                None if remote.files.is_empty() && remote.folders.is_empty() => {}
                None => self.add_model(model, remote, summary).await?,
                Some(local_model) => {
                    self.update_model(model, remote, local_model, summary)
                        .await?
                }
            }
        }
        for (name, meta) in &layout.root_files {
            let local_size = local.root_files.get(name).copied();
            self.sync_file(None, name, meta, local_size, summary)
                .await?;
        }
        for (model, local_model) in &local.models {
            if layout.models.contains_key(model) {
                continue;
            }
            summary.removed += local_model.file_count();
            if !layout.root_files.contains_key(model) {
                let graveyard = self.staging_name(&format!("removed-{model}"));
                let (target, graveyard) =
                    (self.cache_dir.join(model), self.cache_dir.join(graveyard));
                blocking(move || retire(&target, &graveyard)).await?;
            }
            self.forget(model);
        }
        for name in local.root_files.keys() {
            if layout.root_files.contains_key(name) {
                continue;
            }
            summary.removed += 1;
            if !layout.models.contains_key(name) {
                let path = self.cache_dir.join(name);
                blocking(move || remove_file(&path)).await?;
            }
            self.forget(name);
        }
        Ok(())
    }

    /// Stages a model that the cache lacks, whole, and renames it into place.
    async fn add_model(
        &mut self,
        model: &str,
        remote: &RemoteModel,
        summary: &mut SyncSummary,
    ) -> Result<(), RemoteError> {
        let jobs = remote
            .all_files()
            .map(|(rel, meta)| StageJob {
                key: format!("{model}/{rel}"),
                rel,
                meta: meta.clone(),
                reuse: None,
            })
            .collect();
        let (staging, graveyard) = (
            self.staging_name(model),
            self.staging_name(&format!("old-{model}")),
        );
        let (staging, graveyard) = (self.cache_dir.join(staging), self.cache_dir.join(graveyard));
        let staged = self.stage(&staging, jobs).await?;
        let target = self.cache_dir.join(model);
        blocking(move || publish(&staging, &target, &graveyard)).await?;
        self.record(staged, summary);
        Ok(())
    }

    /// Brings an existing model folder up to date.
    async fn update_model(
        &mut self,
        model: &str,
        remote: &RemoteModel,
        local: &LocalModel,
        summary: &mut SyncSummary,
    ) -> Result<(), RemoteError> {
        for (folder, files) in &remote.folders {
            self.sync_folder(model, folder, files, local.folders.get(folder), summary)
                .await?;
        }
        for (name, meta) in &remote.files {
            let local_size = local.files.get(name).copied();
            self.sync_file(Some(model), name, meta, local_size, summary)
                .await?;
        }
        let model_dir = self.cache_dir.join(model);
        for (folder, local_folder) in &local.folders {
            if remote.folders.contains_key(folder) || remote.being_published.contains(folder) {
                continue;
            }
            summary.removed += local_folder.files.len();
            if !remote.files.contains_key(folder) {
                let target = model_dir.join(folder);
                let graveyard = model_dir.join(self.staging_name(&format!("removed-{folder}")));
                blocking(move || retire(&target, &graveyard)).await?;
            }
            self.forget(&format!("{model}/{folder}"));
        }
        for name in local.files.keys() {
            if remote.files.contains_key(name) {
                continue;
            }
            summary.removed += 1;
            if !remote.folders.contains_key(name) {
                let path = model_dir.join(name);
                blocking(move || remove_file(&path)).await?;
            }
            self.forget(&format!("{model}/{name}"));
        }
        Ok(())
    }

    /// Rebuilds `<model>/<folder>` aside and renames it into place, unless every file in it is
    /// already the current object and nothing else is there.
    async fn sync_folder(
        &mut self,
        model: &str,
        folder: &str,
        files: &BTreeMap<String, ObjectMeta>,
        local: Option<&LocalFolder>,
        summary: &mut SyncSummary,
    ) -> Result<(), RemoteError> {
        let base = format!("{model}/{folder}");
        let local_size = |rel: &str| local.and_then(|l| l.files.get(rel)).copied();
        let fresh: BTreeSet<&str> = files
            .iter()
            .filter(|(rel, meta)| self.is_fresh(&format!("{base}/{rel}"), meta, local_size(rel)))
            .map(|(rel, _)| rel.as_str())
            .collect();
        if let Some(local) = local {
            // Every remote file is fresh (so present locally) and there are no others.
            if !local.foreign && fresh.len() == files.len() && local.files.len() == files.len() {
                summary.unchanged += files.len();
                return Ok(());
            }
            summary.removed += local
                .files
                .keys()
                .filter(|rel| !files.contains_key(*rel))
                .count();
        }
        let model_dir = self.cache_dir.join(model);
        let target = model_dir.join(folder);
        let jobs = files
            .iter()
            .map(|(rel, meta)| StageJob {
                key: format!("{base}/{rel}"),
                rel: rel.clone(),
                meta: meta.clone(),
                reuse: fresh.contains(rel.as_str()).then(|| under(&target, rel)),
            })
            .collect();
        let staging = model_dir.join(self.staging_name(folder));
        let graveyard = model_dir.join(self.staging_name(&format!("old-{folder}")));
        let staged = self.stage(&staging, jobs).await?;
        blocking(move || publish(&staging, &target, &graveyard)).await?;
        self.forget(&base);
        self.record(staged, summary);
        Ok(())
    }

    /// Downloads one model-level (`model` is `Some`) or root file to a hidden temporary name and
    /// renames it over the old one, unless it is already the current object.
    async fn sync_file(
        &mut self,
        model: Option<&str>,
        name: &str,
        meta: &ObjectMeta,
        local_size: Option<u64>,
        summary: &mut SyncSummary,
    ) -> Result<(), RemoteError> {
        let key = match model {
            Some(model) => format!("{model}/{name}"),
            None => name.to_string(),
        };
        if self.is_fresh(&key, meta, local_size) {
            summary.unchanged += 1;
            return Ok(());
        }
        let dir = match model {
            Some(model) => self.cache_dir.join(model),
            None => self.cache_dir.clone(),
        };
        let temp = dir.join(format!("{}.tmp", self.staging_name(name)));
        let graveyard = dir.join(self.staging_name(&format!("old-{name}")));
        let target = dir.join(name);
        let job = StageJob {
            key: key.clone(),
            rel: String::new(),
            meta: meta.clone(),
            reuse: None,
        };
        let object = self.object_url(&key);
        let downloaded = download(&self.store, job, temp.clone(), object).await;
        let staged = match downloaded {
            Ok(staged) => staged,
            Err(err) => {
                blocking(move || {
                    remove_any(&temp).ok();
                    Ok(())
                })
                .await?;
                return Err(err);
            }
        };
        blocking(move || publish(&temp, &target, &graveyard)).await?;
        self.forget(&key);
        self.record(vec![staged], summary);
        Ok(())
    }

    /// Fills `staging` with `jobs` (reused files linked, the others downloaded with bounded
    /// concurrency, everything fsynced). On error, deletes `staging` and names the object.
    async fn stage(&self, staging: &Path, jobs: Vec<StageJob>) -> Result<Vec<Staged>, RemoteError> {
        let staged = self.fill(staging, jobs).await;
        if staged.is_err() {
            let staging = staging.to_path_buf();
            blocking(move || {
                remove_any(&staging).ok();
                Ok(())
            })
            .await?;
        }
        staged
    }

    async fn fill(&self, staging: &Path, jobs: Vec<StageJob>) -> Result<Vec<Staged>, RemoteError> {
        let (reused, fetch): (Vec<StageJob>, Vec<StageJob>) =
            jobs.into_iter().partition(|job| job.reuse.is_some());
        let root = staging.to_path_buf();
        let mut staged = blocking(move || {
            create_dir_all(&root)?;
            reused
                .into_iter()
                .map(|job| {
                    let destination = under(&root, &job.rel);
                    if let Some(source) = &job.reuse {
                        link_or_copy(source, &destination)?;
                    }
                    Ok(Staged {
                        fingerprint: Fingerprint::of(&job.meta),
                        key: job.key,
                        downloaded: None,
                    })
                })
                .collect::<Result<Vec<_>, RemoteError>>()
        })
        .await?;

        // After the first failure, downloads not yet started are skipped; the ones in flight
        // run to the end so that no writer is left behind in the staging folder.
        let failed = AtomicBool::new(false);
        let mut downloads = stream::iter(fetch)
            .map(|job| {
                let destination = under(staging, &job.rel);
                let object = self.object_url(&job.key);
                let failed = &failed;
                async move {
                    if failed.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    let result = download(&self.store, job, destination, object).await;
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    result.map(Some)
                }
            })
            .buffer_unordered(DOWNLOAD_CONCURRENCY);
        let mut first_error = None;
        while let Some(result) = downloads.next().await {
            match result {
                Ok(Some(done)) => staged.push(done),
                Ok(None) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        drop(downloads);
        if let Some(err) = first_error {
            return Err(err);
        }
        let root = staging.to_path_buf();
        blocking(move || sync_tree(&root)).await?;
        Ok(staged)
    }

    /// Records staged files as mirrored and counts them.
    fn record(&mut self, staged: Vec<Staged>, summary: &mut SyncSummary) {
        for file in staged {
            match file.downloaded {
                Some(bytes) => {
                    summary.downloaded += 1;
                    summary.bytes += bytes;
                }
                None => summary.unchanged += 1,
            }
            self.mirrored_mut().insert(file.key, file.fingerprint);
        }
    }

    async fn save_manifest(&mut self) -> Result<(), RemoteError> {
        let manifest = Manifest {
            url: self.url.clone(),
            files: self.mirrored.clone().unwrap_or_default(),
        };
        let temp = format!("{}.tmp", self.staging_name("manifest"));
        let (path, temp) = (self.cache_dir.join(MANIFEST), self.cache_dir.join(temp));
        blocking(move || {
            let text = serde_json::to_vec_pretty(&manifest)
                .expect("a manifest always serialises. This is a bug.");
            fs::write(&temp, text).map_err(io_error("write", &temp))?;
            fs::rename(&temp, &path).map_err(io_error("rename into place", &path))
        })
        .await
    }
}

/// `<temp>/nereid-repository-<hash of url>`: stable per URL, so a restart reuses the cache.
fn default_cache_dir(url: &str) -> PathBuf {
    // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    std::env::temp_dir().join(format!("nereid-repository-{hash:016x}"))
}

/// What identifies an object's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    size: u64,
    e_tag: Option<String>,
    /// RFC 3339.
    last_modified: String,
}

impl Fingerprint {
    fn of(meta: &ObjectMeta) -> Self {
        Fingerprint {
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            last_modified: meta.last_modified.to_rfc3339(),
        }
    }

    /// Same size and e_tag; where either has no e_tag, same size and last-modified time.
    fn same_object(&self, other: &Self) -> bool {
        self.size == other.size
            && match (&self.e_tag, &other.e_tag) {
                (Some(a), Some(b)) => a == b,
                _ => self.last_modified == other.last_modified,
            }
    }
}

/// The manifest file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The repository the cache mirrors; a cache reused for another URL starts over.
    url: String,
    files: BTreeMap<String, Fingerprint>,
}

/// The fingerprints of the cache at `cache_dir`, empty when there is no usable manifest for `url`.
fn read_manifest(cache_dir: &Path, url: &str) -> BTreeMap<String, Fingerprint> {
    let Ok(text) = fs::read(cache_dir.join(MANIFEST)) else {
        return BTreeMap::new();
    };
    match serde_json::from_slice::<Manifest>(&text) {
        Ok(manifest) if manifest.url == url => manifest.files,
        _ => BTreeMap::new(),
    }
}

/// The remote repository as the cache should mirror it, by cache-relative names.
#[derive(Debug, Default)]
struct Layout {
    /// Files directly under the repository root (not models; mirrored so that the cache is exact).
    root_files: BTreeMap<String, ObjectMeta>,
    models: BTreeMap<String, RemoteModel>,
    /// Keys left out: hidden or unsafe names, directory markers.
    skipped: usize,
}

#[derive(Debug, Default)]
struct RemoteModel {
    /// Model-level files (`config.pbtxt`, labels), by name.
    files: BTreeMap<String, ObjectMeta>,
    /// Folders (versions), each with its files by path relative to the folder.
    folders: BTreeMap<String, BTreeMap<String, ObjectMeta>>,
    /// Folders that hold a publisher's marker ([`PUBLISHING_MARKER`]): not complete yet, so
    /// left as the cache has them (absent, or the version it already serves).
    being_published: BTreeSet<String>,
}

impl RemoteModel {
    /// Every file, by path relative to the model folder.
    fn all_files(&self) -> impl Iterator<Item = (String, &ObjectMeta)> {
        let folders = self.folders.iter().flat_map(|(folder, files)| {
            files
                .iter()
                .map(move |(rel, meta)| (format!("{folder}/{rel}"), meta))
        });
        folders.chain(self.files.iter().map(|(name, meta)| (name.clone(), meta)))
    }
}

impl Layout {
    fn new(prefix: &ObjectPath, listing: Vec<ObjectMeta>) -> Self {
        let mut layout = Layout::default();
        let mut entries = Vec::with_capacity(listing.len());
        for meta in listing {
            let parts: Option<Vec<String>> = meta
                .location
                .prefix_match(prefix)
                .map(|parts| parts.map(|part| part.as_ref().to_string()).collect());
            if let Some([model, folder, marker]) = parts.as_deref() {
                if marker == PUBLISHING_MARKER && is_safe_name(model) && is_safe_name(folder) {
                    let model = layout.models.entry(model.clone()).or_default();
                    model.being_published.insert(folder.clone());
                    continue;
                }
            }
            match parts {
                Some(parts) if !parts.is_empty() && parts.iter().all(|p| is_safe_name(p)) => {
                    entries.push((parts, meta));
                }
                _ => {
                    tracing::debug!(key = %meta.location, "remote repository: key skipped");
                    layout.skipped += 1;
                }
            }
        }
        // A key that is also a folder of other keys is a directory marker (`a/b/` lists as
        // `a/b`), or a file that a folder shadows: the folder wins.
        let folders: BTreeSet<String> = entries
            .iter()
            .flat_map(|(parts, _)| (1..parts.len()).map(|n| parts[..n].join("/")))
            .collect();
        for (parts, meta) in entries {
            if folders.contains(&parts.join("/")) || is_empty_folder_marker(&parts, &meta) {
                tracing::debug!(key = %meta.location, "remote repository: folder marker skipped");
                layout.skipped += 1;
                continue;
            }
            match parts.as_slice() {
                [name] => {
                    layout.root_files.insert(name.clone(), meta);
                }
                [model, name] => {
                    let model = layout.models.entry(model.clone()).or_default();
                    model.files.insert(name.clone(), meta);
                }
                [model, folder, rest @ ..] => {
                    let model = layout.models.entry(model.clone()).or_default();
                    let folder = model.folders.entry(folder.clone()).or_default();
                    folder.insert(rest.join("/"), meta);
                }
                [] => unreachable!("empty keys were skipped above. This is a bug."),
            }
        }
        for model in layout.models.values_mut() {
            let RemoteModel {
                folders,
                being_published,
                ..
            } = model;
            folders.retain(|folder, _| !being_published.contains(folder));
        }
        layout
    }

    /// Whether the cache-relative `key` is in a version folder that is being published.
    fn is_being_published(&self, key: &str) -> bool {
        let mut parts = key.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(model), Some(folder), Some(_)) => self
                .models
                .get(model)
                .is_some_and(|m| m.being_published.contains(folder)),
            _ => false,
        }
    }

    /// Every cache-relative file path.
    fn keys(&self) -> BTreeSet<String> {
        let models = self.models.iter().flat_map(|(model, remote)| {
            remote
                .all_files()
                .map(move |(rel, _)| format!("{model}/{rel}"))
        });
        self.root_files.keys().cloned().chain(models).collect()
    }
}

/// A name that may become a file or folder name in the cache.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']) && name != ".."
}

/// An empty object where an empty folder would be: at the root (a model) or a numeric name in a
/// model (a version). Such a file means nothing to the loader, and consoles create them.
fn is_empty_folder_marker(parts: &[String], meta: &ObjectMeta) -> bool {
    meta.size == 0
        && match parts {
            [_] => true,
            [_, name] => name.bytes().all(|b| b.is_ascii_digit()),
            _ => false,
        }
}

/// What the cache holds, as scanned at the start of a sync (hidden entries left out).
#[derive(Debug, Default)]
struct LocalTree {
    /// Files at the root, by name, with their sizes.
    root_files: BTreeMap<String, u64>,
    models: BTreeMap<String, LocalModel>,
}

#[derive(Debug, Default)]
struct LocalModel {
    /// Non-folder entries of the model folder, with their sizes.
    files: BTreeMap<String, u64>,
    folders: BTreeMap<String, LocalFolder>,
}

impl LocalModel {
    fn file_count(&self) -> usize {
        self.files.len() + self.folders.values().map(|f| f.files.len()).sum::<usize>()
    }
}

#[derive(Debug, Default)]
struct LocalFolder {
    /// Regular files below the folder, by `/`-separated relative path, with their sizes.
    files: BTreeMap<String, u64>,
    /// Holds something other than regular files and folders with UTF-8 names: rebuild it.
    foreign: bool,
}

impl LocalTree {
    /// Creates the cache if needed, deletes leftovers of earlier syncs, and scans it.
    fn prepare(cache_dir: &Path) -> Result<Self, RemoteError> {
        create_dir_all(cache_dir)?;
        let mut tree = LocalTree::default();
        for (name, path, kind) in read_dir(cache_dir)? {
            if name.starts_with(STAGING_PREFIX) {
                remove_any(&path)?;
            } else if name.starts_with('.') {
                continue;
            } else if kind.is_dir() {
                tree.models.insert(name, LocalModel::scan(&path)?);
            } else {
                tree.root_files.insert(name, entry_size(&path)?);
            }
        }
        Ok(tree)
    }
}

impl LocalModel {
    fn scan(dir: &Path) -> Result<Self, RemoteError> {
        let mut model = LocalModel::default();
        for (name, path, kind) in read_dir(dir)? {
            if name.starts_with(STAGING_PREFIX) {
                remove_any(&path)?;
            } else if name.starts_with('.') {
                continue;
            } else if kind.is_dir() {
                let mut folder = LocalFolder::default();
                folder.scan(&path, "")?;
                model.folders.insert(name, folder);
            } else {
                model.files.insert(name, entry_size(&path)?);
            }
        }
        Ok(model)
    }
}

impl LocalFolder {
    fn scan(&mut self, dir: &Path, base: &str) -> Result<(), RemoteError> {
        let entries = fs::read_dir(dir).map_err(io_error("read", dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("read", dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_error("inspect", &path))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                self.foreign = true;
                continue;
            };
            let rel = if base.is_empty() {
                name
            } else {
                format!("{base}/{name}")
            };
            if kind.is_dir() {
                self.scan(&path, &rel)?;
            } else if kind.is_file() {
                self.files.insert(rel, entry_size(&path)?);
            } else {
                self.foreign = true;
            }
        }
        Ok(())
    }
}

/// One file to put into a staging folder.
#[derive(Debug)]
struct StageJob {
    /// Cache-relative path of the published file (manifest key, object URL).
    key: String,
    /// Path inside the staging folder.
    rel: String,
    meta: ObjectMeta,
    /// The current, unchanged local copy to link instead of downloading.
    reuse: Option<PathBuf>,
}

/// One file placed in a staging folder.
#[derive(Debug)]
struct Staged {
    key: String,
    fingerprint: Fingerprint,
    /// Bytes downloaded, or `None` when an unchanged local copy was linked.
    downloaded: Option<u64>,
}

/// Streams `job`'s object into `destination` (creating its folder), fsynced.
async fn download(
    store: &Arc<dyn ObjectStore>,
    job: StageJob,
    destination: PathBuf,
    object: String,
) -> Result<Staged, RemoteError> {
    let failed = |source| RemoteError::Download {
        object: object.clone(),
        source,
    };
    let result = store.get(&job.meta.location).await.map_err(failed)?;
    // The object as fetched, which may be newer than the listing.
    let fingerprint = Fingerprint::of(&result.meta);
    let expected = result.range.end - result.range.start;
    let mut chunks = result.into_stream();
    let (sender, receiver) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_chunks(&destination, receiver));
    let mut stream_error = None;
    while let Some(chunk) = chunks.next().await {
        match chunk {
            // A closed channel means the writer failed; its error is reported below.
            Ok(chunk) => {
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(source) => {
                stream_error = Some(source);
                break;
            }
        }
    }
    drop(sender);
    let written = join(writer.await);
    if let Some(source) = stream_error {
        return Err(failed(source));
    }
    let written = written?;
    if written != expected {
        return Err(RemoteError::Incomplete {
            object,
            expected,
            actual: written,
        });
    }
    Ok(Staged {
        key: job.key,
        fingerprint,
        downloaded: Some(written),
    })
}

/// The writer side of [`download`]: blocking file I/O.
fn write_chunks(path: &Path, mut chunks: mpsc::Receiver<Bytes>) -> Result<u64, RemoteError> {
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    let mut file = fs::File::create(path).map_err(io_error("create", path))?;
    let mut written = 0;
    while let Some(chunk) = chunks.blocking_recv() {
        file.write_all(&chunk).map_err(io_error("write", path))?;
        written += chunk.len() as u64;
    }
    file.sync_all().map_err(io_error("fsync", path))?;
    Ok(written)
}

/// Runs blocking file-system work off the async workers.
async fn blocking<T, F>(work: F) -> Result<T, RemoteError>
where
    F: FnOnce() -> Result<T, RemoteError> + Send + 'static,
    T: Send + 'static,
{
    join(tokio::task::spawn_blocking(work).await)
}

fn join<T>(
    joined: Result<Result<T, RemoteError>, tokio::task::JoinError>,
) -> Result<T, RemoteError> {
    match joined {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(RemoteError::Cancelled),
    }
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `base` joined with a `/`-separated relative path.
fn under(base: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .filter(|part| !part.is_empty())
        .fold(base.to_path_buf(), |path, part| path.join(part))
}

/// The entries of `dir` with UTF-8 names (others are left alone, as the loader ignores them).
fn read_dir(dir: &Path) -> Result<Vec<(String, PathBuf, fs::FileType)>, RemoteError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("read", dir))? {
        let entry = entry.map_err(io_error("read", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error("inspect", &path))?;
        if let Some(name) = entry.file_name().to_str() {
            entries.push((name.to_owned(), path, kind));
        }
    }
    Ok(entries)
}

fn entry_size(path: &Path) -> Result<u64, RemoteError> {
    Ok(fs::symlink_metadata(path)
        .map_err(io_error("inspect", path))?
        .len())
}

fn create_dir_all(path: &Path) -> Result<(), RemoteError> {
    fs::create_dir_all(path).map_err(io_error("create", path))
}

fn remove_file(path: &Path) -> Result<(), RemoteError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_error("remove", path)(err)),
        _ => Ok(()),
    }
}

/// Removes a file, link or folder tree (never following links).
fn remove_any(path: &Path) -> Result<(), RemoteError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(io_error("remove", path)),
        Ok(_) => remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("inspect", path)(err)),
    }
}

/// Hard-links `source` to `destination` (they share the cache's file system), copying where
/// links are not supported. Published files are never written in place, so sharing is safe.
fn link_or_copy(source: &Path, destination: &Path) -> Result<(), RemoteError> {
    if let Some(parent) = destination.parent() {
        create_dir_all(parent)?;
    }
    if fs::hard_link(source, destination).is_ok() {
        return Ok(());
    }
    fs::copy(source, destination)
        .map(drop)
        .map_err(io_error("copy", source))
}

/// Moves the complete `staged` file or folder to `target`. A file replaces a file in one rename;
/// anything else there is first moved to the hidden `graveyard`, then deleted.
fn publish(staged: &Path, target: &Path, graveyard: &Path) -> Result<(), RemoteError> {
    let staged_is_dir = fs::symlink_metadata(staged)
        .map_err(io_error("inspect", staged))?
        .is_dir();
    let replaced = match fs::symlink_metadata(target) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(io_error("inspect", target)(err)),
        Ok(meta) if !staged_is_dir && !meta.is_dir() => false,
        Ok(_) => {
            fs::rename(target, graveyard).map_err(io_error("move aside", target))?;
            true
        }
    };
    fs::rename(staged, target).map_err(io_error("rename into place", target))?;
    if let Some(parent) = target.parent() {
        sync_dir(parent);
    }
    if replaced {
        remove_any(graveyard)?;
    }
    Ok(())
}

/// Renames `target` to the hidden `graveyard` (so it vanishes at once), then deletes it.
fn retire(target: &Path, graveyard: &Path) -> Result<(), RemoteError> {
    match fs::rename(target, graveyard) {
        Ok(()) => remove_any(graveyard),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("move aside", target)(err)),
    }
}

/// Fsyncs every folder of a staged tree, so that renaming it publishes durable entries.
fn sync_tree(root: &Path) -> Result<(), RemoteError> {
    for (_, path, kind) in read_dir(root)? {
        if kind.is_dir() {
            sync_tree(&path)?;
        }
    }
    sync_dir(root);
    Ok(())
}

/// Best effort: some file systems refuse to fsync a folder, and the data is already synced.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = fs::File::open(dir) {
        dir.sync_all().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    /// `(key under the prefix, contents)` of a small repository.
    const REPO: &[(&str, &str)] = &[
        ("alpha/config.pbtxt", "name: \"alpha\""),
        ("alpha/labels.txt", "a\nb\n"),
        ("alpha/1/model.safetensors", "version one weights"),
        ("alpha/2/model.safetensors", "version two weights"),
        ("alpha/2/sub/extra.json", "{}"),
        ("beta/config.pbtxt", "name: \"beta\""),
        ("beta/3/README", "beta three"),
    ];

    async fn put(store: &InMemory, key: &str, contents: &str) {
        store
            .put(
                &ObjectPath::from(key),
                PutPayload::from(contents.to_string()),
            )
            .await
            .expect("in-memory put");
    }

    async fn populated(prefix: &str) -> Arc<InMemory> {
        let store = Arc::new(InMemory::new());
        for (key, contents) in REPO {
            put(&store, &format!("{prefix}/{key}"), contents).await;
        }
        store
    }

    fn repository(store: Arc<InMemory>, prefix: &str, cache: &Path) -> RemoteRepository {
        RemoteRepository::new(
            store,
            prefix,
            format!("memory:///{prefix}"),
            cache.join("cache"),
        )
    }

    /// Every entry below `root` (hidden ones too), `/`-separated, with file contents.
    fn tree(root: &Path) -> BTreeMap<String, Option<String>> {
        fn walk(dir: &Path, base: &str, out: &mut BTreeMap<String, Option<String>>) {
            for entry in fs::read_dir(dir).expect("read_dir") {
                let entry = entry.expect("entry");
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = if base.is_empty() {
                    name
                } else {
                    format!("{base}/{name}")
                };
                if entry.file_type().expect("file type").is_dir() {
                    out.insert(format!("{rel}/"), None);
                    walk(&entry.path(), &rel, out);
                } else {
                    let contents = fs::read_to_string(entry.path()).expect("read file");
                    out.insert(rel, Some(contents));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, "", &mut out);
        out
    }

    /// The files of `tree`, without the manifest.
    fn files(root: &Path) -> BTreeMap<String, String> {
        tree(root)
            .into_iter()
            .filter_map(|(rel, contents)| Some((rel, contents?)))
            .filter(|(rel, _)| rel != MANIFEST)
            .collect()
    }

    fn expected(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn first_sync_mirrors_the_exact_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        // Left out: a hidden key, a directory marker, an empty version marker, another prefix.
        put(&store, "models/.hidden/config.pbtxt", "x").await;
        put(&store, "models/alpha/.staging/x", "x").await;
        put(&store, "models/beta/3", "").await;
        put(&store, "models/beta/9", "").await;
        put(&store, "modelsX/gamma/config.pbtxt", "x").await;
        let mut repo = repository(store, "models", dir.path());

        let summary = repo.sync().await.expect("sync");

        assert_eq!(files(repo.cache_dir()), expected(REPO));
        assert_eq!(summary.downloaded, REPO.len());
        let bytes: usize = REPO.iter().map(|(_, c)| c.len()).sum();
        assert_eq!(summary.bytes, bytes as u64);
        assert_eq!((summary.removed, summary.unchanged), (0, 0));
        assert_eq!(summary.skipped, 4);
        // Nothing staged is left behind.
        assert!(tree(repo.cache_dir())
            .keys()
            .all(|rel| !rel.contains(STAGING_PREFIX)));

        let again = repo.sync().await.expect("second sync");
        assert_eq!(again.downloaded, 0);
        assert_eq!(again.unchanged, REPO.len());
        assert!(!again.changed());
    }

    #[tokio::test]
    async fn changed_object_is_the_only_download() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        let mut repo = repository(store.clone(), "models", dir.path());
        repo.sync().await.expect("sync");

        // Same size, new contents: the e_tag tells.
        put(
            &store,
            "models/alpha/2/model.safetensors",
            "version TWO weights",
        )
        .await;
        let summary = repo.sync().await.expect("resync");

        assert_eq!(summary.downloaded, 1);
        assert_eq!(summary.bytes, "version TWO weights".len() as u64);
        assert_eq!(summary.removed, 0);
        assert_eq!(summary.unchanged, REPO.len() - 1);
        let mut want = expected(REPO);
        want.insert(
            "alpha/2/model.safetensors".into(),
            "version TWO weights".into(),
        );
        assert_eq!(files(repo.cache_dir()), want);

        // A config change is one download too.
        put(&store, "models/beta/config.pbtxt", "name: \"beta\" # v2").await;
        let summary = repo.sync().await.expect("resync");
        assert_eq!((summary.downloaded, summary.removed), (1, 0));
    }

    #[tokio::test]
    async fn versions_being_published_are_left_as_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        let mut repo = repository(store.clone(), "models", dir.path());
        repo.sync().await.expect("sync");
        let marker = |folder: &str| format!("models/{folder}/{PUBLISHING_MARKER}");

        // A new version half uploaded, a served version that a publisher is checking (its
        // reservation found files there), and a new model whose first version is under way.
        put(&store, "models/alpha/3/model.safetensors", "three, half").await;
        put(&store, &marker("alpha/3"), "{}").await;
        put(&store, &marker("alpha/2"), "{}").await;
        store
            .delete(&ObjectPath::from("models/alpha/2/sub/extra.json"))
            .await
            .expect("delete");
        put(&store, "models/gamma/1/model.safetensors", "gamma").await;
        put(&store, &marker("gamma/1"), "{}").await;
        let summary = repo.sync().await.expect("sync during publish");
        assert_eq!(files(repo.cache_dir()), expected(REPO));
        assert_eq!((summary.downloaded, summary.removed), (0, 0));
        assert_eq!(summary.being_published, 3);

        // The markers go: each folder is mirrored as it is now, the served one unchanged in
        // what it still has (nothing downloaded again).
        for folder in ["alpha/3", "alpha/2", "gamma/1"] {
            store
                .delete(&ObjectPath::from(marker(folder)))
                .await
                .expect("delete marker");
        }
        let summary = repo.sync().await.expect("sync after publish");
        let mut want = expected(REPO);
        want.remove("alpha/2/sub/extra.json");
        want.insert("alpha/3/model.safetensors".into(), "three, half".into());
        want.insert("gamma/1/model.safetensors".into(), "gamma".into());
        assert_eq!(files(repo.cache_dir()), want);
        assert_eq!((summary.downloaded, summary.removed), (2, 1));
        assert_eq!(summary.being_published, 0);
    }

    #[tokio::test]
    async fn restart_over_the_same_cache_downloads_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        repository(store.clone(), "models", dir.path())
            .sync()
            .await
            .expect("sync");

        let mut restarted = repository(store, "models", dir.path());
        let summary = restarted.sync().await.expect("sync after restart");
        assert_eq!(summary.downloaded, 0);
        assert_eq!(summary.unchanged, REPO.len());
    }

    #[tokio::test]
    async fn deleted_objects_are_removed_locally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        let mut repo = repository(store.clone(), "models", dir.path());
        repo.sync().await.expect("sync");

        for key in ["alpha/2/model.safetensors", "alpha/2/sub/extra.json"] {
            store
                .delete(&ObjectPath::from(format!("models/{key}")))
                .await
                .expect("delete");
        }
        let summary = repo.sync().await.expect("resync");
        assert_eq!((summary.downloaded, summary.removed), (0, 2));
        assert!(!repo.cache_dir().join("alpha/2").exists());
        assert!(repo.cache_dir().join("alpha/1/model.safetensors").exists());

        // A whole model, and a model-level file.
        for key in ["beta/config.pbtxt", "beta/3/README", "alpha/labels.txt"] {
            store
                .delete(&ObjectPath::from(format!("models/{key}")))
                .await
                .expect("delete");
        }
        let summary = repo.sync().await.expect("resync");
        assert_eq!(summary.removed, 3);
        assert_eq!(
            files(repo.cache_dir()),
            expected(&[
                ("alpha/config.pbtxt", "name: \"alpha\""),
                ("alpha/1/model.safetensors", "version one weights"),
            ])
        );
        assert!(tree(repo.cache_dir())
            .keys()
            .all(|rel| !rel.contains(STAGING_PREFIX) && !rel.starts_with("beta")));
    }

    #[tokio::test]
    async fn local_files_without_objects_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        let mut repo = repository(store, "models", dir.path());
        repo.sync().await.expect("sync");
        fs::write(repo.cache_dir().join("alpha/1/stray.bin"), "stray").expect("write");
        fs::write(repo.cache_dir().join("alpha/stray.txt"), "stray").expect("write");
        fs::create_dir_all(repo.cache_dir().join("gamma/1")).expect("mkdir");
        fs::write(repo.cache_dir().join("gamma/1/x"), "stray").expect("write");

        let summary = repo.sync().await.expect("resync");
        assert_eq!((summary.downloaded, summary.removed), (0, 3));
        assert_eq!(files(repo.cache_dir()), expected(REPO));
    }

    /// The listing of `store` under `models`, plus `missing`: a key listed (copying the metadata of
    /// `like`) but not fetchable, as when an object is deleted between listing and download.
    async fn listing_with_missing(store: &InMemory, like: &str, missing: &str) -> Vec<ObjectMeta> {
        let mut listing: Vec<ObjectMeta> = store
            .list(Some(&ObjectPath::from("models")))
            .try_collect()
            .await
            .expect("list");
        let mut meta = listing
            .iter()
            .find(|meta| meta.location.as_ref() == like)
            .cloned()
            .expect("listed");
        meta.location = ObjectPath::from(missing);
        listing.push(meta);
        listing
    }

    #[tokio::test]
    async fn failed_download_leaves_no_partial_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("models").await;
        let mut repo = repository(store.clone(), "models", dir.path());
        repo.sync().await.expect("sync");
        let no_staging_left = |repo: &RemoteRepository| {
            tree(repo.cache_dir())
                .keys()
                .all(|rel| !rel.contains(STAGING_PREFIX))
        };

        // Version 3 of alpha is half uploaded: two objects arrive, a third cannot be fetched.
        put(&store, "models/alpha/3/a.bin", "first file").await;
        put(&store, "models/alpha/3/b.bin", "second file").await;
        let listing =
            listing_with_missing(&store, "models/alpha/3/b.bin", "models/alpha/3/missing.bin")
                .await;
        let err = repo
            .sync_listing(listing)
            .await
            .expect_err("a missing object fails the sync");
        let message = err.to_string();
        assert!(
            message.contains("memory:///models/alpha/3/missing.bin"),
            "{message}"
        );
        assert!(!repo.cache_dir().join("alpha/3").exists());
        assert!(no_staging_left(&repo));
        assert_eq!(files(repo.cache_dir()), expected(REPO));

        // A new model is staged whole: a missing object leaves no model folder at all.
        let listing =
            listing_with_missing(&store, "models/beta/3/README", "models/gamma/1/model.onnx").await;
        let listing = listing
            .into_iter()
            .filter(|meta| !meta.location.as_ref().starts_with("models/alpha/3"))
            .chain([ObjectMeta {
                location: ObjectPath::from("models/gamma/config.pbtxt"),
                ..store
                    .head(&ObjectPath::from("models/beta/config.pbtxt"))
                    .await
                    .expect("head")
            }])
            .collect();
        let err = repo
            .sync_listing(listing)
            .await
            .expect_err("a missing object fails the sync");
        assert!(
            err.to_string()
                .contains("memory:///models/gamma/1/model.onnx"),
            "{err}"
        );
        assert!(!repo.cache_dir().join("gamma").exists());
        assert!(no_staging_left(&repo));

        // Once the upload completes, the version appears whole.
        let summary = repo.sync().await.expect("sync after the upload");
        assert_eq!(summary.downloaded, 2);
        assert_eq!(
            fs::read_to_string(repo.cache_dir().join("alpha/3/b.bin")).expect("read"),
            "second file"
        );
    }

    #[tokio::test]
    async fn replacing_a_version_keeps_only_the_new_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = populated("").await;
        let mut repo = repository(store.clone(), "", dir.path());
        repo.sync().await.expect("sync");
        assert_eq!(files(repo.cache_dir()), expected(REPO));

        store
            .delete(&ObjectPath::from("alpha/2/sub/extra.json"))
            .await
            .expect("delete");
        put(&store, "alpha/2/new.bin", "new").await;
        let summary = repo.sync().await.expect("resync");
        assert_eq!((summary.downloaded, summary.removed), (1, 1));
        assert_eq!(
            fs::read_to_string(repo.cache_dir().join("alpha/2/model.safetensors")).expect("read"),
            "version two weights"
        );
        assert!(!repo.cache_dir().join("alpha/2/sub").exists());
    }

    #[test]
    fn layout_ignores_markers_hidden_and_unsafe_keys() {
        let meta = |key: &str, size: u64| ObjectMeta {
            location: ObjectPath::from(key),
            last_modified: Default::default(),
            size,
            e_tag: None,
            version: None,
        };
        let listing = vec![
            meta("p", 0),                  // the prefix's own marker
            meta("p/m", 0),                // marker of the model folder
            meta("p/m/config.pbtxt", 3),   // kept
            meta("p/m/1", 0),              // marker of a version folder
            meta("p/m/1/w", 5),            // kept
            meta("p/m/7", 0),              // empty version folder marker
            meta("p/m/.cache/x", 1),       // hidden
            meta("p/m/1/.partial", 1),     // hidden
            meta("p/README", 2),           // root file, kept
            meta("p/empty", 0),            // empty model marker
            meta("q/m/config.pbtxt", 1),   // outside the prefix
            meta("p/m/1/deep/er/file", 1), // kept
        ];
        let layout = Layout::new(&ObjectPath::from("p"), listing);
        assert_eq!(layout.skipped, 8);
        assert_eq!(
            layout.keys().into_iter().collect::<Vec<_>>(),
            ["README", "m/1/deep/er/file", "m/1/w", "m/config.pbtxt"]
        );
    }

    #[test]
    fn fingerprints_compare_e_tag_or_last_modified() {
        let a = Fingerprint {
            size: 1,
            e_tag: Some("x".into()),
            last_modified: "t1".into(),
        };
        let same_tag_new_time = Fingerprint {
            last_modified: "t2".into(),
            ..a.clone()
        };
        assert!(a.same_object(&same_tag_new_time));
        let new_tag = Fingerprint {
            e_tag: Some("y".into()),
            ..a.clone()
        };
        assert!(!a.same_object(&new_tag));
        let untagged = Fingerprint {
            e_tag: None,
            ..a.clone()
        };
        assert!(a.same_object(&untagged));
        assert!(!untagged.same_object(&Fingerprint {
            e_tag: None,
            ..same_tag_new_time
        }));
        assert!(!a.same_object(&Fingerprint {
            size: 2,
            ..a.clone()
        }));
    }

    fn remote(value: &str) -> RemoteRepository {
        match RepositoryLocation::parse(value) {
            Ok(RepositoryLocation::Remote(repo)) => repo,
            other => panic!("{value}: expected a remote repository, got {other:?}"),
        }
    }

    #[test]
    fn parse_local_paths() {
        for value in [
            "/srv/models",
            "models",
            "./model-repo",
            "C:\\models",
            "a:b/c",
        ] {
            match RepositoryLocation::parse(value) {
                Ok(RepositoryLocation::Local(path)) => assert_eq!(path, PathBuf::from(value)),
                other => panic!("{value}: expected a local path, got {other:?}"),
            }
        }
    }

    #[test]
    fn parse_cloud_urls_without_network() {
        let s3 = remote("s3://bucket/some/prefix/");
        assert_eq!(s3.prefix.as_ref(), "some/prefix");
        assert_eq!(s3.url(), "s3://bucket/some/prefix/");
        assert!(s3.cache_dir().starts_with(std::env::temp_dir()));
        assert_ne!(s3.cache_dir(), remote("s3://bucket/other").cache_dir());
        assert_eq!(
            s3.cache_dir(),
            remote("s3://bucket/some/prefix/").cache_dir()
        );
        assert!(remote("S3://bucket").prefix.is_root());
        assert_eq!(remote("gs://bucket/models").prefix.as_ref(), "models");
        assert_eq!(
            remote("az://models@account.blob.core.windows.net/repo/v1")
                .prefix
                .as_ref(),
            "repo/v1"
        );
        assert_eq!(
            remote("s3://bucket/with%20space").prefix.as_ref(),
            "with space"
        );
        let cache = remote("gs://bucket/x").with_cache_dir("/var/cache/nereid");
        assert_eq!(cache.cache_dir(), Path::new("/var/cache/nereid"));
    }

    #[test]
    fn parse_azure_needs_an_account() {
        // The account comes from the URL or AZURE_STORAGE_ACCOUNT_NAME.
        if std::env::var_os("AZURE_STORAGE_ACCOUNT_NAME").is_some() {
            return;
        }
        let err = RepositoryLocation::parse("azure://container/prefix").expect_err("no account");
        assert!(
            err.to_string().contains("azure://container/prefix"),
            "{err}"
        );
    }

    #[test]
    fn parse_rejects_bad_urls() {
        let err = |value: &str| match RepositoryLocation::parse(value) {
            Err(err) => err.to_string(),
            Ok(location) => panic!("{value}: expected an error, got {location:?}"),
        };
        assert!(err("hdfs://cluster/models").contains("unsupported"));
        assert!(err("s3:///prefix").contains("bucket"));
        assert!(err("s3://bucket/p?region=x").contains("query"));
        assert!(err("file://relative/path").contains("absolute"));
        assert!(err("file:///no/such/nereid/repository").contains("not a directory"));
        assert!(err("s3://bucket/a//b").contains("s3://bucket/a//b"));
    }

    #[tokio::test]
    async fn large_object_streams_in_chunks() {
        let source = tempfile::tempdir().expect("tempdir");
        let weights: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        fs::create_dir_all(source.path().join("big/1")).expect("mkdir");
        fs::write(source.path().join("big/config.pbtxt"), "name: \"big\"").expect("write");
        fs::write(source.path().join("big/1/model.safetensors"), &weights).expect("write");
        let cache = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", source.path().display());
        let mut repo = remote(&url).with_cache_dir(cache.path().join("mirror"));

        let summary = repo.sync().await.expect("sync");
        assert_eq!(summary.downloaded, 2);
        assert_eq!(summary.bytes, weights.len() as u64 + 11);
        let copied = fs::read(repo.cache_dir().join("big/1/model.safetensors")).expect("read");
        assert!(copied == weights, "the mirrored weights differ");
    }

    #[tokio::test]
    async fn file_url_round_trip() {
        let source = tempfile::tempdir().expect("tempdir");
        for (key, contents) in REPO {
            let path = under(&source.path().join("repo dir"), key);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, contents).expect("write");
        }
        let cache = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "file://{}",
            source
                .path()
                .join("repo dir")
                .display()
                .to_string()
                .replace(' ', "%20")
        );
        let mut repo = remote(&url).with_cache_dir(cache.path().join("mirror"));
        assert_eq!(repo.sync().await.expect("sync").downloaded, REPO.len());
        assert_eq!(files(repo.cache_dir()), expected(REPO));

        fs::write(source.path().join("repo dir/beta/3/README"), "beta THREE!").expect("write");
        fs::remove_file(source.path().join("repo dir/alpha/labels.txt")).expect("remove");
        let summary = repo.sync().await.expect("resync");
        assert_eq!((summary.downloaded, summary.removed), (1, 1));
        assert_eq!(
            fs::read_to_string(repo.cache_dir().join("beta/3/README")).expect("read"),
            "beta THREE!"
        );
        assert!(!repo.cache_dir().join("alpha/labels.txt").exists());
    }
}
