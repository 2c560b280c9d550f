//! Input tensors for the load, built once before any request is sent: the model's metadata gives
//! input names, datatypes and shapes (any KServe v2 server serves it), the config fills in
//! variable dimensions and says where values come from.
//!
//! Shape rules: `--shape NAME=...` is the full wire shape; otherwise the metadata shape with a
//! leading -1 replaced by the batch size. Any other -1 needs `--shape`.

use std::collections::HashMap;

use bytes::Bytes;
use nereid_client::npy::read_npy;
use nereid_client::tensor_json::JsonTensor;
use nereid_client::{DataType, InferRequest, ModelMetadataResponse, Tensor};
use nereid_protocol::{element_count, encode_bytes_elements, shape_string};
use rand::{Rng, SeedableRng};

use crate::config::{Format, InputData, LoadConfig};
use crate::LoadError;

fn config_error<T>(message: String) -> Result<T, LoadError> {
    Err(LoadError::Config(message))
}

/// The wire shape of an input: an explicit shape, else the metadata's with the batch filled in.
pub fn resolve_shape(
    name: &str,
    declared: &[i64],
    explicit: Option<&Vec<i64>>,
    batch_size: i64,
) -> Result<Vec<i64>, LoadError> {
    if let Some(shape) = explicit {
        return Ok(shape.clone());
    }
    let mut shape = declared.to_vec();
    if shape.first() == Some(&-1) {
        shape[0] = batch_size;
    }
    if shape.iter().any(|d| *d < 0) {
        return config_error(format!(
            "input '{name}' has variable dimensions {}: give its full shape with --shape {name}=D0,D1,...",
            shape_string(declared)
        ));
    }
    Ok(shape)
}

/// One request per data entry (random and zero data give one entry), in the order they are
/// cycled through.
pub fn build_requests(
    config: &LoadConfig,
    metadata: &ModelMetadataResponse,
) -> Result<Vec<InferRequest>, LoadError> {
    if metadata.inputs.is_empty() {
        return config_error(format!(
            "model '{}' has no inputs in its metadata",
            config.model
        ));
    }
    let mut specs = Vec::with_capacity(metadata.inputs.len());
    for input in &metadata.inputs {
        let datatype = DataType::from_wire(&input.datatype).ok_or_else(|| {
            LoadError::Config(format!(
                "input '{}' has unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        specs.push((input.name.as_str(), datatype, input.shape.as_slice()));
    }
    for name in config.shapes.keys() {
        if !specs.iter().any(|(n, _, _)| n == name) {
            return config_error(format!(
                "--shape names '{name}', which is not an input of the model"
            ));
        }
    }
    let entries: Vec<Vec<Tensor>> = match &config.input_data {
        InputData::Random | InputData::Zero => {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(config.seed);
            let zero = config.input_data == InputData::Zero;
            let mut tensors = Vec::new();
            for &(name, datatype, declared) in &specs {
                let shape =
                    resolve_shape(name, declared, config.shapes.get(name), config.batch_size)?;
                let count =
                    element_count(name, &shape).map_err(|e| LoadError::Config(e.message))?;
                let data = if zero {
                    zero_data(datatype, count)
                } else {
                    random_data(&mut rng, datatype, count, config.string_length)
                };
                tensors.push(Tensor::new(name, datatype, shape, data));
            }
            vec![tensors]
        }
        InputData::File(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| LoadError::Config(format!("cannot read {}: {e}", path.display())))?;
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
            {
                let [(name, datatype, _)] = specs[..] else {
                    return config_error(format!(
                        "a .npy input file needs a model with one input; '{}' has {}",
                        config.model,
                        specs.len()
                    ));
                };
                let mut tensor = read_npy(&bytes, name)
                    .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))?;
                if tensor.datatype != datatype {
                    return config_error(format!(
                        "{} holds {} but input '{name}' is {datatype}",
                        path.display(),
                        tensor.datatype
                    ));
                }
                if let Some(shape) = config.shapes.get(name) {
                    tensor.shape = shape.clone();
                    nereid_client::check_tensor(&tensor).map_err(LoadError::Config)?;
                }
                vec![vec![tensor]]
            } else {
                file_entries(config, &specs, &bytes)
                    .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))?
            }
        }
    };
    let binary_outputs = config.format == Format::Binary;
    Ok(entries
        .into_iter()
        .map(|inputs| InferRequest {
            inputs,
            binary_data_output: binary_outputs,
            ..Default::default()
        })
        .collect())
}

