//! Reads a Triton-layout model repository: `<repo>/<model>/config.pbtxt` and numeric version
//! folders `<repo>/<model>/<version>/`. Scanning only reads; loading is the registry's job.
//!
//! A model whose folder is unusable (no config, a config that does not parse or validate, no
//! version selected by its policy) is still returned, with the reason, so that it is reported
//! UNAVAILABLE instead of taking the server down.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use nereid_protocol::inference::{model_version_policy::PolicyChoice, ModelConfig};
use nereid_protocol::{config, DataType};

/// Folder names that a publisher uses while it writes a version; never loaded.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// One model folder as found on disk.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub path: PathBuf,
    /// The parsed and validated config, or why there is none.
    pub config: Result<Arc<ModelConfig>, String>,
    /// Versions selected by the version policy (ascending). Empty when the config failed.
    pub versions: Vec<u64>,
    /// Changes when `config.pbtxt` or another model-level file (labels) changes.
    pub config_fingerprint: u64,
    /// Per selected version: changes when any file of the version folder changes.
    pub version_fingerprints: BTreeMap<u64, u64>,
}

impl ModelSource {
    /// One value that changes when anything this model would load changes.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.config_fingerprint.hash(&mut hasher);
        self.version_fingerprints.hash(&mut hasher);
        self.config.is_ok().hash(&mut hasher);
        hasher.finish()
    }
}

/// Hashes the files directly in `dir` (contents for small files, else size and mtime).
fn fingerprint_files(dir: &Path, recursive: bool, hasher: &mut impl Hasher) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_str().is_some_and(is_hidden) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if recursive {
                name.hash(hasher);
                fingerprint_files(&entry.path(), true, hasher);
            }
            continue;
        }
        name.hash(hasher);
        meta.len().hash(hasher);
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        modified.map(|d| d.as_nanos()).hash(hasher);
        // Small files (configs, labels) by content too: an edit within the same second and
        // size must still count as a change.
        if meta.len() <= 64 * 1024 {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                bytes.hash(hasher);
            }
        }
    }
}

fn fingerprint(dir: &Path, recursive: bool) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    fingerprint_files(dir, recursive, &mut hasher);
    hasher.finish()
}

/// Lists the models of `repository`, sorted by name.
pub fn scan(repository: &Path) -> std::io::Result<Vec<ModelSource>> {
    let mut models = Vec::new();
    for entry in std::fs::read_dir(repository)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if is_hidden(&name) || !entry.file_type()?.is_dir() {
            continue;
        }
        models.push(read_model(&name, &entry.path()));
    }
    models.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(models)
}

/// Reads one model folder.
pub fn read_model(name: &str, path: &Path) -> ModelSource {
    read_model_with(name, path, None)
}

/// Reads one model folder; `config_override` (the load API's `config` parameter) replaces
/// `config.pbtxt`.
pub fn read_model_with(
    name: &str,
    path: &Path,
    config_override: Option<ModelConfig>,
) -> ModelSource {
    let mut source = ModelSource {
        name: name.to_string(),
        path: path.to_path_buf(),
        config: Err(String::new()),
        versions: Vec::new(),
        config_fingerprint: fingerprint(path, false),
        version_fingerprints: BTreeMap::new(),
    };
    let config = match config_override
        .map_or_else(|| load_config(name, path), |c| check_override(name, c))
    {
        Ok(config) => config,
        Err(reason) => {
            source.config = Err(reason);
            return source;
        }
    };
    let available = match version_folders(path) {
        Ok(v) => v,
        Err(e) => {
            source.config = Err(format!("failed to list versions of model '{name}': {e}"));
            return source;
        }
    };
    source.versions = select_versions(&config, &available);
    let mut config = config;
    if crate::backend::onnx::is_onnx(&config) {
        // Completed from, and checked against, the newest version's graph (as Triton does).
        if let Some(newest) = source.versions.last() {
            let file = path
                .join(newest.to_string())
                .join(crate::backend::onnx::model_file(&config));
            let completed = crate::backend::onnx::GraphIo::read(&file)
                .and_then(|io| crate::backend::onnx::autocomplete(&mut config, &io));
            if let Err(reason) = completed {
                source.config = Err(format!(
                    "failed to load model '{name}' version {newest}: {reason}"
                ));
                return source;
            }
        }
    }
    source.version_fingerprints = source
        .versions
        .iter()
        .map(|v| (*v, fingerprint(&path.join(v.to_string()), true)))
        .collect();
    source.config = if source.versions.is_empty() {
        Err(format!(
            "at least one version must be available under the version policy of model '{name}'"
        ))
    } else {
        Ok(Arc::new(config))
    };
    source
}

