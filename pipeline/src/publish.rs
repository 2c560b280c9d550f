//! Publishing a trained model into a Triton-layout model repository.
//!
//! A version folder appears whole or not at all: it is written under a hidden staging name inside
//! the model folder (`.staging-<version>-<pid>`, which the server never loads because it is not
//! numeric), fsynced, then renamed to `<version>`. The rename is atomic because staging and target
//! are in the same directory, hence the same file system. `config.pbtxt` and `labels.txt` are
//! replaced the same way (temporary file + rename), and before the version, so that a poller which
//! sees the new version also sees the config written for it.
//!
//! Existing versions are never overwritten: versions are immutable once served. Two publishers
//! racing for the same version number are not coordinated beyond that check: the loser gets
//! [`PublishError::VersionExists`] and nothing of it is visible.
//!
//! Entry points: [`write_model_version`] (an in-memory [`TrainedModel`] as a given version),
//! [`publish_directory`] (a folder as the next version, `nereid repo publish`) and
//! [`publish_next_version`] (a folder plus a config and labels as the next version, used by the
//! pipeline's publish step to ship `model.safetensors`, `reference.json` and `lineage.json`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::train::{TrainError, TrainedModel};

/// Name of the weights file inside a version folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// Name of the class-labels file inside a model folder.
pub const LABELS_FILE: &str = "labels.txt";
/// Name of the model configuration inside a model folder.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid model name `{0}`: use a non-empty name without `/`, `\\` or a leading `.`")]
    InvalidName(String),

    #[error("invalid version 0: Triton model versions start at 1")]
    InvalidVersion,

    #[error("version folder {} already exists; versions are immutable, publish a new version number", path.display())]
    VersionExists { path: PathBuf },

    #[error("cannot publish {}: not a directory (a version's files are published from a folder)", .0.display())]
    NotADirectory(PathBuf),

    #[error("label {index} ({label:?}) is empty or contains a line break")]
    InvalidLabel { index: usize, label: String },

    #[error("{labels} labels for a model with {outputs} outputs")]
    LabelCount { labels: usize, outputs: usize },

    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Boxed: a training error is large and publishing errors are rare.
    #[error(transparent)]
    Save(Box<TrainError>),

    #[error(transparent)]
    Location(#[from] crate::location::LocationError),

    #[error("failed to {action} {url}: {source}")]
    Remote {
        action: &'static str,
        url: String,
        #[source]
        source: object_store::Error,
    },

    #[error("no free version of model `{model}`: {attempts} version numbers in a row were taken by other publishers")]
    NoFreeVersion { model: String, attempts: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `<repo>/<model_name>/config.pbtxt`, `<repo>/<model_name>/labels.txt` (when `labels` is
/// not empty) and `<repo>/<model_name>/<version>/model.safetensors`; returns the version folder.
///
/// `labels`, when given, must have one entry per model output, in output order.
pub fn write_model_version(
    repo: &Path,
    model_name: &str,
    config_pbtxt: &str,
    labels: &[String],
    model: &TrainedModel,
    version: u64,
) -> Result<PathBuf, PublishError> {
    check_name(model_name)?;
    if version == 0 {
        return Err(PublishError::InvalidVersion);
    }
    if !labels.is_empty() && labels.len() != model.output_features {
        return Err(PublishError::LabelCount {
            labels: labels.len(),
            outputs: model.output_features,
        });
    }
    if let Some((index, label)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| l.is_empty() || l.contains(['\n', '\r']))
    {
        return Err(PublishError::InvalidLabel {
            index,
            label: label.clone(),
        });
    }

    let model_dir = repo.join(model_name);
    let version_dir = model_dir.join(version.to_string());
    if version_dir.exists() {
        return Err(PublishError::VersionExists { path: version_dir });
    }
    fs::create_dir_all(&model_dir).map_err(io_err(&model_dir))?;

    write_file_atomically(&model_dir, CONFIG_FILE, config_pbtxt.as_bytes())?;
    if !labels.is_empty() {
        let mut text = labels.join("\n");
        text.push('\n');
        write_file_atomically(&model_dir, LABELS_FILE, text.as_bytes())?;
    }

    publish_staged(&model_dir, version, Numbering::Exactly, |staging| {
        let weights = staging.join(MODEL_FILE);
        model
            .save_safetensors(&weights)
            .map_err(|e| PublishError::Save(Box::new(e)))?;
        sync_path(&weights)
    })
    .map(|(_, folder)| folder)
}

/// Publishes the files of `source` as the next version of `<repo>/<model_name>` (one more than
/// the highest numeric version, or 1), atomically; returns the version and its folder. A
/// `config.pbtxt` at the top of `source` replaces the model's config (before the version
/// appears) instead of being copied into the version folder.
pub fn publish_directory(
    repo: &Path,
    model_name: &str,
    source: &Path,
) -> Result<(u64, PathBuf), PublishError> {
    check_name(model_name)?;
    if !source.is_dir() {
        return Err(PublishError::NotADirectory(source.to_path_buf()));
    }
    let model_dir = repo.join(model_name);
    fs::create_dir_all(&model_dir).map_err(io_err(&model_dir))?;
    let config = source.join(CONFIG_FILE);
    if config.is_file() {
        let text = fs::read(&config).map_err(io_err(&config))?;
        write_file_atomically(&model_dir, CONFIG_FILE, &text)?;
    }
    let latest = fs::read_dir(&model_dir)
        .map_err(io_err(&model_dir))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0);
    publish_staged(&model_dir, latest + 1, Numbering::NextFree, |staging| {
        copy_tree(source, staging, true)
    })
}

/// Publishes the files of `source` as the next version of `<repo>/<model_name>`, first replacing
/// the model's `config.pbtxt` with `config_pbtxt` and (when `labels` is not empty) its
/// `labels.txt`, so that a poller that sees the new version also sees its config. Every file of
/// `source` goes into the version folder. Returns the version and its folder.
pub fn publish_next_version(
    repo: &Path,
    model_name: &str,
    config_pbtxt: &str,
    labels: &[String],
    source: &Path,
) -> Result<(u64, PathBuf), PublishError> {
    check_name(model_name)?;
    check_labels(labels)?;
    if !source.is_dir() {
        return Err(PublishError::NotADirectory(source.to_path_buf()));
    }
    let model_dir = repo.join(model_name);
    fs::create_dir_all(&model_dir).map_err(io_err(&model_dir))?;
    write_file_atomically(&model_dir, CONFIG_FILE, config_pbtxt.as_bytes())?;
    if !labels.is_empty() {
        let mut text = labels.join("\n");
        text.push('\n');
        write_file_atomically(&model_dir, LABELS_FILE, text.as_bytes())?;
    }
    let version = model_versions(repo, model_name)?
        .last()
        .copied()
        .unwrap_or(0)
        + 1;
    publish_staged(&model_dir, version, Numbering::NextFree, |staging| {
        copy_tree(source, staging, false)
    })
}

/// The numeric version folders of `<repo>/<model_name>`, ascending (empty if the model is absent).
pub fn model_versions(repo: &Path, model_name: &str) -> Result<Vec<u64>, PublishError> {
    check_name(model_name)?;
    let model_dir = repo.join(model_name);
    let read = match fs::read_dir(&model_dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&model_dir)(e)),
    };
    let mut versions: Vec<u64> = read
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .filter(|&v| v > 0)
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

pub(crate) fn check_labels(labels: &[String]) -> Result<(), PublishError> {
    match labels
        .iter()
        .enumerate()
        .find(|(_, l)| l.is_empty() || l.contains(['\n', '\r']))
    {
        Some((index, label)) => Err(PublishError::InvalidLabel {
            index,
            label: label.clone(),
        }),
        None => Ok(()),
    }
}

/// Copies `from` into `to` (which exists), fsyncing every file and folder written.
fn copy_tree(from: &Path, to: &Path, top: bool) -> Result<(), PublishError> {
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let name = entry.file_name();
        if top && name == CONFIG_FILE {
            continue;
        }
        let target = to.join(&name);
        let kind = entry.file_type().map_err(io_err(&entry.path()))?;
        if kind.is_dir() {
            fs::create_dir(&target).map_err(io_err(&target))?;
            copy_tree(&entry.path(), &target, false)?;
        } else {
            fs::copy(entry.path(), &target).map_err(io_err(&target))?;
            sync_path(&target)?;
        }
    }
    sync_path(to)
}