/// Entries of a JSON input file; each must give every input.
fn file_entries(
    config: &LoadConfig,
    specs: &[(&str, DataType, &[i64])],
    bytes: &[u8],
) -> Result<Vec<Vec<Tensor>>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let entries = match value.get("data") {
        Some(serde_json::Value::Array(entries)) => entries.clone(),
        Some(_) => return Err("\"data\" must be an array of entries".into()),
        None => vec![value],
    };
    if entries.is_empty() {
        return Err("no data entries".into());
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let object = entry
            .as_object()
            .ok_or_else(|| format!("entry {i} is not an object of input name -> values"))?;
        let mut tensors = Vec::with_capacity(specs.len());
        for &(name, datatype, declared) in specs {
            let value = object
                .get(name)
                .ok_or_else(|| format!("entry {i} has no values for input '{name}'"))?;
            let parsed =
                JsonTensor::parse(value).map_err(|e| format!("entry {i}, input '{name}': {e}"))?;
            // Stated shape, then --shape, then the declared shape if the count fits, then nesting.
            let shape = match (&parsed.shape, config.shapes.get(name)) {
                (Some(shape), _) | (None, Some(shape)) => shape.clone(),
                (None, None) => match resolve_shape(name, declared, None, config.batch_size) {
                    Ok(shape) if element_count(name, &shape).ok() == Some(parsed.len()) => shape,
                    _ => parsed.nested_shape.clone(),
                },
            };
            tensors.push(
                parsed
                    .to_tensor(name, datatype, shape)
                    .map_err(|e| format!("entry {i}, input '{name}': {e}"))?,
            );
        }
        out.push(tensors);
    }
    Ok(out)
}

fn zero_data(datatype: DataType, count: usize) -> Bytes {
    match datatype.element_size() {
        Some(size) => Bytes::from(vec![0u8; count * size]),
        None => encode_bytes_elements(std::iter::repeat_n("", count)),
    }
}

/// Random values that every model can take: floats in [0, 1), integers in [0, 100) (small,
/// so that index-like inputs stay in range), random booleans, printable ASCII strings.
fn random_data(
    rng: &mut impl Rng,
    datatype: DataType,
    count: usize,
    string_length: usize,
) -> Bytes {
    let mut out = Vec::with_capacity(count * datatype.element_size().unwrap_or(4 + string_length));
    for _ in 0..count {
        let small: u8 = rng.random_range(0..100);
        match datatype {
            DataType::Bool => out.push(u8::from(rng.random_bool(0.5))),
            DataType::Uint8 | DataType::Int8 => out.push(small),
            DataType::Uint16 | DataType::Int16 => out.extend(u16::from(small).to_le_bytes()),
            DataType::Uint32 | DataType::Int32 => out.extend(u32::from(small).to_le_bytes()),
            DataType::Uint64 | DataType::Int64 => out.extend(u64::from(small).to_le_bytes()),
            DataType::Fp16 => out.extend(half::f16::from_f32(rng.random()).to_le_bytes()),
            DataType::Bf16 => out.extend(half::bf16::from_f32(rng.random()).to_le_bytes()),
            DataType::Fp32 => out.extend(rng.random::<f32>().to_le_bytes()),
            DataType::Fp64 => out.extend(rng.random::<f64>().to_le_bytes()),
            DataType::Bytes => {
                out.extend((string_length as u32).to_le_bytes());
                out.extend((0..string_length).map(|_| rng.random_range(b'a'..=b'z')));
            }
        }
    }
    Bytes::from(out)
}