fn check_override(name: &str, mut config: ModelConfig) -> Result<ModelConfig, String> {
    if config.name.is_empty() {
        config.name = name.to_string();
    } else if config.name != name {
        return Err(format!(
            "model name '{}' in the config override does not match the model '{name}'",
            config.name
        ));
    }
    validate(&config)?;
    Ok(config)
}

/// Whether `path` holds a model: a `config.pbtxt`, or a version folder with an ONNX model
/// (whose config is completed from its graph).
pub fn has_model(path: &Path) -> bool {
    path.join("config.pbtxt").is_file() || has_onnx_version(path)
}

fn has_onnx_version(path: &Path) -> bool {
    version_folders(path).is_ok_and(|versions| {
        versions.iter().any(|v| {
            path.join(v.to_string())
                .join(crate::backend::onnx::DEFAULT_MODEL_FILE)
                .is_file()
        })
    })
}

fn load_config(name: &str, path: &Path) -> Result<ModelConfig, String> {
    let file = path.join("config.pbtxt");
    if !file.exists() && has_onnx_version(path) {
        return Ok(crate::backend::onnx::bare_config(name));
    }
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("failed to read {}: {e}", file.display()))?;
    let mut config =
        config::parse_pbtxt(&text, &file.display().to_string()).map_err(|e| e.message)?;
    if config.name.is_empty() {
        config.name = name.to_string();
    } else if config.name != name {
        return Err(format!(
            "model name '{}' in {} does not match its folder name '{name}'",
            config.name,
            file.display()
        ));
    }
    validate(&config)?;
    Ok(config)
}

/// Numeric version folders; others (and names with a leading zero) are ignored, as Triton does.
fn version_folders(path: &Path) -> std::io::Result<Vec<u64>> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('0') || !entry.file_type()?.is_dir() {
            continue;
        }
        if let Ok(version) = name.parse::<u64>() {
            versions.push(version);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

fn select_versions(config: &ModelConfig, available: &[u64]) -> Vec<u64> {
    let policy = config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref());
    match policy {
        Some(PolicyChoice::All(_)) => available.to_vec(),
        Some(PolicyChoice::Specific(specific)) => available
            .iter()
            .copied()
            .filter(|v| specific.versions.iter().any(|s| *s as u64 == *v && *s >= 0))
            .collect(),
        Some(PolicyChoice::Latest(latest)) => {
            let n = latest.num_versions.max(1) as usize;
            available[available.len().saturating_sub(n)..].to_vec()
        }
        None => available.last().copied().into_iter().collect(),
    }
}

/// Checks a config for what Triton rejects before loading; messages follow Triton's.
pub fn validate(config: &ModelConfig) -> Result<(), String> {
    let m = &config.name;
    if config.max_batch_size < 0 {
        return Err(format!(
            "'max_batch_size' must be non-negative value for {m}"
        ));
    }
    let is_ensemble = config.platform == "ensemble";
    if !is_ensemble && config.backend.is_empty() && config.platform.is_empty() {
        return Err(format!(
            "model '{m}' must specify 'backend' (for example \"identity\" or \"candle\")"
        ));
    }
    let mut seen = BTreeMap::new();
    for input in &config.input {
        if input.name.is_empty() {
            return Err(format!("model input must specify 'name' for {m}"));
        }
        if DataType::from_config(input.data_type).is_none() {
            return Err(format!(
                "model input '{}' must specify 'data_type'",
                input.name
            ));
        }
        check_dims(
            "input",
            &input.name,
            &input.dims,
            input.reshape.as_ref().map(|r| &r.shape[..]),
            m,
        )?;
        if seen.insert(input.name.as_str(), ()).is_some() {
            return Err(format!(
                "model input '{}' is specified more than once for {m}",
                input.name
            ));
        }
    }
    let mut seen = BTreeMap::new();
    for output in &config.output {
        if output.name.is_empty() {
            return Err(format!("model output must specify 'name' for {m}"));
        }
        if DataType::from_config(output.data_type).is_none() {
            return Err(format!(
                "model output '{}' must specify 'data_type'",
                output.name
            ));
        }
        check_dims(
            "output",
            &output.name,
            &output.dims,
            output.reshape.as_ref().map(|r| &r.shape[..]),
            m,
        )?;
        if seen.insert(output.name.as_str(), ()).is_some() {
            return Err(format!(
                "model output '{}' is specified more than once for {m}",
                output.name
            ));
        }
    }
    if is_ensemble {
        if !config.instance_group.is_empty() {
            return Err(format!(
                "instance group should not be specified for ensemble '{m}'"
            ));
        }
    } else if config.ensemble_scheduling().is_some() {
        return Err(format!(
            "ensemble scheduling cannot be set for model '{m}' whose platform is not ensemble"
        ));
    }
    crate::sequence::SequenceSpec::from_config(config)?;
    if let Some((field, why)) = unsupported_field(config) {
        return Err(format!(
            "model '{m}': config field '{field}' is not supported by Nereid ({why}); remove it to load the model"
        ));
    }
    Ok(())
}