pub(crate) fn check_name(model_name: &str) -> Result<(), PublishError> {
    if model_name.is_empty()
        || model_name.starts_with('.')
        || model_name.contains(['/', '\\'])
        || model_name.chars().any(char::is_control)
    {
        return Err(PublishError::InvalidName(model_name.to_string()));
    }
    Ok(())
}

/// Whether a version number is the one asked for, or the first free one from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    Exactly,
    /// Another publisher may take a number between our listing and our rename: then the next
    /// one is tried, so two racing publishers never share a version.
    NextFree,
}

/// Writes a version under a hidden staging name with `fill`, then renames it into place;
/// returns the version it got and its folder.
fn publish_staged(
    model_dir: &Path,
    version: u64,
    numbering: Numbering,
    fill: impl FnOnce(&Path) -> Result<(), PublishError>,
) -> Result<(u64, PathBuf), PublishError> {
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = model_dir.join(format!(".staging-{}-{unique}", std::process::id()));
    let result = stage_and_rename(&staging, version, numbering, model_dir, fill);
    if result.is_err() {
        // Best effort: a leftover staging folder is harmless (never loaded) but untidy.
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn stage_and_rename(
    staging: &Path,
    mut version: u64,
    numbering: Numbering,
    model_dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), PublishError>,
) -> Result<(u64, PathBuf), PublishError> {
    // A folder with our name can only be left over by an earlier crashed run with the same pid.
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(io_err(staging))?;
    }
    fs::create_dir(staging).map_err(io_err(staging))?;
    fill(staging)?;
    sync_path(staging)?;
    loop {
        let version_dir = model_dir.join(version.to_string());
        // rename(2) would silently replace an empty directory, so check right before it; a
        // non-empty one (another publisher's, renamed in since) makes it fail.
        let taken = version_dir.exists()
            || match fs::rename(staging, &version_dir) {
                Ok(()) => {
                    // Persist the rename itself.
                    sync_path(model_dir)?;
                    return Ok((version, version_dir));
                }
                Err(_) if version_dir.exists() => true,
                Err(e) => return Err(io_err(&version_dir)(e)),
            };
        if taken && numbering == Numbering::Exactly {
            return Err(PublishError::VersionExists { path: version_dir });
        }
        version += 1;
    }
}

