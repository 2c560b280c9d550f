//! `onnxruntime`: ONNX models (`platform: "onnxruntime_onnx"`) run by ONNX Runtime itself, with
//! Triton's semantics.
//!
//! ONNX Runtime is not linked: its shared library is loaded when the first ONNX model loads,
//! from `NEREID_ONNXRUNTIME_LIB` (or ONNX Runtime's own `ORT_DYLIB_PATH`), else
//! `libonnxruntime.so` on the loader's search path; the `onnxruntime` wheel from PyPI ships one
//! (`onnxruntime/capi/libonnxruntime.so.*`). Without it the server runs and serves every other
//! model; an ONNX model then fails to load, saying how to install the library.
//!
//! Data flow: the repository scan reads the graph's boundary ([`graph`]) and completes or checks
//! the config ([`autocomplete`]) -> each instance opens its own session, with ONNX Runtime's
//! thread and optimisation settings from the config (Triton's parameter names) -> `execute` turns
//! the batch's tensors (config input order) into ONNX Runtime values, runs the session and
//! returns the config's outputs, in order, as protocol tensors.

mod graph;

use std::path::PathBuf;
use std::sync::OnceLock;

use nereid_protocol::inference::{ModelConfig, ModelDynamicBatching, ModelInput, ModelOutput};
use nereid_protocol::{bytes_elements, encode_bytes_elements, DataType, Error, Tensor};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor};

pub use graph::{GraphIo, GraphTensor};

use super::{Backend, LoadContext, Placement};

/// The model file of a version unless `default_model_filename` names another.
pub const DEFAULT_MODEL_FILE: &str = "model.onnx";

/// `max_batch_size` that auto-complete gives a model whose inputs and outputs all have a
/// dynamic first dimension (Triton's default).
pub const DEFAULT_MAX_BATCH_SIZE: i32 = 4;

/// The environment variable that names ONNX Runtime's shared library.
pub const LIBRARY_ENV: &str = "NEREID_ONNXRUNTIME_LIB";

/// Whether `config` is served by this backend.
pub fn is_onnx(config: &ModelConfig) -> bool {
    config.backend == "onnxruntime"
        || (config.backend.is_empty() && config.platform == "onnxruntime_onnx")
}

/// The model file's name inside a version folder.
pub fn model_file(config: &ModelConfig) -> &str {
    if config.default_model_filename.is_empty() {
        DEFAULT_MODEL_FILE
    } else {
        &config.default_model_filename
    }
}

/// The config of an ONNX model that has no `config.pbtxt`: completed from the graph later.
pub fn bare_config(name: &str) -> ModelConfig {
    ModelConfig {
        name: name.to_string(),
        backend: "onnxruntime".into(),
        platform: "onnxruntime_onnx".into(),
        ..Default::default()
    }
}

