//! The three operations the feature store needs from wherever it keeps its files: read a file,
//! create a file that must not exist yet (put-if-absent), and list a folder. Over a local
//! directory they are `std::fs` calls (files written whole and fsynced, then hard-linked into
//! place, so an existing name is never replaced); over an object store (S3, GCS, Azure Blob,
//! `file://`, in-memory) they are `get`, `put` with `PutMode::Create` and `list_with_delimiter`.
//! Because the store's layout only ever creates files and never rewrites one, these three are
//! enough for any number of concurrent writers on either kind of storage.
//!
//! Keys are `/`-separated paths relative to the store's root. The store is synchronous; object
//! store calls run on a small current-thread Tokio runtime owned by the [`Storage`] (so callers
//! in async code must call it from a blocking thread, as they must for the rest of the crate).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::location::{Location, ObjectLocation};
use crate::util::create_new_atomic;

/// A local directory or an object-store prefix.
pub struct Storage {
    kind: Kind,
}

enum Kind {
    Local(PathBuf),
    Object {
        location: ObjectLocation,
        runtime: tokio::runtime::Runtime,
    },
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Local(root) => f.debug_tuple("Local").field(root).finish(),
            Kind::Object { location, .. } => f.debug_tuple("Object").field(location).finish(),
        }
    }
}

fn object_err(e: object_store::Error) -> io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl Storage {
    /// Storage at `location`; an object store gets its runtime here (no request is made).
    pub fn new(location: Location) -> io::Result<Storage> {
        let kind = match location {
            Location::Local(root) => Kind::Local(root),
            Location::Object(location) => Kind::Object {
                location,
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            },
        };
        Ok(Storage { kind })
    }

    /// The local root directory, for a local store.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Local(root) => Some(root),
            Kind::Object { .. } => None,
        }
    }

    /// The root as the user named it.
    pub fn describe_root(&self) -> String {
        match &self.kind {
            Kind::Local(root) => root.display().to_string(),
            Kind::Object { location, .. } => location.url.clone(),
        }
    }

    /// Where `key` is, for messages (a path, or `url/key`).
    pub fn describe(&self, key: &str) -> PathBuf {
        match &self.kind {
            Kind::Local(root) => root.join(key),
            Kind::Object { location, .. } => PathBuf::from(location.describe(key)),
        }
    }

    /// The file's contents, or `None` when there is no such file.
    pub fn read(&self, key: &str) -> io::Result<Option<Bytes>> {
        match &self.kind {
            Kind::Local(root) => match std::fs::read(root.join(key)) {
                Ok(data) => Ok(Some(Bytes::from(data))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Kind::Object { location, runtime } => {
                let path = location.child(key);
                runtime.block_on(async {
                    match location.store.get(&path).await {
                        Ok(result) => result.bytes().await.map(Some).map_err(object_err),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(object_err(e)),
                    }
                })
            }
        }
    }

    /// Creates the file with `contents` unless it exists: `true` if this call created it,
    /// `false` if it was already there (left as it was). The file appears whole or not at all.
    pub fn create(&self, key: &str, contents: &[u8]) -> io::Result<bool> {
        match &self.kind {
            Kind::Local(root) => {
                let path = root.join(key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                create_new_atomic(&path, contents)
            }
            Kind::Object { location, runtime } => {
                let path = location.child(key);
                let options = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                let payload = PutPayload::from(Bytes::copy_from_slice(contents));
                runtime.block_on(async {
                    match location.store.put_opts(&path, payload, options).await {
                        Ok(_) => Ok(true),
                        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                        Err(e) => Err(object_err(e)),
                    }
                })
            }
        }
    }

    /// Names directly below folder `dir` (files and folders alike), unsorted; a missing folder
    /// is empty.
    pub fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        match &self.kind {
            Kind::Local(root) => match std::fs::read_dir(root.join(dir)) {
                Ok(read) => Ok(read
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e),
            },
            Kind::Object { location, runtime } => {
                let path = location.child(dir);
                let listed = runtime
                    .block_on(location.store.list_with_delimiter(Some(&path)))
                    .map_err(object_err)?;
                let name = |p: &object_store::path::Path| p.filename().map(str::to_string);
                Ok(listed
                    .common_prefixes
                    .iter()
                    .filter_map(name)
                    .chain(listed.objects.iter().filter_map(|o| name(&o.location)))
                    .collect())
            }
        }
    }

    /// Makes the root's top-level folders exist where folders are real (a local directory).
    pub fn create_dirs(&self, dirs: &[&str]) -> io::Result<()> {
        if let Kind::Local(root) = &self.kind {
            for dir in dirs {
                std::fs::create_dir_all(root.join(dir))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;

    use super::*;

    fn storages(dir: &Path) -> Vec<Storage> {
        let memory = ObjectLocation {
            store: Arc::new(InMemory::new()),
            prefix: ObjectPath::from("some/prefix"),
            url: "memory://test/some/prefix".into(),
            local_dir: None,
        };
        let file_url = format!("file://{}", dir.join("object").display());
        vec![
            Storage::new(Location::Local(dir.join("local"))).expect("local"),
            Storage::new(Location::Object(memory)).expect("memory"),
            Storage::new(Location::parse(&file_url).expect("file url")).expect("file"),
        ]
    }

    #[test]
    fn create_read_list_behave_alike_everywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        for s in storages(dir.path()) {
            assert_eq!(s.read("a/b.json").expect("read"), None, "{s:?}");
            assert!(s.list("a").expect("list").is_empty(), "{s:?}");
            assert!(s.create("a/b.json", b"one").expect("create"), "{s:?}");
            // Put-if-absent: the second writer loses and the first content stays.
            assert!(!s.create("a/b.json", b"two").expect("create"), "{s:?}");
            assert_eq!(
                s.read("a/b.json").expect("read").as_deref(),
                Some(&b"one"[..]),
                "{s:?}"
            );
            assert!(s.create("a/c/d.json", b"x").expect("create"), "{s:?}");
            let mut names = s.list("a").expect("list");
            names.sort();
            assert_eq!(names, ["b.json", "c"], "{s:?}");
            assert!(s
                .describe("a/b.json")
                .to_string_lossy()
                .ends_with("a/b.json"));
        }
    }

    #[test]
    fn concurrent_creators_of_one_key_have_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        for s in storages(dir.path()) {
            let s = Arc::new(s);
            let winners: usize = (0..8)
                .map(|i| {
                    let s = Arc::clone(&s);
                    std::thread::spawn(move || {
                        s.create("k.json", format!("{i}").as_bytes())
                            .expect("create")
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| usize::from(h.join().expect("thread")))
                .sum();
            assert_eq!(winners, 1, "{s:?}");
        }
    }
}
