//! Small shared helpers: content hashing, crash-safe file writes, timestamps and identifiers.
//!
//! Every durable file of the feature store, the run records and the step cache is written through
//! [`write_atomic`] (replaceable files: temporary file, fsync, rename) or [`create_new_atomic`]
//! (immutable files: temporary file, fsync, hard link that fails if the name exists). Readers
//! therefore see a whole file or none, and an immutable name is never rewritten, even by two
//! processes racing for it. Both map onto object storage (`PutMode::Overwrite` /
//! `PutMode::Create`) when the store moves there.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's contents and its size, streamed (files can be large).
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), total))
}

/// A name for a temporary file next to `target` that no other process or thread uses.
fn temp_sibling(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// fsync a directory so that a rename or link inside it survives a crash (no-op where the
/// platform cannot open directories for syncing).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        Err(_) if !cfg!(unix) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `contents`: readers see the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = temp_sibling(path);
    let result = write_synced(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // A bare file name's folder is the working directory ("" would not open).
    if let Some(dir) = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    }) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates `path` with `contents` only if it does not exist yet; returns `false` (and changes
/// nothing) if it does. The file appears complete: it is written aside and hard-linked into
/// place, and `link(2)` fails rather than replace an existing name.
pub fn create_new_atomic(path: &Path, contents: &[u8]) -> io::Result<bool> {
    let tmp = temp_sibling(path);
    let result = write_synced(&tmp, contents).and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            // A bare file name's folder is the working directory ("" would not open).
            if let Some(dir) = path.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            }) {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A progress bar of `len` `unit`s on stderr, drawn only when stderr is a terminal (so logs and
/// pipes stay clean).
pub fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A spinner with a message on stderr, drawn only when stderr is a terminal.
pub fn spinner(message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Serialises `value` as pretty JSON with a trailing newline (stable: struct field order, and
/// every map in these files is a `BTreeMap`).
pub fn to_json_pretty<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value)
        .expect("record types serialise to JSON (no non-string map keys). This is a bug.");
    out.push(b'\n');
    out
}

/// Now, as RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A sortable, unique identifier: UTC time to the second plus 8 hex digits of a hash of the
/// time, the process and a counter (`20250131T120000-1a2b3c4d`).
pub fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now();
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt = sha256_hex(format!("{nanos}-{}-{n}", std::process::id()).as_bytes());
    let time = chrono::DateTime::<chrono::Utc>::from(now).format("%Y%m%dT%H%M%S");
    format!("{time}-{}", &salt[..8])
}

/// `true` for names usable as one path component: letters, digits, `_`, `-`, `.`, not starting
/// with `.`, at most 128 bytes.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Parses a duration such as `90s`, `15m`, `12h`, `7d` or `1h 30m` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration `{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entry.json");
        assert!(create_new_atomic(&path, b"first").expect("create"));
        assert!(!create_new_atomic(&path, b"second").expect("exists"));
        assert_eq!(fs::read(&path).expect("read"), b"first");
        write_atomic(&path, b"third").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"third");
        let leftovers = fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 1, "no temporary files are left behind");
    }

    #[test]
    fn hashes_and_names() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_safe_name("iris_v2.train-set"));
        for bad in ["", ".hidden", "a/b", "a b", "..", "ä"] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert_eq!(
            parse_duration("7d").expect("7d"),
            std::time::Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("soon").is_err());
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "20250131T120000-1a2b3c4d".len());
    }
}