/// Completes `config` from the graph the way Triton does (missing inputs, outputs and
/// `max_batch_size`), and checks what the config states against the graph: every input the
/// graph needs is declared, with its datatype and a shape the graph accepts; every declared
/// output exists. Errors name the tensor.
pub fn autocomplete(config: &mut ModelConfig, io: &GraphIo) -> Result<(), String> {
    let m = config.name.clone();
    if config.backend.is_empty() {
        config.backend = "onnxruntime".into();
    }
    if config.platform.is_empty() {
        config.platform = "onnxruntime_onnx".into();
    }
    let dynamic_first = |t: &GraphTensor| {
        t.shape
            .as_ref()
            .is_none_or(|s| s.first().is_some_and(|d| *d == -1))
    };
    let batchable = io.inputs.iter().chain(&io.outputs).all(dynamic_first);
    if config.max_batch_size == 0
        && config.input.is_empty()
        && config.output.is_empty()
        && batchable
    {
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE;
        if config.scheduling_choice.is_none() {
            config.scheduling_choice = Some(
                nereid_protocol::inference::model_config::SchedulingChoice::DynamicBatching(
                    ModelDynamicBatching::default(),
                ),
            );
        }
    }
    let batching = config.max_batch_size > 0;
    if batching {
        if let Some(t) = io
            .inputs
            .iter()
            .chain(&io.outputs)
            .find(|t| !dynamic_first(t))
        {
            return Err(format!(
                "model '{m}' has max_batch_size {}, but the first dimension of tensor '{}' is fixed (shape {}); batching needs it dynamic (-1), or set max_batch_size: 0",
                config.max_batch_size,
                t.name,
                shape_text(t.shape.as_deref().unwrap_or_default())
            ));
        }
    }
    let own_dims = |t: &GraphTensor| -> Vec<i64> {
        let shape = t.shape.clone().unwrap_or_else(|| vec![-1]);
        if batching {
            shape[1.min(shape.len())..].to_vec()
        } else {
            shape
        }
    };
    if config.input.is_empty() {
        config.input = io
            .inputs
            .iter()
            .map(|t| ModelInput {
                name: t.name.clone(),
                data_type: config_type(t.datatype),
                dims: own_dims(t),
                ..Default::default()
            })
            .collect();
    } else {
        let declared = config.input.iter().map(|i| Declared {
            name: &i.name,
            data_type: i.data_type,
            shape: i.reshape.as_ref().map_or(&i.dims, |r| &r.shape),
        });
        check_declared(&m, "input", declared, &io.inputs, batching)?;
        // The sequence batcher supplies a stateful model's control and state inputs.
        let supplied: Vec<String> = crate::sequence::SequenceSpec::from_config(config)
            .ok()
            .flatten()
            .map(|spec| {
                spec.extra_inputs()
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(missing) = io
            .inputs
            .iter()
            .find(|t| !config.input.iter().any(|i| i.name == t.name) && !supplied.contains(&t.name))
        {
            return Err(format!(
                "model '{m}': the ONNX graph needs input '{}', which the configuration does not declare",
                missing.name
            ));
        }
    }
    if config.output.is_empty() {
        config.output = io
            .outputs
            .iter()
            .map(|t| ModelOutput {
                name: t.name.clone(),
                data_type: config_type(t.datatype),
                dims: own_dims(t),
                ..Default::default()
            })
            .collect();
    } else {
        let declared = config.output.iter().map(|o| Declared {
            name: &o.name,
            data_type: o.data_type,
            shape: o.reshape.as_ref().map_or(&o.dims, |r| &r.shape),
        });
        check_declared(&m, "output", declared, &io.outputs, batching)?;
    }
    Ok(())
}

/// A tensor as the configuration declares it (its reshape, if any, is what the model sees).
struct Declared<'a> {
    name: &'a str,
    data_type: i32,
    shape: &'a [i64],
}

/// Each declared tensor exists in the graph, with its datatype and a shape it accepts.
fn check_declared<'a>(
    m: &str,
    kind: &str,
    declared: impl Iterator<Item = Declared<'a>>,
    graph: &[GraphTensor],
    batching: bool,
) -> Result<(), String> {
    for tensor in declared {
        let found = graph.iter().find(|t| t.name == tensor.name).ok_or_else(|| {
            format!(
                "model '{m}': the configuration declares {kind} '{}', but the ONNX graph's {kind}s are {}",
                tensor.name,
                names(graph)
            )
        })?;
        check_tensor(m, kind, tensor.data_type, tensor.shape, found, batching)?;
    }
    Ok(())
}

