//! The response cache (`--cache-config local,size=BYTES`, and `response_cache { enable: true }`
//! in a model's config): answers a request that repeats an earlier one with the earlier
//! response's outputs, without running the model.
//!
//! - One cache for the whole server, bounded by the bytes of the output tensors it holds; the
//!   least recently used entries are evicted to make room, and a response larger than the whole
//!   cache is not stored.
//! - The key is a SHA-256 digest of everything that decides the outputs: the model's name and
//!   version, the *load* of that version (a reload, even of the same version number, starts
//!   with no entries), every input (name, datatype, shape, bytes), and the requested outputs
//!   with their classification counts. Request parameters that are only transport (priority,
//!   timeout, binary form, shared memory) are not part of it.
//! - Outputs are shared (`Bytes`), so a hit copies no tensor data.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nereid_protocol::{RequestedOutput, Tensor};
use sha2::{Digest, Sha256};

/// Identifies one load of one model version: part of every key, so that nothing cached for a
/// previous load (other weights under the same version number) is ever served.
pub fn next_load_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The digest of a request, as the cache keys it.
pub type Key = [u8; 32];

/// The cache key of a request on one load of a model version.
pub fn key(
    model: &str,
    version: u64,
    load_id: u64,
    inputs: &[Tensor],
    outputs: &[RequestedOutput],
) -> Key {
    let mut hash = Sha256::new();
    // Lengths before variable-size fields, so that no two requests hash the same bytes.
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(model.as_bytes());
    field(&version.to_le_bytes());
    field(&load_id.to_le_bytes());
    let mut sorted: Vec<&Tensor> = inputs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for input in sorted {
        field(input.name.as_bytes());
        field(input.datatype.as_str().as_bytes());
        for dim in &input.shape {
            field(&dim.to_le_bytes());
        }
        field(&input.data);
    }
    let mut requested: Vec<(&str, u32)> = outputs
        .iter()
        .map(|o| (o.name.as_str(), o.classification.unwrap_or(0)))
        .collect();
    requested.sort_unstable();
    for (name, classes) in requested {
        field(name.as_bytes());
        field(&classes.to_le_bytes());
    }
    hash.finalize().into()
}

/// Counters of the whole cache (the per-model hit and miss counts live in the models'
/// statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheTotals {
    pub entries: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
}

struct Entry {
    outputs: Vec<Tensor>,
    bytes: u64,
    last_used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Entries by last use (a use counter, oldest first): the eviction order.
    by_use: BTreeMap<u64, Key>,
    uses: u64,
    totals: CacheTotals,
}

impl State {
    fn touch(&mut self, key: &Key) {
        self.uses += 1;
        let now = self.uses;
        if let Some(entry) = self.entries.get_mut(key) {
            self.by_use.remove(&entry.last_used);
            entry.last_used = now;
            self.by_use.insert(now, *key);
        }
    }
}