/// Parses `NAME=D0,D1` flags.
pub fn parse_shape_flags(flags: &[String]) -> Result<HashMap<String, Vec<i64>>, String> {
    let mut out = HashMap::new();
    for flag in flags {
        let (name, dims) = flag
            .split_once('=')
            .ok_or_else(|| format!("--shape '{flag}' is not NAME=D0,D1,..."))?;
        let dims = nereid_client::cli::parse_dims(dims).map_err(|e| e.to_string())?;
        out.insert(name.to_string(), dims);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_client::Protocol;
    use nereid_protocol::inference::model_metadata_response::TensorMetadata;

    fn metadata(inputs: &[(&str, &str, &[i64])]) -> ModelMetadataResponse {
        ModelMetadataResponse {
            name: "m".into(),
            inputs: inputs
                .iter()
                .map(|(n, d, s)| TensorMetadata {
                    name: n.to_string(),
                    datatype: d.to_string(),
                    shape: s.to_vec(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn config() -> LoadConfig {
        LoadConfig::new("127.0.0.1:1", Protocol::Http, "m")
    }

    #[test]
    fn shapes_fill_the_batch_and_need_help_elsewhere() {
        assert_eq!(resolve_shape("x", &[-1, 16], None, 4).unwrap(), vec![4, 16]);
        assert_eq!(resolve_shape("x", &[3], None, 4).unwrap(), vec![3]);
        assert_eq!(
            resolve_shape("x", &[-1, -1], Some(&vec![1, 5]), 4).unwrap(),
            vec![1, 5]
        );
        let err = resolve_shape("x", &[-1, -1], None, 1).unwrap_err();
        assert!(err.to_string().contains("--shape x="), "{err}");
    }

    #[test]
    fn random_and_zero_inputs_of_every_type() {
        let md = metadata(&[
            ("F", "FP32", &[-1, 16]),
            ("H", "FP16", &[2]),
            ("S", "BYTES", &[-1, -1]),
            ("B", "BOOL", &[3]),
        ]);
        let mut c = config();
        c.shapes.insert("S".into(), vec![1, 2]);
        c.format = Format::Json;
        for data in [InputData::Random, InputData::Zero] {
            c.input_data = data;
            let requests = build_requests(&c, &md).unwrap();
            assert_eq!(requests.len(), 1);
            assert!(!requests[0].binary_data_output);
            for t in &requests[0].inputs {
                nereid_client::check_tensor(t).unwrap();
            }
            assert_eq!(requests[0].inputs[0].shape, vec![1, 16]);
        }
        c.input_data = InputData::Random;
        let floats = build_requests(&c, &md).unwrap()[0].inputs[0].to_vec::<f32>();
        assert!(floats.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(floats.iter().any(|v| *v != floats[0]), "values vary");
        c.shapes.insert("nope".into(), vec![1]);
        assert!(build_requests(&c, &md).is_err());
    }

    #[test]
    fn json_files_in_perf_analyzer_form() {
        let dir = std::env::temp_dir().join(format!("nereid-loadtest-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let md = metadata(&[("INPUT0", "FP32", &[-1, 2])]);
        let mut c = config();
        let file = dir.join("data.json");
        std::fs::write(
            &file,
            r#"{"data": [{"INPUT0": [1, 2]}, {"INPUT0": {"content": [3, 4, 5, 6], "shape": [2, 2]}}]}"#,
        )
        .unwrap();
        c.input_data = InputData::File(file.clone());
        let requests = build_requests(&c, &md).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].inputs[0].shape, vec![1, 2]);
        assert_eq!(
            requests[1].inputs[0].to_vec::<f32>(),
            vec![3.0, 4.0, 5.0, 6.0]
        );
        std::fs::write(&file, r#"{"INPUT0": [[1, 2], [3, 4]]}"#).unwrap();
        assert_eq!(
            build_requests(&c, &md).unwrap()[0].inputs[0].shape,
            vec![2, 2]
        );
        std::fs::write(&file, r#"{"data": [{"OTHER": [1, 2]}]}"#).unwrap();
        assert!(build_requests(&c, &md).is_err());

        let npy = dir.join("x.npy");
        std::fs::write(
            &npy,
            nereid_client::npy::write_npy(&Tensor::from_f32("x", vec![1, 2], &[7.0, 8.0])).unwrap(),
        )
        .unwrap();
        c.input_data = InputData::File(npy);
        assert_eq!(
            build_requests(&c, &md).unwrap()[0].inputs[0].to_vec::<f32>(),
            vec![7.0, 8.0]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