fn names(tensors: &[GraphTensor]) -> String {
    let quoted: Vec<String> = tensors.iter().map(|t| format!("'{}'", t.name)).collect();
    format!("[{}]", quoted.join(", "))
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn config_type(datatype: DataType) -> i32 {
    use nereid_protocol::inference::DataType as C;
    let c = match datatype {
        DataType::Bool => C::TypeBool,
        DataType::Uint8 => C::TypeUint8,
        DataType::Uint16 => C::TypeUint16,
        DataType::Uint32 => C::TypeUint32,
        DataType::Uint64 => C::TypeUint64,
        DataType::Int8 => C::TypeInt8,
        DataType::Int16 => C::TypeInt16,
        DataType::Int32 => C::TypeInt32,
        DataType::Int64 => C::TypeInt64,
        DataType::Fp16 => C::TypeFp16,
        DataType::Bf16 => C::TypeBf16,
        DataType::Fp32 => C::TypeFp32,
        DataType::Fp64 => C::TypeFp64,
        DataType::Bytes => C::TypeString,
    };
    c as i32
}

/// A declared tensor against the graph's: same datatype, and a full shape (with the batch
/// dimension when batching) of the graph's rank whose fixed dimensions are the graph's.
fn check_tensor(
    m: &str,
    kind: &str,
    data_type: i32,
    dims: &[i64],
    graph: &GraphTensor,
    batching: bool,
) -> Result<(), String> {
    let name = &graph.name;
    let declared = DataType::from_config(data_type);
    if declared != Some(graph.datatype) {
        let declared = declared.map_or_else(|| "no valid datatype".to_string(), |d| d.to_string());
        return Err(format!(
            "model '{m}', {kind} '{name}': the ONNX graph's datatype is {}, the configuration's {declared}",
            graph.datatype
        ));
    }
    let Some(shape) = &graph.shape else {
        return Ok(());
    };
    let full: Vec<i64> = if batching {
        std::iter::once(-1).chain(dims.iter().copied()).collect()
    } else {
        dims.to_vec()
    };
    let batch_note = if batching {
        " (the first is the batch dimension, since max_batch_size > 0)"
    } else {
        ""
    };
    let fits = full.len() == shape.len()
        && full
            .iter()
            .zip(shape)
            .all(|(declared, graph)| *graph == -1 || declared == graph);
    if !fits {
        return Err(format!(
            "model '{m}', {kind} '{name}': the ONNX graph's shape is {}, the configuration's {}{batch_note}",
            shape_text(shape),
            shape_text(&full)
        ));
    }
    Ok(())
}

/// The ONNX Runtime environment, created with the shared library on first use. A failure is
/// kept: installing the library takes a restart.
fn environment() -> Result<&'static Environment, Error> {
    static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let library = std::env::var_os(LIBRARY_ENV)
                .or_else(|| std::env::var_os("ORT_DYLIB_PATH"))
                .map_or_else(|| PathBuf::from("libonnxruntime.so"), PathBuf::from);
            let builder = ort::init_from(&library).map_err(|e| {
                format!(
                    "ONNX Runtime could not be loaded from {} ({e}); install it (for example `pip install onnxruntime`) and set {LIBRARY_ENV} to its library (onnxruntime/capi/libonnxruntime.so.* in the wheel), then restart the server",
                    library.display()
                )
            })?;
            builder
                .with_name("nereid")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("ONNX Runtime failed to start: {e}"))
        })
        .as_ref()
        .map_err(|e| Error::invalid_arg(e.clone()))
}

/// One instance: its own ONNX Runtime session.
pub struct OnnxBackend {
    session: Session,
    inputs: Vec<(String, DataType)>,
    outputs: Vec<(String, DataType)>,
    model: String,
}

