//! Model warm-up: batches run on every instance of a freshly loaded version before it serves,
//! so that the first client request does not pay for lazy initialisation, and a version that
//! cannot run fails its load instead of its first request. Warm-up calls the backends directly:
//! it neither waits in the queue nor counts in the statistics.
//!
//! The config's `model_warmup` entries are used when present (`zero_data`, `random_data`, or
//! `input_data_file` read from `<version>/warmup/<file>`); otherwise one batch of size 1 with
//! zeros (empty strings for BYTES) for every input, variable dimensions set to 1.

use std::path::Path;

use bytes::Bytes;
use nereid_protocol::inference::model_warmup::input::InputDataType;
use nereid_protocol::inference::ModelWarmup;
use nereid_protocol::{element_count, encode_bytes_elements, DataType, Error, Tensor};

use crate::model::TensorSpec;

/// One warm-up batch (inputs in config order) and how many times to run it.
pub struct WarmupRequest {
    pub name: String,
    pub inputs: Vec<Tensor>,
    pub count: u32,
}

/// The warm-up requests of a model version.
pub fn requests(
    warmups: &[ModelWarmup],
    inputs: &[TensorSpec],
    batching: bool,
    version_dir: &Path,
) -> Result<Vec<WarmupRequest>, Error> {
    if warmups.is_empty() {
        let tensors = inputs
            .iter()
            .filter(|spec| !spec.optional)
            .map(|spec| {
                let dims: Vec<i64> = spec
                    .dims
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d })
                    .collect();
                filled(
                    &spec.name,
                    spec.datatype,
                    with_batch(&dims, 1, batching),
                    Fill::Zero,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(vec![WarmupRequest {
            name: "default".into(),
            inputs: tensors,
            count: 1,
        }]);
    }
    warmups
        .iter()
        .map(|w| {
            if let Some(unknown) = w
                .inputs
                .keys()
                .find(|n| !inputs.iter().any(|s| &s.name == *n))
            {
                return Err(Error::invalid_arg(format!(
                    "warmup '{}': the model has no input '{unknown}'",
                    w.name
                )));
            }
            let mut tensors = Vec::with_capacity(w.inputs.len());
            for spec in inputs {
                let name = &spec.name;
                let Some(input) = w.inputs.get(name) else {
                    if spec.optional {
                        continue;
                    }
                    return Err(Error::invalid_arg(format!(
                        "warmup '{}' gives no data for input '{name}'",
                        w.name
                    )));
                };
                let datatype = DataType::from_config(input.data_type).ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "warmup '{}': input '{name}' has no valid data_type",
                        w.name
                    ))
                })?;
                let shape = with_batch(&input.dims, w.batch_size.max(1) as i64, batching);
                let fill = match &input.input_data_type {
                    Some(InputDataType::RandomData(true)) => Fill::Random,
                    Some(InputDataType::InputDataFile(file)) => {
                        let path = version_dir.join("warmup").join(file);
                        let data = std::fs::read(&path).map_err(|e| {
                            Error::invalid_arg(format!(
                                "warmup '{}': failed to read {}: {e}",
                                w.name,
                                path.display()
                            ))
                        })?;
                        Fill::File(Bytes::from(data))
                    }
                    _ => Fill::Zero,
                };
                tensors.push(filled(name, datatype, shape, fill)?);
            }
            Ok(WarmupRequest {
                name: w.name.clone(),
                inputs: tensors,
                count: w.count.max(1),
            })
        })
        .collect()
}

fn with_batch(dims: &[i64], batch: i64, batching: bool) -> Vec<i64> {
    let mut shape = Vec::with_capacity(dims.len() + 1);
    if batching {
        shape.push(batch);
    }
    shape.extend(dims);
    shape
}

enum Fill {
    Zero,
    Random,
    File(Bytes),
}

fn filled(name: &str, datatype: DataType, shape: Vec<i64>, fill: Fill) -> Result<Tensor, Error> {
    let count = element_count(name, &shape)?;
    let data = match (fill, datatype.element_size()) {
        (Fill::File(bytes), _) => bytes,
        (Fill::Zero, Some(size)) => Bytes::from(vec![0u8; count * size]),
        (Fill::Zero, None) => encode_bytes_elements(std::iter::repeat_n("", count)),
        (Fill::Random, None) => {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            encode_bytes_elements((0..count).map(|_| format!("{:x}", next(&mut state))))
        }
        (Fill::Random, Some(size)) => {
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut out = Vec::with_capacity(count * size);
            for _ in 0..count {
                // Values in [0, 1) for floats and small integers otherwise: valid for every
                // datatype, never NaN.
                let unit = (next(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                match datatype {
                    DataType::Fp32 => out.extend((unit as f32).to_le_bytes()),
                    DataType::Fp64 => out.extend(unit.to_le_bytes()),
                    DataType::Fp16 => out.extend(half::f16::from_f64(unit).to_le_bytes()),
                    DataType::Bf16 => out.extend(half::bf16::from_f64(unit).to_le_bytes()),
                    DataType::Bool => out.push(u8::from(unit >= 0.5)),
                    _ => {
                        let mut bytes = vec![0u8; size];
                        bytes[0] = (unit * 100.0) as u8;
                        out.extend(bytes);
                    }
                }
            }
            Bytes::from(out)
        }
    };
    let tensor = Tensor::new(name, datatype, shape, data);
    tensor
        .check_byte_size("warm-up")
        .map_err(|e| Error::invalid_arg(format!("warmup input '{name}': {}", e.message)))?;
    Ok(tensor)
}

/// splitmix64: deterministic filler for `random_data`.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