/// The first field of `config` that Nereid does not implement and that would change what the
/// model answers or how it is secured if it were dropped, with the reason. Fields that only tune
/// performance on Triton's other backends (`optimization` other than the ONNX graph level,
/// `instance_group.rate_limiter`, which Triton itself ignores without `--rate-limit`,
/// `instance_group.profile` and `host_policy`, `input.format`, `metric_tags`, `model_metrics`,
/// `ensemble_scheduling.max_inflight_requests`) load and are ignored (README, "Model
/// configuration").
pub fn unsupported_field(config: &ModelConfig) -> Option<(String, &'static str)> {
    let found = |field: String, why: &'static str| Some((field, why));
    if config
        .model_transaction_policy
        .as_ref()
        .is_some_and(|p| p.decoupled)
    {
        return found(
            "model_transaction_policy.decoupled".into(),
            "every request gets exactly one response",
        );
    }
    if !config.batch_input.is_empty() {
        return found("batch_input".into(), "ragged batching is not implemented");
    }
    if !config.batch_output.is_empty() {
        return found("batch_output".into(), "ragged batching is not implemented");
    }
    for input in &config.input {
        let name = &input.name;
        if input.allow_ragged_batch {
            return found(
                format!("input '{name}' allow_ragged_batch"),
                "ragged batching is not implemented",
            );
        }
        if input.is_shape_tensor {
            return found(
                format!("input '{name}' is_shape_tensor"),
                "shape tensors are a TensorRT feature",
            );
        }
        if input.is_non_linear_format_io {
            return found(
                format!("input '{name}' is_non_linear_format_io"),
                "non-linear tensor formats are a TensorRT feature",
            );
        }
    }
    for output in &config.output {
        let name = &output.name;
        if output.is_shape_tensor {
            return found(
                format!("output '{name}' is_shape_tensor"),
                "shape tensors are a TensorRT feature",
            );
        }
        if output.is_non_linear_format_io {
            return found(
                format!("output '{name}' is_non_linear_format_io"),
                "non-linear tensor formats are a TensorRT feature",
            );
        }
    }
    for group in &config.instance_group {
        if group.passive {
            return found(
                "instance_group.passive".into(),
                "every instance takes requests",
            );
        }
        if !group.secondary_devices.is_empty() {
            return found(
                "instance_group.secondary_devices".into(),
                "instances run on one device",
            );
        }
    }
    if config
        .model_operations
        .as_ref()
        .is_some_and(|o| !o.op_library_filename.is_empty())
    {
        return found(
            "model_operations".into(),
            "custom operator libraries are not loaded",
        );
    }
    if config
        .model_repository_agents
        .as_ref()
        .is_some_and(|a| !a.agents.is_empty())
    {
        return found(
            "model_repository_agents".into(),
            "repository agents (such as checksum verification) do not run",
        );
    }
    if !config.cc_model_filenames.is_empty() {
        return found(
            "cc_model_filenames".into(),
            "the model file does not depend on the GPU's compute capability",
        );
    }
    if !config.runtime.is_empty() {
        return found(
            "runtime".into(),
            "backends are built in; there is no runtime library to choose",
        );
    }
    if let Some(ensemble) = config.ensemble_scheduling() {
        if ensemble.step.iter().any(|s| !s.model_namespace.is_empty()) {
            return found(
                "ensemble_scheduling.step.model_namespace".into(),
                "model namespacing is not implemented",
            );
        }
    }
    None
}