impl OnnxBackend {
    pub fn new(ctx: &LoadContext, placement: Placement) -> Result<Self, Error> {
        let config = &ctx.config;
        let m = &config.name;
        let invalid = |msg: String| Error::invalid_arg(format!("model '{m}': {msg}"));
        let path = ctx.version_dir.join(model_file(config));
        if !path.is_file() {
            return Err(invalid(format!("{} does not exist", path.display())));
        }
        let env = environment()?;
        let parameter = |key: &str| -> Result<Option<usize>, Error> {
            ctx.parameter(key)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        invalid(format!(
                            "parameter '{key}' must be a non-negative integer, got '{v}'"
                        ))
                    })
                })
                .transpose()
        };
        let ort_err = |what: &str| {
            let what = what.to_string();
            move |e: ort::Error| invalid(format!("{what}: {e}"))
        };
        let builder_err = |what: &str| {
            let what = what.to_string();
            move |e: ort::Error<ort::session::builder::SessionBuilder>| {
                invalid(format!("{what}: {e}"))
            }
        };
        let mut builder = Session::builder(env).map_err(ort_err("ONNX Runtime session"))?;
        if let Some(n) = parameter("intra_op_thread_count")? {
            builder = builder
                .with_intra_threads(n)
                .map_err(builder_err("intra_op_thread_count"))?;
        }
        if let Some(n) = parameter("inter_op_thread_count")? {
            builder = builder
                .with_inter_threads(n)
                .map_err(builder_err("inter_op_thread_count"))?;
        }
        if let Some(mode) = parameter("execution_mode")? {
            // Triton's values: 0 sequential, 1 parallel.
            builder = builder
                .with_parallel_execution(mode == 1)
                .map_err(builder_err("execution_mode"))?;
        }
        builder = builder
            .with_optimization_level(optimization_level(config))
            .map_err(builder_err("graph optimization level"))?;
        builder = place(builder, placement, m)?;
        let session = builder
            .commit_from_file(&path)
            .map_err(|e| invalid(format!("ONNX Runtime cannot load {}: {e}", path.display())))?;
        // The session is the authority on the graph's boundary (the scan read the file itself).
        for input in &config.input {
            if !session.inputs().iter().any(|i| i.name() == input.name) {
                return Err(invalid(format!(
                    "ONNX Runtime's session has no input '{}'",
                    input.name
                )));
            }
        }
        for output in &config.output {
            if !session.outputs().iter().any(|o| o.name() == output.name) {
                return Err(invalid(format!(
                    "ONNX Runtime's session has no output '{}'",
                    output.name
                )));
            }
        }
        let typed = |name: &str, data_type: i32| {
            DataType::from_config(data_type)
                .map(|dt| (name.to_string(), dt))
                .ok_or_else(|| invalid(format!("tensor '{name}' has no valid datatype")))
        };
        let mut inputs: Vec<(String, DataType)> = config
            .input
            .iter()
            .map(|i| typed(&i.name, i.data_type))
            .collect::<Result<_, _>>()?;
        let mut outputs: Vec<(String, DataType)> = config
            .output
            .iter()
            .map(|o| typed(&o.name, o.data_type))
            .collect::<Result<_, _>>()?;
        // A stateful model also takes its control and state inputs and gives its state
        // outputs, after the config's own (the sequence batcher adds them in that order).
        if let Some(spec) =
            crate::sequence::SequenceSpec::from_config(config).map_err(Error::invalid_arg)?
        {
            for (name, datatype) in spec.extra_inputs() {
                if !session.inputs().iter().any(|i| i.name() == name) {
                    return Err(invalid(format!(
                        "the sequence batcher's input '{name}' is not an input of the ONNX graph"
                    )));
                }
                inputs.push((name, datatype));
            }
            for (name, datatype) in spec.extra_outputs() {
                if !session.outputs().iter().any(|o| o.name() == name) {
                    return Err(invalid(format!(
                        "the state output '{name}' is not an output of the ONNX graph"
                    )));
                }
                outputs.push((name, datatype));
            }
        }
        Ok(OnnxBackend {
            inputs,
            outputs,
            session,
            model: m.clone(),
        })
    }
}

/// Triton's `optimization { graph { level } }`: -1 basic, 1 extended, anything else (0, the
/// default) every optimisation.
fn optimization_level(config: &ModelConfig) -> GraphOptimizationLevel {
    match config
        .optimization
        .as_ref()
        .and_then(|o| o.graph.as_ref())
        .map(|g| g.level)
    {
        Some(-1) => GraphOptimizationLevel::Level1,
        Some(1) => GraphOptimizationLevel::Level2,
        _ => GraphOptimizationLevel::All,
    }
}

/// `KIND_GPU` on the CUDA execution provider (the load fails without it); `KIND_AUTO` on it
/// when ONNX Runtime has it and a GPU is usable, else on the CPU; `KIND_CPU` on the CPU.
fn place(
    builder: ort::session::builder::SessionBuilder,
    placement: Placement,
    model: &str,
) -> Result<ort::session::builder::SessionBuilder, Error> {
    let (gpu, required) = match placement {
        Placement::Cpu => return Ok(builder),
        Placement::Gpu(gpu) => (gpu, true),
        Placement::Auto(gpu) => (gpu, false),
    };
    let cuda = ort::ep::CUDA::default().with_device_id(gpu as i32);
    let provider = if required {
        cuda.build().error_on_failure()
    } else {
        cuda.build()
    };
    builder
        .with_execution_providers([provider])
        .map_err(|e| {
            Error::invalid_arg(format!(
                "model '{model}' asks for {} on GPU {gpu}, but ONNX Runtime's CUDA execution provider is not usable: {e}",
                if required { "KIND_GPU" } else { "KIND_AUTO" }
            ))
        })
}