/// The server's response cache.
pub struct ResponseCache {
    capacity: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// A cache holding at most `capacity` bytes of output tensors.
    pub fn new(capacity: u64) -> Self {
        ResponseCache {
            capacity,
            state: Mutex::new(State {
                totals: CacheTotals {
                    capacity,
                    ..CacheTotals::default()
                },
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only maps and counters live here; a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outputs cached for `key`, if any (and it becomes the most recently used).
    pub fn lookup(&self, key: &Key) -> Option<Vec<Tensor>> {
        let mut state = self.lock();
        state.totals.lookups += 1;
        let outputs = state.entries.get(key).map(|e| e.outputs.clone());
        match outputs {
            Some(outputs) => {
                state.totals.hits += 1;
                state.touch(key);
                Some(outputs)
            }
            None => {
                state.totals.misses += 1;
                None
            }
        }
    }

    /// Stores `outputs` for `key`, evicting the least recently used entries to make room. Host
    /// tensors only; a response that is larger than the cache, or has device tensors, is not
    /// stored.
    pub fn insert(&self, key: Key, outputs: &[Tensor]) {
        if outputs.iter().any(|t| t.device.is_some()) {
            return;
        }
        let bytes: u64 = outputs.iter().map(|t| t.data.len() as u64).sum();
        if bytes > self.capacity {
            return;
        }
        let mut state = self.lock();
        if state.entries.contains_key(&key) {
            // A concurrent identical request got here first.
            state.touch(&key);
            return;
        }
        while state.totals.bytes + bytes > self.capacity {
            let Some((_, oldest)) = state.by_use.pop_first() else {
                break;
            };
            if let Some(evicted) = state.entries.remove(&oldest) {
                state.totals.bytes -= evicted.bytes;
                state.totals.evictions += 1;
            }
        }
        state.uses += 1;
        let now = state.uses;
        state.by_use.insert(now, key);
        state.entries.insert(
            key,
            Entry {
                outputs: outputs.to_vec(),
                bytes,
                last_used: now,
            },
        );
        state.totals.bytes += bytes;
        state.totals.inserts += 1;
        state.totals.entries = state.entries.len() as u64;
    }

    pub fn totals(&self) -> CacheTotals {
        let state = self.lock();
        CacheTotals {
            entries: state.entries.len() as u64,
            ..state.totals
        }
    }
}

/// Parses one of Triton's `--cache-config` values, `local,size=BYTES`: the local cache's size.
pub fn parse_cache_setting(value: &str) -> Result<u64, String> {
    let (cache, setting) = value
        .split_once(',')
        .ok_or_else(|| format!("'{value}' is not <cache>,<key>=<value>"))?;
    if cache != "local" {
        return Err(format!(
            "cache '{cache}' is not available; this server has the 'local' cache"
        ));
    }
    let (key, number) = setting
        .split_once('=')
        .ok_or_else(|| format!("'{value}' is not <cache>,<key>=<value>"))?;
    if key != "size" {
        return Err(format!(
            "the local cache has no setting '{key}' (it takes size=BYTES)"
        ));
    }
    number
        .parse::<u64>()
        .map_err(|_| format!("size '{number}' is not a byte count"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::DataType;

    fn tensor(name: &str, values: &[u8]) -> Tensor {
        Tensor::new(
            name,
            DataType::Uint8,
            vec![values.len() as i64],
            bytes::Bytes::copy_from_slice(values),
        )
    }

    fn out(name: &str, classes: Option<u32>) -> RequestedOutput {
        RequestedOutput {
            name: name.into(),
            classification: classes,
            ..Default::default()
        }
    }

    #[test]
    fn keys_cover_what_decides_the_outputs() {
        let inputs = [tensor("A", &[1, 2]), tensor("B", &[3])];
        let base = key("m", 1, 7, &inputs, &[]);
        // Input order does not matter; everything else does.
        let swapped = [tensor("B", &[3]), tensor("A", &[1, 2])];
        assert_eq!(key("m", 1, 7, &swapped, &[]), base);
        assert_ne!(key("n", 1, 7, &inputs, &[]), base);
        assert_ne!(key("m", 2, 7, &inputs, &[]), base);
        assert_ne!(key("m", 1, 8, &inputs, &[]), base, "another load");
        assert_ne!(key("m", 1, 7, &[tensor("A", &[1, 2])], &[]), base);
        assert_ne!(
            key("m", 1, 7, &[tensor("A", &[1, 2]), tensor("B", &[4])], &[]),
            base
        );
        let mut reshaped = inputs.clone();
        reshaped[0].shape = vec![2, 1];
        assert_ne!(key("m", 1, 7, &reshaped, &[]), base);
        assert_ne!(key("m", 1, 7, &inputs, &[out("O", None)]), base);
        assert_ne!(
            key("m", 1, 7, &inputs, &[out("O", Some(2))]),
            key("m", 1, 7, &inputs, &[out("O", None)])
        );
        // Field boundaries: "ab"+"c" is not "a"+"bc".
        assert_ne!(
            key("m", 1, 7, &[tensor("ab", &[1])], &[]),
            key("m", 1, 7, &[tensor("a", &[98, 1])], &[])
        );
    }

    #[test]
    fn evicts_the_least_recently_used_within_its_size() {
        let cache = ResponseCache::new(10);
        let k = |i: u8| [i; 32];
        cache.insert(k(1), &[tensor("O", &[1; 4])]);
        cache.insert(k(2), &[tensor("O", &[2; 4])]);
        assert!(cache.lookup(&k(1)).is_some(), "1 is now the most recent");
        cache.insert(k(3), &[tensor("O", &[3; 4])]);
        assert!(cache.lookup(&k(2)).is_none(), "2 was evicted");
        assert_eq!(&cache.lookup(&k(1)).unwrap()[0].data[..], &[1; 4]);
        assert!(cache.lookup(&k(3)).is_some());
        cache.insert(k(4), &[tensor("O", &[4; 11])]);
        assert!(cache.lookup(&k(4)).is_none(), "larger than the whole cache");
        let totals = cache.totals();
        assert_eq!(
            totals,
            CacheTotals {
                entries: 2,
                bytes: 8,
                capacity: 10,
                lookups: 5,
                hits: 3,
                misses: 2,
                inserts: 3,
                evictions: 1,
            }
        );
    }

    #[test]
    fn cache_config_is_tritons_spelling() {
        assert_eq!(parse_cache_setting("local,size=1048576"), Ok(1_048_576));
        assert_eq!(parse_cache_setting("local,size=0"), Ok(0));
        assert!(parse_cache_setting("redis,host=x")
            .unwrap_err()
            .contains("'redis' is not available"));
        assert!(parse_cache_setting("local,bytes=5").is_err());
        assert!(parse_cache_setting("local,size=lots").is_err());
        assert!(parse_cache_setting("local").is_err());
    }
}