fn check_dims(
    kind: &str,
    name: &str,
    dims: &[i64],
    reshape: Option<&[i64]>,
    m: &str,
) -> Result<(), String> {
    if dims.iter().any(|d| *d < -1) {
        return Err(format!("model {kind} '{name}' has an invalid dimension in dims for {m}: only -1 may be negative"));
    }
    if let Some(reshape) = reshape {
        let fixed = |d: &[i64]| d.iter().all(|x| *x >= 0);
        if fixed(dims) && fixed(reshape) {
            let product = |d: &[i64]| d.iter().product::<i64>();
            if product(dims) != product(reshape) {
                return Err(format!(
                    "model {kind} '{name}' has different size for dims and reshape for {m}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const IDENTITY: &str = r#"backend: "identity" max_batch_size: 4
input [ { name: "I" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "O" data_type: TYPE_FP32 dims: [ 2 ] } ]"#;

    #[test]
    fn finds_numeric_versions_and_applies_policies() {
        let repo = tempfile::tempdir().unwrap();
        let model = repo.path().join("m");
        write(&model.join("config.pbtxt"), IDENTITY);
        for v in ["1", "2", "10", "007", "abc", ".staging-11"] {
            std::fs::create_dir_all(model.join(v)).unwrap();
        }
        std::fs::write(model.join("3"), "a file, not a version").unwrap();
        let models = scan(repo.path()).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].versions, vec![10], "latest 1 by default");
        assert!(models[0].config.is_ok());

        let all = format!("{IDENTITY}\nversion_policy: {{ all {{ }} }}");
        write(&model.join("config.pbtxt"), &all);
        assert_eq!(read_model("m", &model).versions, vec![1, 2, 10]);
        let latest = format!("{IDENTITY}\nversion_policy: {{ latest {{ num_versions: 2 }} }}");
        write(&model.join("config.pbtxt"), &latest);
        assert_eq!(read_model("m", &model).versions, vec![2, 10]);
        let specific = format!("{IDENTITY}\nversion_policy: {{ specific {{ versions: [1, 5] }} }}");
        write(&model.join("config.pbtxt"), &specific);
        assert_eq!(read_model("m", &model).versions, vec![1]);
    }

    #[test]
    fn unusable_models_carry_a_reason() {
        let repo = tempfile::tempdir().unwrap();
        write(&repo.path().join("noconfig/1/x"), "");
        write(
            &repo.path().join("bad/config.pbtxt"),
            "max_batch_size: -1 backend: \"identity\"",
        );
        std::fs::create_dir_all(repo.path().join("bad/1")).unwrap();
        write(&repo.path().join("noversion/config.pbtxt"), IDENTITY);
        write(
            &repo.path().join("wrongname/config.pbtxt"),
            &format!("name: \"other\" {IDENTITY}"),
        );
        std::fs::create_dir_all(repo.path().join("wrongname/1")).unwrap();
        write(
            &repo.path().join("garbled/config.pbtxt"),
            "input [ { name: ",
        );
        std::fs::create_dir_all(repo.path().join("garbled/1")).unwrap();
        let models = scan(repo.path()).unwrap();
        let reason = |n: &str| {
            models
                .iter()
                .find(|m| m.name == n)
                .unwrap()
                .config
                .clone()
                .unwrap_err()
        };
        assert!(
            reason("noconfig").contains("config.pbtxt"),
            "{}",
            reason("noconfig")
        );
        assert_eq!(
            reason("bad"),
            "'max_batch_size' must be non-negative value for bad"
        );
        assert!(reason("noversion").contains("at least one version"));
        assert!(reason("wrongname").contains("does not match"));
        assert!(
            reason("garbled").contains("failed to parse"),
            "{}",
            reason("garbled")
        );
        assert!(
            reason("garbled").contains("garbled/config.pbtxt"),
            "{}",
            reason("garbled")
        );
    }

    #[test]
    fn validation_messages() {
        let parse = |t: &str| config::parse_pbtxt(t, "c").unwrap();
        let mut c = parse(r#"name: "m" backend: "identity" input [ { name: "I" dims: [1] } ]"#);
        assert_eq!(
            validate(&c).unwrap_err(),
            "model input 'I' must specify 'data_type'"
        );
        c = parse(
            r#"name: "m" backend: "identity" input [ { name: "I" data_type: TYPE_FP32 dims: [4] reshape: { shape: [3] } } ]"#,
        );
        assert_eq!(
            validate(&c).unwrap_err(),
            "model input 'I' has different size for dims and reshape for m"
        );
        c = parse(r#"name: "m" input [ { name: "I" data_type: TYPE_FP32 dims: [4] } ]"#);
        assert!(validate(&c).unwrap_err().contains("must specify 'backend'"));
    }

    #[test]
    fn unimplemented_fields_are_refused_by_name() {
        let parse = |t: &str| config::parse_pbtxt(t, "c").unwrap();
        let base = r#"name: "m" backend: "identity" max_batch_size: 4
input [ { name: "I" data_type: TYPE_FP32 dims: [2] } ]
output [ { name: "O" data_type: TYPE_FP32 dims: [2] } ]
"#;
        let refused = [
            ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled"),
            (
                r#"batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "L" data_type: TYPE_INT32 source_input: "I" } ]"#,
                "batch_input",
            ),
            (r#"batch_output [ { target_name: "O" source_input: "I" } ]"#, "batch_output"),
            ("instance_group [ { count: 1 kind: KIND_CPU passive: true } ]", "instance_group.passive"),
            (
                "instance_group [ { count: 1 kind: KIND_CPU secondary_devices [ { kind: KIND_NVDLA device_id: 0 } ] } ]",
                "instance_group.secondary_devices",
            ),
            (r#"model_operations { op_library_filename: "libcustom.so" }"#, "model_operations"),
            (
                r#"model_repository_agents { agents [ { name: "checksum" } ] }"#,
                "model_repository_agents",
            ),
            (r#"cc_model_filenames { key: "8.0" value: "a100.onnx" }"#, "cc_model_filenames"),
            (r#"runtime: "model.py""#, "runtime"),
        ];
        for (extra, field) in refused {
            let c = parse(&format!("{base}{extra}"));
            let err = validate(&c).expect_err(extra);
            assert!(
                err.contains(&format!("config field '{field}' is not supported")),
                "{extra}: {err}"
            );
        }
        let ragged = parse(
            r#"name: "m" backend: "identity" input [ { name: "I" data_type: TYPE_FP32 dims: [-1] allow_ragged_batch: true } ]"#,
        );
        assert!(validate(&ragged)
            .unwrap_err()
            .contains("'input 'I' allow_ragged_batch'"));
        let shape = parse(
            r#"name: "m" backend: "identity" output [ { name: "O" data_type: TYPE_INT32 dims: [2] is_shape_tensor: true } ]"#,
        );
        assert!(validate(&shape)
            .unwrap_err()
            .contains("'output 'O' is_shape_tensor'"));
        let namespaced = parse(
            r#"name: "e" platform: "ensemble" ensemble_scheduling { step [ { model_name: "m" model_version: -1 model_namespace: "team" } ] }"#,
        );
        assert!(validate(&namespaced)
            .unwrap_err()
            .contains("ensemble_scheduling.step.model_namespace"));

        // Performance-only settings for other backends load and are ignored; fields set to
        // their defaults are not "set".
        let ignored = [
            "optimization { priority: PRIORITY_MAX cuda { graphs: true } input_pinned_memory { enable: false } }",
            r#"optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }"#,
            r#"instance_group [ { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 1 } ] priority: 2 } host_policy: "numa0" } ]"#,
            r#"metric_tags { key: "team" value: "fraud" }"#,
            "model_transaction_policy { decoupled: false }",
            "response_cache { enable: false }",
            "response_cache { enable: true }",
            "sequence_batching { max_sequence_idle_microseconds: 5000000 direct { } }",
        ];
        for extra in ignored {
            let c = parse(&format!("{base}{extra}"));
            assert_eq!(validate(&c), Ok(()), "{extra}");
        }
    }
}