/// Replaces `dir/name` with `contents` via a hidden temporary file and a rename.
fn write_file_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), PublishError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{unique}", std::process::id()));
    let target = dir.join(name);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(contents).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &target).map_err(io_err(&target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_path(dir)
}

/// fsync a file or directory by path (opening read-only is enough for fsync on Unix).
fn sync_path(path: &Path) -> Result<(), PublishError> {
    let file = File::open(path).map_err(io_err(path))?;
    match file.sync_all() {
        Ok(()) => Ok(()),
        // Some platforms (Windows) cannot fsync a directory handle; the data files are synced.
        Err(_) if path.is_dir() && !cfg!(unix) => Ok(()),
        Err(source) => Err(PublishError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod directory_tests {
    use super::*;

    #[test]
    fn publishes_the_next_version_atomically() {
        let repo = tempfile::tempdir().unwrap();
        let source = tempfile::tempdir().unwrap();
        fs::write(source.path().join("weights.bin"), b"w").unwrap();
        fs::create_dir(source.path().join("sub")).unwrap();
        fs::write(source.path().join("sub/extra.txt"), b"x").unwrap();
        fs::write(source.path().join(CONFIG_FILE), b"name: \"m\"").unwrap();
        fs::create_dir_all(repo.path().join("m/3")).unwrap();
        fs::create_dir_all(repo.path().join("m/.staging-9-1")).unwrap();

        let (version, folder) = publish_directory(repo.path(), "m", source.path()).unwrap();
        assert_eq!(version, 4);
        assert_eq!(fs::read(folder.join("weights.bin")).unwrap(), b"w");
        assert_eq!(fs::read(folder.join("sub/extra.txt")).unwrap(), b"x");
        assert!(
            !folder.join(CONFIG_FILE).exists(),
            "the config goes to the model folder"
        );
        assert_eq!(
            fs::read(repo.path().join("m").join(CONFIG_FILE)).unwrap(),
            b"name: \"m\""
        );
        let (version, _) = publish_directory(repo.path(), "m", source.path()).unwrap();
        assert_eq!(version, 5);
        let staging: Vec<_> = fs::read_dir(repo.path().join("m"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy().starts_with(".staging")
                    && e.file_name() != ".staging-9-1"
            })
            .collect();
        assert!(staging.is_empty());
        assert!(publish_directory(repo.path(), "../x", source.path()).is_err());
        assert!(publish_directory(repo.path(), "m", &repo.path().join("missing")).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DenseModel;
    use crate::train::{train_classifier, TrainConfig};
    use candle_core::Device;

    fn tiny_model() -> TrainedModel {
        let features = [
            0.0, 0.1, 0.1, 0.0, 0.2, 0.1, 0.0, 0.2, 1.0, 1.1, 1.2, 0.9, 0.9, 1.0, 1.1, 1.0,
        ];
        let labels = [0, 0, 1, 1, 0, 0, 1, 1];
        let cfg = TrainConfig {
            epochs: 3,
            validation_fraction: 0.0,
            test_fraction: 0.0,
            ..TrainConfig::default()
        };
        train_classifier(&features, 2, &labels, 2, &cfg).expect("train")
    }

    fn labels() -> Vec<String> {
        vec!["no".to_string(), "yes".to_string()]
    }

    #[test]
    fn publishes_atomically_and_leaves_no_staging() {
        let repo = tempfile::tempdir().expect("tempdir");
        let model = tiny_model();
        let config = "name: \"tiny\"\nbackend: \"candle\"\n";
        let dir = write_model_version(repo.path(), "tiny", config, &labels(), &model, 1)
            .expect("publish");
        assert_eq!(dir, repo.path().join("tiny").join("1"));

        let mut entries: Vec<String> = fs::read_dir(repo.path().join("tiny"))
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(entries, ["1", "config.pbtxt", "labels.txt"]);
        let version_entries: Vec<_> = fs::read_dir(&dir).expect("read").collect();
        assert_eq!(version_entries.len(), 1);
        assert_eq!(
            fs::read_to_string(repo.path().join("tiny/config.pbtxt")).expect("config"),
            config
        );
        assert_eq!(
            fs::read_to_string(repo.path().join("tiny/labels.txt")).expect("labels"),
            "no\nyes\n"
        );
        let loaded =
            DenseModel::load(&dir.join(MODEL_FILE), model.spec, &Device::Cpu).expect("load");
        assert_eq!(loaded.output_features(), 2);

        // Versions are immutable.
        let err = write_model_version(repo.path(), "tiny", config, &labels(), &model, 1)
            .expect_err("exists");
        assert!(matches!(err, PublishError::VersionExists { .. }), "{err}");

        // The next version goes next to it, again without leftovers.
        write_model_version(repo.path(), "tiny", config, &labels(), &model, 2).expect("v2");
        let leftovers: Vec<_> = fs::read_dir(repo.path().join("tiny"))
            .expect("read")
            .filter_map(|e| {
                let name = e.expect("entry").file_name().to_string_lossy().into_owned();
                name.starts_with('.').then_some(name)
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn rejects_bad_arguments() {
        let repo = tempfile::tempdir().expect("tempdir");
        let model = tiny_model();
        for name in ["", ".hidden", "a/b", "..", "a\\b"] {
            let err =
                write_model_version(repo.path(), name, "", &[], &model, 1).expect_err("bad name");
            assert!(matches!(err, PublishError::InvalidName(_)), "{name}: {err}");
        }
        let err = write_model_version(repo.path(), "m", "", &[], &model, 0).expect_err("v0");
        assert!(matches!(err, PublishError::InvalidVersion), "{err}");
        let err = write_model_version(repo.path(), "m", "", &["one".into()], &model, 1)
            .expect_err("label count");
        assert!(matches!(err, PublishError::LabelCount { .. }), "{err}");
        let err = write_model_version(
            repo.path(),
            "m",
            "",
            &["a\nb".into(), "c".into()],
            &model,
            1,
        )
        .expect_err("label text");
        assert!(
            matches!(err, PublishError::InvalidLabel { index: 0, .. }),
            "{err}"
        );
        // Nothing was written for the rejected calls.
        assert!(!repo.path().join("m").exists());

        // Without labels, no labels file.
        write_model_version(repo.path(), "m", "", &[], &model, 1).expect("no labels");
        assert!(!repo.path().join("m").join(LABELS_FILE).exists());
    }

    #[test]
    fn racing_publishers_never_share_a_version() {
        let repo = tempfile::tempdir().expect("repo");
        let sources: Vec<tempfile::TempDir> = (0..8)
            .map(|i| {
                let dir = tempfile::tempdir().expect("source");
                fs::write(dir.path().join(format!("from-{i}")), i.to_string()).expect("file");
                dir
            })
            .collect();
        let barrier = std::sync::Barrier::new(sources.len());
        let versions: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = sources
                .iter()
                .map(|source| {
                    let (repo, barrier) = (repo.path(), &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        publish_next_version(repo, "raced", "name: \"raced\"\n", &[], source.path())
                            .expect("publish")
                            .0
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        let mut sorted = versions.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=8).collect::<Vec<u64>>(), "{versions:?}");
        for v in 1..=8u64 {
            let files: Vec<_> = fs::read_dir(repo.path().join("raced").join(v.to_string()))
                .expect("version")
                .collect();
            assert_eq!(files.len(), 1, "version {v} holds one publisher's files");
        }
        let hidden = fs::read_dir(repo.path().join("raced"))
            .expect("model")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count();
        assert_eq!(hidden, 0);
    }
}
