//! The system shared-memory extension: clients register POSIX shared-memory objects
//! (`shm_open` keys) as named regions, then send inputs and receive outputs through them
//! instead of the request and response bodies.
//!
//! A region is the object `/dev/shm/<key>` (where Linux keeps POSIX shared memory) opened
//! read-write, with the registered window `offset .. offset + byte_size` of it. Tensors are
//! read and written with positioned file I/O rather than a memory map: the kernel's page cache
//! is the very memory the client has mapped, so the client sees each write at once, and no
//! unsafe code is needed to share memory that another process changes at will. A request holds
//! its regions (`Arc`), so unregistering a region in use takes effect when those requests end,
//! as in Triton.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use nereid_protocol::{Error, SharedMemoryRef};

/// Prefix of keys Triton keeps for its Python backend; refused, as Triton refuses it.
const RESERVED_KEY_PREFIX: &str = "triton_python_backend_shm_region_";

/// Where the kernel exposes POSIX shared-memory objects.
const SHM_DIR: &str = "/dev/shm";

/// A registered region, as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

struct Region {
    status: RegionStatus,
    file: File,
}

/// The registered system shared-memory regions of one server.
#[derive(Default)]
pub struct SharedMemory {
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
}

impl SharedMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Region>>> {
        // Only the map lives here; a panic elsewhere leaves it usable.
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `offset .. offset + byte_size` of the shared-memory object `key` as `name`.
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::invalid_arg(
                "'region name' is necessary to register system shared memory region",
            ));
        }
        let object = key.trim_start_matches('/');
        if object.is_empty() || object.contains('/') {
            return Err(Error::invalid_arg(format!(
                "cannot register shared memory region '{name}' - invalid shm key '{key}'"
            )));
        }
        if object.starts_with(RESERVED_KEY_PREFIX) {
            return Err(Error::invalid_arg(format!(
                "cannot register shared memory region '{name}' with key '{key}' as the key contains the reserved prefix '{RESERVED_KEY_PREFIX}'"
            )));
        }
        let mut regions = self.lock();
        if regions.contains_key(name) {
            return Err(Error::new(
                nereid_protocol::Code::AlreadyExists,
                format!("shared memory region '{name}' already in manager"),
            ));
        }
        let path: PathBuf = [SHM_DIR, object].iter().collect();
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|_| {
                Error::internal(format!("Unable to open shared memory region: '{key}'"))
            })?;
        let size = file
            .metadata()
            .map_err(|_| Error::internal(format!("Invalid shared memory region: '{key}'")))?
            .len();
        if offset.checked_add(byte_size).is_none_or(|end| end > size) {
            return Err(Error::invalid_arg(format!(
                "failed to register shared memory region '{name}': invalid args"
            )));
        }
        regions.insert(
            name.to_string(),
            Arc::new(Region {
                status: RegionStatus {
                    name: name.to_string(),
                    key: key.to_string(),
                    offset,
                    byte_size,
                },
                file,
            }),
        );
        Ok(())
    }

    /// Unregisters `name`, or every region when `None`; an unknown name is not an error.
    pub fn unregister(&self, name: Option<&str>) {
        let mut regions = self.lock();
        match name {
            Some(name) => {
                regions.remove(name);
            }
            None => regions.clear(),
        }
    }

    /// The regions (one, or all when `None`).
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, Error> {
        let regions = self.lock();
        match name {
            None => Ok(regions.values().map(|r| r.status.clone()).collect()),
            Some(name) => regions
                .get(name)
                .map(|r| vec![r.status.clone()])
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "Unable to find system shared memory region: '{name}'"
                    ))
                }),
        }
    }

    /// The CUDA shared-memory status of `name` (all when `None`). None can be registered (this
    /// server does not open CUDA IPC handles), so the list is empty and a named region unknown.
    pub fn cuda_status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, Error> {
        match name {
            None => Ok(Vec::new()),
            Some(name) if self.lock().contains_key(name) => Err(Error::not_found(format!(
                "The region named '{name}' is registered as system shared memory, not CUDA shared memory"
            ))),
            Some(name) => Err(Error::not_found(format!(
                "Unable to find cuda shared memory region: '{name}'"
            ))),
        }
    }

    /// Registering CUDA shared memory: refused, saying why.
    pub fn cuda_register(&self, name: &str) -> Result<(), Error> {
        Err(Error::unsupported(format!(
            "failed to register CUDA shared memory region '{name}': CUDA shared memory is not supported by this server"
        )))
    }

    /// The region `at` names, with Triton's bounds checks on the window it asks for.
    fn window(&self, at: &SharedMemoryRef) -> Result<(Arc<Region>, u64), Error> {
        let region = self.lock().get(&at.region).cloned().ok_or_else(|| {
            Error::not_found(format!(
                "Unable to find shared memory region: '{}'",
                at.region
            ))
        })?;
        let size = region.status.byte_size;
        if at.offset >= size {
            return Err(Error::invalid_arg(format!(
                "Invalid offset for shared memory region: '{}'",
                at.region
            )));
        }
        if at
            .offset
            .checked_add(at.byte_size)
            .is_none_or(|end| end > size)
        {
            return Err(Error::invalid_arg(format!(
                "Invalid offset + byte size for shared memory region: '{}'",
                at.region
            )));
        }
        Ok((Arc::clone(&region), region.status.offset + at.offset))
    }

    /// Copies an input's bytes out of its region.
    pub fn read(&self, at: &SharedMemoryRef) -> Result<Bytes, Error> {
        let (region, position) = self.window(at)?;
        let length = usize::try_from(at.byte_size)
            .map_err(|_| Error::invalid_arg("shared memory byte size exceeds this machine's"))?;
        let mut data = vec![0u8; length];
        region
            .file
            .read_exact_at(&mut data, position)
            .map_err(|e| {
                Error::internal(format!(
                    "failed to read shared memory region '{}': {e}",
                    at.region
                ))
            })?;
        Ok(Bytes::from(data))
    }

    /// Writes an output's bytes into its region, which must be large enough to hold them.
    pub fn write(&self, at: &SharedMemoryRef, output: &str, data: &[u8]) -> Result<(), Error> {
        if data.len() as u64 > at.byte_size {
            return Err(Error::internal(format!(
                "shared memory size specified with the request for output '{output}' ({} bytes) should be at least {} bytes to hold the results",
                at.byte_size,
                data.len()
            )));
        }
        let (region, position) = self.window(at)?;
        region.file.write_all_at(data, position).map_err(|e| {
            Error::internal(format!(
                "failed to write shared memory region '{}': {e}",
                at.region
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared-memory object of `size` bytes, removed when dropped.
    struct Object(String);

    impl Object {
        fn new(tag: &str, size: u64) -> Object {
            let key = format!("nereid-test-{tag}-{}", std::process::id());
            let file = File::create(format!("{SHM_DIR}/{key}")).unwrap();
            file.set_len(size).unwrap();
            Object(key)
        }
    }

    impl Drop for Object {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("{SHM_DIR}/{}", self.0));
        }
    }

    fn at(region: &str, offset: u64, byte_size: u64) -> SharedMemoryRef {
        SharedMemoryRef {
            region: region.into(),
            offset,
            byte_size,
        }
    }

    #[test]
    fn registers_reads_writes_and_checks_bounds() {
        let object = Object::new("unit", 64);
        let key = format!("/{}", object.0);
        let shm = SharedMemory::default();
        shm.register("r", &key, 16, 32).unwrap();
        let err = shm.register("r", &key, 0, 8).unwrap_err();
        assert_eq!(err.message, "shared memory region 'r' already in manager");
        let err = shm.register("big", &key, 40, 32).unwrap_err();
        assert_eq!(
            err.message,
            "failed to register shared memory region 'big': invalid args"
        );
        let err = shm
            .register("gone", "/nereid-no-such-object", 0, 8)
            .unwrap_err();
        assert_eq!(
            err.message,
            "Unable to open shared memory region: '/nereid-no-such-object'"
        );
        let err = shm
            .register("py", "/triton_python_backend_shm_region_1", 0, 8)
            .unwrap_err();
        assert!(err.message.contains("reserved prefix"), "{}", err.message);

        // Offsets are relative to the registered window (which starts at byte 16).
        shm.write(&at("r", 4, 8), "o", &[1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap();
        let mut raw = vec![0u8; 64];
        File::open(format!("{SHM_DIR}/{}", object.0))
            .unwrap()
            .read_exact_at(&mut raw, 0)
            .unwrap();
        assert_eq!(&raw[20..28], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&shm.read(&at("r", 6, 4)).unwrap()[..], &[3, 4, 5, 6]);

        let err = shm.read(&at("r", 32, 1)).unwrap_err();
        assert_eq!(err.message, "Invalid offset for shared memory region: 'r'");
        let err = shm.read(&at("r", 30, 4)).unwrap_err();
        assert_eq!(
            err.message,
            "Invalid offset + byte size for shared memory region: 'r'"
        );
        let err = shm.write(&at("r", 0, 4), "o", &[0; 8]).unwrap_err();
        assert_eq!(
            err.message,
            "shared memory size specified with the request for output 'o' (4 bytes) should be at least 8 bytes to hold the results"
        );
        let err = shm.read(&at("nope", 0, 4)).unwrap_err();
        assert_eq!(err.message, "Unable to find shared memory region: 'nope'");

        assert_eq!(
            shm.status(None).unwrap(),
            vec![RegionStatus {
                name: "r".into(),
                key: key.clone(),
                offset: 16,
                byte_size: 32
            }]
        );
        shm.unregister(Some("nope"));
        shm.unregister(Some("r"));
        let err = shm.status(Some("r")).unwrap_err();
        assert_eq!(
            err.message,
            "Unable to find system shared memory region: 'r'"
        );
        shm.register("a", &key, 0, 8).unwrap();
        shm.register("b", &key, 8, 8).unwrap();
        shm.unregister(None);
        assert!(shm.status(None).unwrap().is_empty());
    }
}