macro_rules! numeric_types {
    ($m:ident) => {
        $m! {
            Uint8 => u8, Uint16 => u16, Uint32 => u32, Uint64 => u64,
            Int8 => i8, Int16 => i16, Int32 => i32, Int64 => i64,
            Fp16 => half::f16, Bf16 => half::bf16, Fp32 => f32, Fp64 => f64
        }
    };
}

/// A protocol tensor as an ONNX Runtime value of `datatype`.
fn to_value(tensor: &Tensor, datatype: DataType) -> Result<DynValue, ort::Error> {
    let shape: Vec<i64> = tensor.shape.clone();
    macro_rules! convert {
        ($($variant:ident => $ty:ty),*) => {
            match datatype {
                $(DataType::$variant => {
                    let values: Vec<$ty> = tensor.to_vec::<$ty>();
                    Ok(OrtTensor::from_array((shape, values))?.into_dyn())
                })*
                DataType::Bool => {
                    let values: Vec<bool> = tensor.data.iter().map(|b| *b != 0).collect();
                    Ok(OrtTensor::from_array((shape, values))?.into_dyn())
                }
                DataType::Bytes => {
                    // ONNX strings are UTF-8 text; other bytes are refused, not altered.
                    let strings: Vec<String> = bytes_elements(&tensor.data)
                        .map(|e| {
                            let bytes = e.map_err(|()| ort::Error::new("malformed BYTES tensor"))?;
                            String::from_utf8(bytes.to_vec()).map_err(|_| {
                                ort::Error::new(
                                    "a BYTES element is not UTF-8 text, which ONNX string tensors hold",
                                )
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(OrtTensor::from_string_array((shape, &*strings))?.into_dyn())
                }
            }
        };
    }
    numeric_types!(convert)
}

/// An ONNX Runtime output as a protocol tensor named `name`.
fn from_value(value: &DynValue, name: &str, datatype: DataType) -> Result<Tensor, ort::Error> {
    macro_rules! convert {
        ($($variant:ident => $ty:ty),*) => {
            match datatype {
                $(DataType::$variant => {
                    let (shape, values) = value.try_extract_tensor::<$ty>()?;
                    Ok(Tensor::new(
                        name,
                        datatype,
                        shape.to_vec(),
                        bytes::Bytes::copy_from_slice(bytemuck::cast_slice(values)),
                    ))
                })*
                DataType::Bool => {
                    let (shape, values) = value.try_extract_tensor::<bool>()?;
                    let data: Vec<u8> = values.iter().map(|b| u8::from(*b)).collect();
                    Ok(Tensor::new(name, datatype, shape.to_vec(), data.into()))
                }
                DataType::Bytes => {
                    let (shape, strings) = value.try_extract_strings()?;
                    Ok(Tensor::new(
                        name,
                        datatype,
                        shape.to_vec(),
                        encode_bytes_elements(strings.iter().map(String::as_bytes)),
                    ))
                }
            }
        };
    }
    numeric_types!(convert)
}

impl Backend for OnnxBackend {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let m = &self.model;
        // Triton's wording: "onnx runtime error <ONNX Runtime's status code>: <its message>".
        let failed = |what: &str, e: ort::Error| {
            let code = e.code() as i32;
            match what {
                "" => Error::internal(format!("onnx runtime error {code}: {}", e.message())),
                _ => Error::internal(format!(
                    "onnx runtime error {code}: model '{m}', {what}: {}",
                    e.message()
                )),
            }
        };
        let mut feed: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (tensor, (name, datatype)) in inputs.iter().zip(&self.inputs) {
            let value = to_value(tensor, *datatype).map_err(|e| {
                Error::invalid_arg(format!("model '{m}', input '{name}': {}", e.message()))
            })?;
            feed.push((name.clone(), value));
        }
        let outputs = self.session.run(feed).map_err(|e| failed("", e))?;
        self.outputs
            .iter()
            .map(|(name, datatype)| {
                let value = outputs.get(name.as_str()).ok_or_else(|| {
                    Error::internal(format!(
                        "onnx runtime error: model '{m}': no output '{name}' after inference"
                    ))
                })?;
                from_value(value, name, *datatype)
                    .map_err(|e| failed(&format!("output '{name}'"), e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::graph::tests::model_bytes;
    use super::*;

    fn parse(text: &str) -> ModelConfig {
        nereid_protocol::config::parse_pbtxt(text, "config.pbtxt").expect("config parses")
    }

    fn io() -> GraphIo {
        GraphIo::decode(&model_bytes(
            &[("X", 1, &[None, Some(3)]), ("S", 8, &[None])],
            &[("Y", 1, &[None, Some(3)])],
        ))
        .expect("decodes")
    }

    #[test]
    fn a_bare_config_is_completed_like_triton_does() {
        let mut config = bare_config("m");
        autocomplete(&mut config, &io()).expect("completes");
        assert_eq!(config.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert!(config.dynamic_batching().is_some());
        let inputs: Vec<(&str, Option<DataType>, &[i64])> = config
            .input
            .iter()
            .map(|i| {
                (
                    i.name.as_str(),
                    DataType::from_config(i.data_type),
                    &i.dims[..],
                )
            })
            .collect();
        assert_eq!(
            inputs,
            [
                ("X", Some(DataType::Fp32), &[3][..]),
                ("S", Some(DataType::Bytes), &[][..])
            ]
        );
        assert_eq!(config.output[0].dims, [3]);

        // A fixed first dimension: no batching, full shapes.
        let fixed = GraphIo::decode(&model_bytes(
            &[("X", 1, &[Some(2), Some(3)])],
            &[("Y", 1, &[Some(2)])],
        ))
        .expect("decodes");
        let mut config = bare_config("m");
        autocomplete(&mut config, &fixed).expect("completes");
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.input[0].dims, [2, 3]);
    }

    #[test]
    fn a_config_that_contradicts_the_graph_names_the_tensor() {
        let check = |text: &str| {
            let mut config = parse(text);
            autocomplete(&mut config, &io()).map(|()| config)
        };
        let ok = check(
            "name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 \
             input [{ name: \"X\" data_type: TYPE_FP32 dims: [3] }, \
                    { name: \"S\" data_type: TYPE_STRING dims: [] }] \
             output [{ name: \"Y\" data_type: TYPE_FP32 dims: [3] }]",
        )
        .expect("consistent");
        assert_eq!(ok.max_batch_size, 8);
        let err = |text: &str| check(text).expect_err(text);
        let e = err("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 \
             input [{ name: \"X\" data_type: TYPE_INT64 dims: [3] }, { name: \"S\" data_type: TYPE_STRING dims: [] }]");
        assert!(
            e.contains("input 'X': the ONNX graph's datatype is FP32, the configuration's INT64"),
            "{e}"
        );
        let e = err("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 \
             input [{ name: \"X\" data_type: TYPE_FP32 dims: [4] }, { name: \"S\" data_type: TYPE_STRING dims: [] }]");
        assert!(
            e.contains("input 'X': the ONNX graph's shape is [-1,3], the configuration's [-1,4]"),
            "{e}"
        );
        let e = err("name: \"m\" backend: \"onnxruntime\" \
             input [{ name: \"X\" data_type: TYPE_FP32 dims: [3] }, { name: \"S\" data_type: TYPE_STRING dims: [-1] }]");
        assert!(
            e.contains("shape is [-1,3], the configuration's [3]"),
            "{e}"
        );
        let e = err("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 \
             input [{ name: \"INPUT\" data_type: TYPE_FP32 dims: [3] }]");
        assert!(
            e.contains("declares input 'INPUT', but the ONNX graph's inputs are ['X', 'S']"),
            "{e}"
        );
        let e = err("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 \
             input [{ name: \"X\" data_type: TYPE_FP32 dims: [3] }]");
        assert!(e.contains("needs input 'S'"), "{e}");
        let e = err("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 \
             output [{ name: \"Z\" data_type: TYPE_FP32 dims: [3] }]");
        assert!(e.contains("declares output 'Z'"), "{e}");
    }
}
