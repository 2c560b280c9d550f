//! Dense model architectures shared by training and serving.
//!
//! A model is a stack of dense layers stored in one `model.safetensors` file (all F32):
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `normalize.mean`, `normalize.std` | `[in_0]` | optional input standardisation `(x - mean) / std`, shipped inside the model so that clients send raw features |
//! | `layers.{i}.weight` | `[out_i, in_i]` | dense layer `i` (PyTorch's `nn.Linear` layout), `i = 0..n`, contiguous |
//! | `layers.{i}.bias` | `[out_i]` | its bias |
//!
//! Layer sizes are read from the shapes; the architecture is not in the file but in the model's
//! `config.pbtxt` `parameters` ([`ArchitectureSpec::from_parameters`]), so one file format serves
//! every architecture. Loading checks the whole contract once, so that [`DenseModel::forward`] only
//! has to check the input it is given.
//!
//! A [`DenseModel`] is immutable after loading; `forward` takes `&self` and may be called from any
//! thread (candle tensors are reference counted and read-only here).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Config parameter that names the architecture.
pub const PARAM_ARCHITECTURE: &str = "nereid.architecture";
/// Config parameter that names the hidden activation of an `mlp`.
pub const PARAM_ACTIVATION: &str = "nereid.activation";
/// Config parameter that names the output activation of an `mlp`.
pub const PARAM_OUTPUT_ACTIVATION: &str = "nereid.output_activation";

/// Whether a `config.pbtxt` parameter describes the architecture (and so belongs to a version's
/// weights, not to how the model is served).
pub fn is_architecture_parameter(key: &str) -> bool {
    matches!(
        key,
        PARAM_ARCHITECTURE | PARAM_ACTIVATION | PARAM_OUTPUT_ACTIVATION
    )
}

/// Name of the input-mean tensor.
pub const NORMALIZE_MEAN: &str = "normalize.mean";
/// Name of the input-standard-deviation tensor.
pub const NORMALIZE_STD: &str = "normalize.std";

/// Name of the weight tensor of layer `i`.
pub fn layer_weight_name(i: usize) -> String {
    format!("layers.{i}.weight")
}

/// Name of the bias tensor of layer `i`.
pub fn layer_bias_name(i: usize) -> String {
    format!("layers.{i}.bias")
}

/// How the layers are put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// One layer, raw outputs (linear regression).
    Linear,
    /// One layer followed by an element-wise sigmoid (binary / multi-label logistic regression).
    Logistic,
    /// One layer followed by a softmax over the last dimension (multinomial logistic regression).
    Softmax,
    /// Any number of layers with a hidden activation between them and an output activation.
    Mlp,
}

/// Activation between the layers of an [`Architecture::Mlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// The exact (erf) GELU, as PyTorch's `nn.GELU()` default.
    Gelu,
    Tanh,
    Sigmoid,
}

/// Activation applied to the last layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputActivation {
    None,
    Softmax,
    Sigmoid,
}

/// String forms accepted in `config.pbtxt`, one table per enum so that parsing, printing and the
/// "accepted values" of error messages cannot drift apart.
const ARCHITECTURES: &[(&str, Architecture)] = &[
    ("linear", Architecture::Linear),
    ("logistic", Architecture::Logistic),
    ("softmax", Architecture::Softmax),
    ("mlp", Architecture::Mlp),
];
const ACTIVATIONS: &[(&str, Activation)] = &[
    ("relu", Activation::Relu),
    ("gelu", Activation::Gelu),
    ("tanh", Activation::Tanh),
    ("sigmoid", Activation::Sigmoid),
];
const OUTPUT_ACTIVATIONS: &[(&str, OutputActivation)] = &[
    ("none", OutputActivation::None),
    ("softmax", OutputActivation::Softmax),
    ("sigmoid", OutputActivation::Sigmoid),
];

fn name_of<T: PartialEq + Copy>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map(|(name, _)| *name)
        .expect("every enum variant is in its name table. This is a bug.")
}

fn accepted<T>(table: &[(&'static str, T)]) -> String {
    table
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse<T: Copy>(table: &[(&'static str, T)], key: &str, value: &str) -> Result<T, ModelError> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| ModelError::InvalidParameter {
            key: key.to_string(),
            value: value.to_string(),
            accepted: accepted(table),
        })
}

impl Architecture {
    /// The name used in `config.pbtxt`.
    pub fn as_str(self) -> &'static str {
        name_of(ARCHITECTURES, self)
    }

    /// The output activation this single-layer architecture implies; `None` for `mlp`, whose
    /// output activation is a parameter of its own.
    fn implied_output(self) -> Option<OutputActivation> {
        match self {
            Architecture::Linear => Some(OutputActivation::None),
            Architecture::Logistic => Some(OutputActivation::Sigmoid),
            Architecture::Softmax => Some(OutputActivation::Softmax),
            Architecture::Mlp => None,
        }
    }
}

impl Activation {
    /// The name used in `config.pbtxt`.
    pub fn as_str(self) -> &'static str {
        name_of(ACTIVATIONS, self)
    }

    /// Applies the activation element-wise (differentiable, so training uses it too).
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
        }
    }
}

impl OutputActivation {
    /// The name used in `config.pbtxt`.
    pub fn as_str(self) -> &'static str {
        name_of(OUTPUT_ACTIVATIONS, self)
    }

    /// Applies the activation to `[batch, out]` outputs.
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            OutputActivation::None => Ok(x.clone()),
            OutputActivation::Softmax => candle_nn::ops::softmax_last_dim(x),
            OutputActivation::Sigmoid => candle_nn::ops::sigmoid(x),
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for OutputActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The architecture of a model, as named by its config parameters.
///
/// For the single-layer architectures `output` is the one the architecture implies, and
/// `activation` is unused (there is no hidden layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchitectureSpec {
    pub architecture: Architecture,
    pub activation: Activation,
    pub output: OutputActivation,
}

impl ArchitectureSpec {
    /// A multi-layer perceptron.
    pub fn mlp(activation: Activation, output: OutputActivation) -> Self {
        ArchitectureSpec {
            architecture: Architecture::Mlp,
            activation,
            output,
        }
    }

    /// A single-layer architecture (`linear`, `logistic` or `softmax`) with its implied output
    /// activation; for `mlp` this is `mlp` with ReLU and no output activation.
    pub fn single_layer(architecture: Architecture) -> Self {
        ArchitectureSpec {
            architecture,
            activation: Activation::Relu,
            output: architecture
                .implied_output()
                .unwrap_or(OutputActivation::None),
        }
    }

    /// Reads the spec from config parameters; `param` looks up a parameter by key.
    ///
    /// `nereid.architecture` is required. `nereid.activation` defaults to `relu` and
    /// `nereid.output_activation` to `none`. A single-layer architecture fixes its output activation,
    /// so an `nereid.output_activation` that contradicts it is an error rather than silently ignored.
    /// Unknown values give [`ModelError::InvalidParameter`] naming the key, the value and the
    /// accepted values.
    pub fn from_parameters(param: impl Fn(&str) -> Option<String>) -> Result<Self, ModelError> {
        let architecture = match param(PARAM_ARCHITECTURE) {
            Some(value) => parse(ARCHITECTURES, PARAM_ARCHITECTURE, value.trim())?,
            None => {
                return Err(ModelError::MissingParameter {
                    key: PARAM_ARCHITECTURE.to_string(),
                    accepted: accepted(ARCHITECTURES),
                })
            }
        };
        let activation = match param(PARAM_ACTIVATION) {
            Some(value) => parse(ACTIVATIONS, PARAM_ACTIVATION, value.trim())?,
            None => Activation::Relu,
        };
        let requested_output = match param(PARAM_OUTPUT_ACTIVATION) {
            Some(value) => Some(parse(
                OUTPUT_ACTIVATIONS,
                PARAM_OUTPUT_ACTIVATION,
                value.trim(),
            )?),
            None => None,
        };
        let output = match (architecture.implied_output(), requested_output) {
            (None, requested) => requested.unwrap_or(OutputActivation::None),
            (Some(implied), None) => implied,
            (Some(implied), Some(requested)) if implied == requested => implied,
            (Some(implied), Some(requested)) => {
                return Err(ModelError::ConflictingParameter {
                    key: PARAM_OUTPUT_ACTIVATION.to_string(),
                    value: requested.as_str().to_string(),
                    architecture,
                    implied: implied.as_str(),
                })
            }
        };
        Ok(ArchitectureSpec {
            architecture,
            activation,
            output,
        })
    }

    /// The `(key, value)` config parameters that [`ArchitectureSpec::from_parameters`] reads back
    /// into this spec.
    pub fn to_parameters(&self) -> Vec<(&'static str, &'static str)> {
        match self.architecture {
            Architecture::Mlp => vec![
                (PARAM_ARCHITECTURE, self.architecture.as_str()),
                (PARAM_ACTIVATION, self.activation.as_str()),
                (PARAM_OUTPUT_ACTIVATION, self.output.as_str()),
            ],
            _ => vec![(PARAM_ARCHITECTURE, self.architecture.as_str())],
        }
    }
}

/// Why a model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing config parameter `{key}` (accepted values: {accepted})")]
    MissingParameter { key: String, accepted: String },

    #[error("config parameter `{key}` has unknown value `{value}` (accepted values: {accepted})")]
    InvalidParameter {
        key: String,
        value: String,
        accepted: String,
    },

    #[error(
        "config parameter `{key}` is `{value}`, but architecture `{architecture}` always uses \
         output activation `{implied}` (use architecture `mlp` to choose the output activation)"
    )]
    ConflictingParameter {
        key: String,
        value: String,
        architecture: Architecture,
        implied: &'static str,
    },

    #[error("cannot read model file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("model file {} is not a valid safetensors file: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    #[error("model file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ModelError>,
    },

    #[error("missing tensor `{name}`")]
    MissingTensor { name: String },

    #[error(
        "unexpected tensor `{name}` (expected `layers.{{i}}.weight`, `layers.{{i}}.bias`, \
         `normalize.mean`, `normalize.std`)"
    )]
    UnexpectedTensor { name: String },

    #[error("tensor `{name}` has dtype {dtype:?}, expected F32")]
    DType { name: String, dtype: DType },

    #[error("tensor `{name}` has shape {actual:?}, expected {expected}")]
    Shape {
        name: String,
        actual: Vec<usize>,
        expected: String,
    },

    #[error("tensor `{name}` is on a different device than `{first}`")]
    Device { name: String, first: String },

    #[error("architecture `{architecture}` needs exactly one layer, the file has {layers}")]
    LayerCount {
        architecture: Architecture,
        layers: usize,
    },

    #[error(
        "tensor `{name}` element {index} is {value}; a standard deviation must be finite and > 0"
    )]
    InvalidStd {
        name: String,
        index: usize,
        value: f32,
    },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One dense layer, with the weight kept transposed so that `forward` is a plain `x @ w_t + b`
/// on contiguous memory.
#[derive(Debug, Clone)]
struct Dense {
    /// `[in, out]`, contiguous.
    weight_t: Tensor,
    /// `[out]`.
    bias: Tensor,
}

/// Input standardisation `(x - mean) / std`.
#[derive(Debug, Clone)]
struct Normalize {
    /// `[in_0]`.
    mean: Tensor,
    /// `[in_0]`, every element finite and > 0 (checked at load).
    std: Tensor,
}

/// A loaded dense model: optional input standardisation, then the layers of its architecture.
#[derive(Debug, Clone)]
pub struct DenseModel {
    spec: ArchitectureSpec,
    normalize: Option<Normalize>,
    layers: Vec<Dense>,
    input_features: usize,
    output_features: usize,
}

impl DenseModel {
    /// Loads `model.safetensors` at `path` onto `device` and checks it against `spec`.
    ///
    /// The file is read whole (these models are small) rather than memory-mapped, so a file
    /// replaced or truncated while loaded cannot fault the process later.
    pub fn load(path: &Path, spec: ArchitectureSpec, device: &Device) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_safetensors(&bytes, path, spec, device)
    }

    /// [`DenseModel::load`] from the file's bytes (`path` names them in errors).
    pub fn from_safetensors(
        bytes: &[u8],
        path: &Path,
        spec: ArchitectureSpec,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let tensors = candle_core::safetensors::load_buffer(bytes, device).map_err(|source| {
            ModelError::Format {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Self::from_tensors(tensors, spec).map_err(|source| ModelError::InFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Builds a model from named tensors (see the module docs for the naming contract).
    pub fn from_tensors(
        mut tensors: HashMap<String, Tensor>,
        spec: ArchitectureSpec,
    ) -> Result<Self, ModelError> {
        // Sorted so that errors about several tensors always name the same one first.
        let mut layer_tensors: BTreeMap<usize, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        names.sort();
        for name in &names {
            if name == NORMALIZE_MEAN || name == NORMALIZE_STD {
                continue;
            }
            let Some((index, is_weight)) = parse_layer_name(name) else {
                return Err(ModelError::UnexpectedTensor { name: name.clone() });
            };
            let tensor = tensors
                .remove(name)
                .expect("name was taken from the map's keys. This is a bug.");
            let entry = layer_tensors.entry(index).or_default();
            if is_weight {
                entry.0 = Some(tensor);
            } else {
                entry.1 = Some(tensor);
            }
        }

        // Layers must be numbered 0..n without gaps: a gap means a layer went missing, and the loop
        // below reports the first missing one. Saturating, and capacity from the tensors actually
        // present, because the largest index comes from the file.
        let layer_count = layer_tensors
            .keys()
            .next_back()
            .map_or(0, |last| last.saturating_add(1));
        if layer_count == 0 {
            return Err(ModelError::MissingTensor {
                name: layer_weight_name(0),
            });
        }

        let mut device: Option<(String, Device)> = None;
        let mut check_device = |name: &str, tensor: &Tensor| -> Result<(), ModelError> {
            match &device {
                None => {
                    device = Some((name.to_string(), tensor.device().clone()));
                    Ok(())
                }
                Some((first, dev)) if !dev.same_device(tensor.device()) => {
                    Err(ModelError::Device {
                        name: name.to_string(),
                        first: first.clone(),
                    })
                }
                Some(_) => Ok(()),
            }
        };

        let mut layers = Vec::with_capacity(layer_tensors.len());
        let mut previous_out: Option<usize> = None;
        for i in 0..layer_count {
            let weight_name = layer_weight_name(i);
            let bias_name = layer_bias_name(i);
            let (weight, bias) = layer_tensors.remove(&i).unwrap_or((None, None));
            let weight = weight.ok_or_else(|| ModelError::MissingTensor {
                name: weight_name.clone(),
            })?;
            let bias = bias.ok_or_else(|| ModelError::MissingTensor {
                name: bias_name.clone(),
            })?;
            check_f32(&weight_name, &weight)?;
            check_f32(&bias_name, &bias)?;
            check_device(&weight_name, &weight)?;
            check_device(&bias_name, &bias)?;

            let (out_features, in_features) = match weight.dims() {
                &[out, inp] if out > 0 && inp > 0 => (out, inp),
                dims => {
                    return Err(ModelError::Shape {
                        name: weight_name,
                        actual: dims.to_vec(),
                        expected: "[out, in] with out, in > 0".to_string(),
                    })
                }
            };
            if let Some(previous_out) = previous_out {
                if in_features != previous_out {
                    return Err(ModelError::Shape {
                        name: weight_name,
                        actual: weight.dims().to_vec(),
                        expected: format!(
                            "[_, {previous_out}] because `{}` has {previous_out} outputs",
                            layer_weight_name(i - 1)
                        ),
                    });
                }
            }
            if bias.dims() != [out_features] {
                return Err(ModelError::Shape {
                    name: bias_name,
                    actual: bias.dims().to_vec(),
                    expected: format!("[{out_features}] to match `{weight_name}`"),
                });
            }
            layers.push(Dense {
                weight_t: weight.t()?.contiguous()?,
                bias,
            });
            previous_out = Some(out_features);
        }
        if spec.architecture != Architecture::Mlp && layers.len() != 1 {
            return Err(ModelError::LayerCount {
                architecture: spec.architecture,
                layers: layers.len(),
            });
        }
        let input_features = layers
            .first()
            .map(|l| l.weight_t.dims()[0])
            .expect("layer_count >= 1 was checked above. This is a bug.");
        let output_features =
            previous_out.expect("layer_count >= 1 was checked above. This is a bug.");

        let normalize = match (
            tensors.remove(NORMALIZE_MEAN),
            tensors.remove(NORMALIZE_STD),
        ) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ModelError::MissingTensor {
                    name: NORMALIZE_STD.to_string(),
                })
            }
            (None, Some(_)) => {
                return Err(ModelError::MissingTensor {
                    name: NORMALIZE_MEAN.to_string(),
                })
            }
            (Some(mean), Some(std)) => {
                for (name, t) in [(NORMALIZE_MEAN, &mean), (NORMALIZE_STD, &std)] {
                    check_f32(name, t)?;
                    check_device(name, t)?;
                    if t.dims() != [input_features] {
                        return Err(ModelError::Shape {
                            name: name.to_string(),
                            actual: t.dims().to_vec(),
                            expected: format!(
                                "[{input_features}] because `layers.0.weight` has \
                                 {input_features} inputs"
                            ),
                        });
                    }
                }
                // A zero or NaN std would turn every request into inf/NaN; refuse the file instead.
                for (index, value) in std.to_vec1::<f32>()?.into_iter().enumerate() {
                    if !(value.is_finite() && value > 0.0) {
                        return Err(ModelError::InvalidStd {
                            name: NORMALIZE_STD.to_string(),
                            index,
                            value,
                        });
                    }
                }
                Some(Normalize { mean, std })
            }
        };

        Ok(DenseModel {
            spec,
            normalize,
            layers,
            input_features,
            output_features,
        })
    }

    /// Runs the model: `[batch, in_0]` F32 in, `[batch, out_last]` F32 out.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let logits = self.logits(x)?;
        self.spec.output.apply(&logits)
    }

    /// Runs the model without its output activation (the raw scores a loss function wants).
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match x.dims() {
            &[_, features] if features == self.input_features => {}
            dims => candle_core::bail!(
                "model input must have shape [batch, {}], got {dims:?}",
                self.input_features
            ),
        }
        if x.dtype() != DType::F32 {
            candle_core::bail!("model input must be F32, got {:?}", x.dtype());
        }
        let mut h = match &self.normalize {
            Some(n) => x.broadcast_sub(&n.mean)?.broadcast_div(&n.std)?,
            None => x.clone(),
        };
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = h.matmul(&layer.weight_t)?.broadcast_add(&layer.bias)?;
            if i < last {
                h = self.spec.activation.apply(&h)?;
            }
        }
        Ok(h)
    }

    /// The architecture this model runs.
    pub fn spec(&self) -> ArchitectureSpec {
        self.spec
    }

    /// Number of input features (`in_0`).
    pub fn input_features(&self) -> usize {
        self.input_features
    }

    /// Number of outputs of the last layer.
    pub fn output_features(&self) -> usize {
        self.output_features
    }

    /// Number of dense layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Whether the model standardises its input.
    pub fn normalizes_input(&self) -> bool {
        self.normalize.is_some()
    }

    /// The same model as an ONNX graph (opset 17, FP32 `[batch, in_0]` named `input` in,
    /// `[batch, out_last]` named `output` out), so that it runs on ONNX Runtime, Triton's ONNX
    /// backend and any ONNX tool: `Sub`/`Div` for the standardisation, one `Gemm` per layer,
    /// the hidden activation between them (GELU spelled out with `Erf`, as the exact GELU is),
    /// and the output activation.
    pub fn to_onnx(&self, input: &str, output: &str) -> candle_core::Result<Vec<u8>> {
        use nereid_protocol::onnx::{
            AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetId, TensorProto,
            ValueInfo, ELEM_FLOAT,
        };
        use prost::Message as _;

        let mut initializers = Vec::new();
        let mut nodes = Vec::new();
        let initializer = |name: &str, tensor: &Tensor| -> candle_core::Result<TensorProto> {
            let dims: Vec<i64> = tensor.dims().iter().map(|&d| d as i64).collect();
            let values = tensor.flatten_all()?.to_vec1::<f32>()?;
            Ok(TensorProto::f32(name, &dims, &values))
        };
        let node = |op: &str, inputs: &[&str], out: &str| NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: out.to_string(),
            op_type: op.to_string(),
            ..Default::default()
        };
        let mut h = input.to_string();
        if let Some(n) = &self.normalize {
            initializers.push(initializer("normalize.mean", &n.mean)?);
            initializers.push(initializer("normalize.std", &n.std)?);
            nodes.push(node("Sub", &[&h, "normalize.mean"], "centered"));
            nodes.push(node("Div", &["centered", "normalize.std"], "standardized"));
            h = "standardized".into();
        }
        let gelu_constants = [
            ("gelu.sqrt2", std::f32::consts::SQRT_2),
            ("gelu.one", 1.0),
            ("gelu.half", 0.5),
        ];
        if self.spec.activation == Activation::Gelu && self.layers.len() > 1 {
            for (name, value) in gelu_constants {
                initializers.push(TensorProto::f32(name, &[], &[value]));
            }
        }
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            let (w, b) = (format!("layers.{i}.weight_t"), format!("layers.{i}.bias"));
            initializers.push(initializer(&w, &layer.weight_t)?);
            initializers.push(initializer(&b, &layer.bias)?);
            let z = if i == last && self.spec.output == OutputActivation::None {
                output.to_string()
            } else {
                format!("layers.{i}.out")
            };
            nodes.push(node("Gemm", &[&h, &w, &b], &z));
            h = z;
            if i < last {
                let a = format!("layers.{i}.activated");
                match self.spec.activation {
                    Activation::Relu => nodes.push(node("Relu", &[&h], &a)),
                    Activation::Tanh => nodes.push(node("Tanh", &[&h], &a)),
                    Activation::Sigmoid => nodes.push(node("Sigmoid", &[&h], &a)),
                    Activation::Gelu => {
                        // x * 0.5 * (1 + erf(x / sqrt 2))
                        let t = |s: &str| format!("layers.{i}.gelu.{s}");
                        nodes.push(node("Div", &[&h, "gelu.sqrt2"], &t("scaled")));
                        nodes.push(node("Erf", &[&t("scaled")], &t("erf")));
                        nodes.push(node("Add", &[&t("erf"), "gelu.one"], &t("plus_one")));
                        nodes.push(node("Mul", &[&h, &t("plus_one")], &t("product")));
                        nodes.push(node("Mul", &[&t("product"), "gelu.half"], &a));
                    }
                }
                h = a;
            }
        }
        match self.spec.output {
            OutputActivation::None => {}
            OutputActivation::Softmax => {
                let mut softmax = node("Softmax", &[&h], output);
                softmax.attribute.push(AttributeProto::int("axis", -1));
                nodes.push(softmax);
            }
            OutputActivation::Sigmoid => nodes.push(node("Sigmoid", &[&h], output)),
        }
        let features = |n: usize| [None, Some(n as i64)];
        let model = ModelProto {
            ir_version: 8,
            producer_name: "nereid".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                node: nodes,
                name: "nereid_dense".into(),
                initializer: initializers,
                input: vec![ValueInfo::tensor(
                    input,
                    ELEM_FLOAT,
                    &features(self.input_features),
                    "batch",
                )],
                output: vec![ValueInfo::tensor(
                    output,
                    ELEM_FLOAT,
                    &features(self.output_features),
                    "batch",
                )],
            }),
            opset_import: vec![OperatorSetId {
                domain: String::new(),
                version: 17,
            }],
        };
        Ok(model.encode_to_vec())
    }
}

/// `layers.{i}.weight` -> `(i, true)`, `layers.{i}.bias` -> `(i, false)`. Indices are plain
/// decimal without leading zeros so that each layer has exactly one spelling.
fn parse_layer_name(name: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix("layers.")?;
    let (index, kind) = rest.split_once('.')?;
    let is_weight = match kind {
        "weight" => true,
        "bias" => false,
        _ => return None,
    };
    if index.is_empty()
        || !index.bytes().all(|b| b.is_ascii_digit())
        || (index.len() > 1 && index.starts_with('0'))
    {
        return None;
    }
    Some((index.parse().ok()?, is_weight))
}

fn check_f32(name: &str, tensor: &Tensor) -> Result<(), ModelError> {
    if tensor.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(ModelError::DType {
            name: name.to_string(),
            dtype: tensor.dtype(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    fn t(data: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).expect("test tensor")
    }

    /// A 2 -> 3 -> 2 MLP with normalisation, small enough to compute by hand.
    fn tiny_tensors() -> HashMap<String, Tensor> {
        HashMap::from([
            (NORMALIZE_MEAN.to_string(), t(&[1.0, 2.0], &[2])),
            (NORMALIZE_STD.to_string(), t(&[2.0, 0.5], &[2])),
            (
                "layers.0.weight".to_string(),
                t(&[1.0, 0.0, 0.0, 1.0, 1.0, -1.0], &[3, 2]),
            ),
            ("layers.0.bias".to_string(), t(&[0.0, 0.5, -1.0], &[3])),
            (
                "layers.1.weight".to_string(),
                t(&[1.0, 1.0, 1.0, -1.0, 2.0, 0.0], &[2, 3]),
            ),
            ("layers.1.bias".to_string(), t(&[0.0, 1.0], &[2])),
        ])
    }

    fn relu_mlp(output: OutputActivation) -> ArchitectureSpec {
        ArchitectureSpec::mlp(Activation::Relu, output)
    }

    #[test]
    fn spec_parses_good_values() {
        let spec = ArchitectureSpec::from_parameters(params(&[
            ("nereid.architecture", "mlp"),
            ("nereid.activation", "gelu"),
            ("nereid.output_activation", "softmax"),
        ]))
        .expect("valid spec");
        assert_eq!(
            spec,
            ArchitectureSpec::mlp(Activation::Gelu, OutputActivation::Softmax)
        );

        let spec = ArchitectureSpec::from_parameters(params(&[("nereid.architecture", "mlp")]))
            .expect("defaults");
        assert_eq!(spec, relu_mlp(OutputActivation::None));

        for (name, output) in [
            ("linear", OutputActivation::None),
            ("logistic", OutputActivation::Sigmoid),
            ("softmax", OutputActivation::Softmax),
        ] {
            let spec = ArchitectureSpec::from_parameters(params(&[("nereid.architecture", name)]))
                .expect("single layer");
            assert_eq!(spec.output, output, "{name}");
            assert_eq!(spec.architecture.as_str(), name);
        }

        // Agreeing with the implied output activation is fine.
        let spec = ArchitectureSpec::from_parameters(params(&[
            ("nereid.architecture", "softmax"),
            ("nereid.output_activation", "softmax"),
        ]))
        .expect("agreeing output");
        assert_eq!(spec.architecture, Architecture::Softmax);
    }

    #[test]
    fn spec_round_trips_through_parameters() {
        for spec in [
            relu_mlp(OutputActivation::Sigmoid),
            ArchitectureSpec::mlp(Activation::Tanh, OutputActivation::None),
            ArchitectureSpec::single_layer(Architecture::Logistic),
        ] {
            let pairs: Vec<(&str, &str)> = spec.to_parameters();
            let back = ArchitectureSpec::from_parameters(params(&pairs)).expect("round trip");
            assert_eq!(back.architecture, spec.architecture);
            assert_eq!(back.output, spec.output);
        }
    }

    #[test]
    fn spec_rejects_bad_values() {
        let err = ArchitectureSpec::from_parameters(params(&[("nereid.architecture", "cnn")]))
            .expect_err("unknown architecture");
        let msg = err.to_string();
        assert!(
            msg.contains("nereid.architecture") && msg.contains("`cnn`"),
            "{msg}"
        );
        assert!(msg.contains("linear, logistic, softmax, mlp"), "{msg}");

        let err = ArchitectureSpec::from_parameters(params(&[
            ("nereid.architecture", "mlp"),
            ("nereid.activation", "swish"),
        ]))
        .expect_err("unknown activation");
        let msg = err.to_string();
        assert!(
            msg.contains("nereid.activation") && msg.contains("swish"),
            "{msg}"
        );
        assert!(msg.contains("relu, gelu, tanh, sigmoid"), "{msg}");

        let err = ArchitectureSpec::from_parameters(params(&[
            ("nereid.architecture", "mlp"),
            ("nereid.output_activation", "log_softmax"),
        ]))
        .expect_err("unknown output activation");
        assert!(err.to_string().contains("none, softmax, sigmoid"), "{err}");

        let err = ArchitectureSpec::from_parameters(params(&[])).expect_err("missing");
        assert!(matches!(err, ModelError::MissingParameter { .. }), "{err}");

        let err = ArchitectureSpec::from_parameters(params(&[
            ("nereid.architecture", "logistic"),
            ("nereid.output_activation", "softmax"),
        ]))
        .expect_err("conflict");
        assert!(
            matches!(err, ModelError::ConflictingParameter { .. }),
            "{err}"
        );

        // Case matters: config values are identifiers, not prose.
        assert!(
            ArchitectureSpec::from_parameters(params(&[("nereid.architecture", "MLP")])).is_err()
        );
    }

    #[test]
    fn forward_matches_hand_computation() {
        let model = DenseModel::from_tensors(tiny_tensors(), relu_mlp(OutputActivation::None))
            .expect("tiny model");
        assert_eq!(model.input_features(), 2);
        assert_eq!(model.output_features(), 2);
        assert_eq!(model.layer_count(), 2);
        assert!(model.normalizes_input());

        // x = [3, 1]: z = ((3-1)/2, (1-2)/0.5) = (1, -2)
        // h = relu([1, -2 + 0.5, 1 + 2 - 1]) = relu([1, -1.5, 2]) = [1, 0, 2]
        // y = [1 + 0 + 2 + 0, -1 + 0 + 0 + 1] = [3, 0]
        // x = [1, 2]: z = (0, 0); h = relu([0, 0.5, -1]) = [0, 0.5, 0]; y = [0.5, 2 * 0.5 + 1]
        let x = t(&[3.0, 1.0, 1.0, 2.0], &[2, 2]);
        let y = model
            .forward(&x)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("vec");
        assert_eq!(y, vec![vec![3.0, 0.0], vec![0.5, 2.0]]);

        let model = DenseModel::from_tensors(tiny_tensors(), relu_mlp(OutputActivation::Softmax))
            .expect("tiny model");
        let y = model
            .forward(&x)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("vec");
        let e3 = 3f32.exp();
        let expected0 = [e3 / (e3 + 1.0), 1.0 / (e3 + 1.0)];
        for (got, want) in y[0].iter().zip(expected0) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }

        let model = DenseModel::from_tensors(tiny_tensors(), relu_mlp(OutputActivation::Sigmoid))
            .expect("tiny model");
        let y = model
            .forward(&x)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("vec");
        assert!((y[1][1] - 1.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn forward_single_layer_architectures() {
        let tensors = HashMap::from([
            ("layers.0.weight".to_string(), t(&[2.0, -1.0], &[1, 2])),
            ("layers.0.bias".to_string(), t(&[0.5], &[1])),
        ]);
        let x = t(&[1.0, 1.0], &[1, 2]);
        let linear = DenseModel::from_tensors(
            tensors.clone(),
            ArchitectureSpec::single_layer(Architecture::Linear),
        )
        .expect("linear");
        assert!(!linear.normalizes_input());
        assert_eq!(
            linear
                .forward(&x)
                .expect("fwd")
                .to_vec2::<f32>()
                .expect("v"),
            [[1.5]]
        );
        let logistic = DenseModel::from_tensors(
            tensors,
            ArchitectureSpec::single_layer(Architecture::Logistic),
        )
        .expect("logistic");
        let y = logistic
            .forward(&x)
            .expect("fwd")
            .to_vec2::<f32>()
            .expect("v");
        assert!((y[0][0] - 1.0 / (1.0 + (-1.5f32).exp())).abs() < 1e-6);
    }

    #[test]
    fn forward_rejects_wrong_input_shape() {
        let model = DenseModel::from_tensors(tiny_tensors(), relu_mlp(OutputActivation::None))
            .expect("tiny model");
        let err = model
            .forward(&t(&[1.0, 2.0, 3.0], &[1, 3]))
            .expect_err("bad width");
        assert!(err.to_string().contains("[batch, 2]"), "{err}");
        assert!(model.forward(&t(&[1.0, 2.0], &[2])).is_err());
    }

    #[test]
    fn load_errors_name_the_tensor() {
        let spec = relu_mlp(OutputActivation::None);

        let mut missing = tiny_tensors();
        missing.remove("layers.0.bias");
        let err = DenseModel::from_tensors(missing, spec).expect_err("missing bias");
        assert!(err.to_string().contains("layers.0.bias"), "{err}");

        // A gap in the numbering is a missing layer.
        let mut gap = tiny_tensors();
        let w = gap.remove("layers.1.weight").expect("w");
        let b = gap.remove("layers.1.bias").expect("b");
        gap.insert("layers.2.weight".into(), w);
        gap.insert("layers.2.bias".into(), b);
        let err = DenseModel::from_tensors(gap, spec).expect_err("gap");
        assert!(err.to_string().contains("layers.1.weight"), "{err}");

        let mut chain = tiny_tensors();
        chain.insert("layers.1.weight".into(), t(&[1.0; 8], &[2, 4]));
        let err = DenseModel::from_tensors(chain, spec).expect_err("chain mismatch");
        let msg = err.to_string();
        assert!(
            msg.contains("layers.1.weight") && msg.contains("layers.0.weight"),
            "{msg}"
        );

        let mut bias = tiny_tensors();
        bias.insert("layers.1.bias".into(), t(&[1.0; 3], &[3]));
        let err = DenseModel::from_tensors(bias, spec).expect_err("bias mismatch");
        assert!(err.to_string().contains("layers.1.bias"), "{err}");

        let mut mean = tiny_tensors();
        mean.insert(NORMALIZE_MEAN.into(), t(&[1.0; 3], &[3]));
        let err = DenseModel::from_tensors(mean, spec).expect_err("mean mismatch");
        assert!(err.to_string().contains("normalize.mean"), "{err}");

        let mut half = tiny_tensors();
        half.remove(NORMALIZE_STD);
        let err = DenseModel::from_tensors(half, spec).expect_err("std missing");
        assert!(err.to_string().contains("normalize.std"), "{err}");

        let mut zero_std = tiny_tensors();
        zero_std.insert(NORMALIZE_STD.into(), t(&[1.0, 0.0], &[2]));
        let err = DenseModel::from_tensors(zero_std, spec).expect_err("zero std");
        assert!(
            matches!(err, ModelError::InvalidStd { index: 1, .. }),
            "{err}"
        );

        let mut extra = tiny_tensors();
        extra.insert("layers.01.weight".into(), t(&[1.0], &[1]));
        let err = DenseModel::from_tensors(extra, spec).expect_err("unexpected");
        assert!(err.to_string().contains("layers.01.weight"), "{err}");

        let mut f64_weight = tiny_tensors();
        f64_weight.insert(
            "layers.0.bias".into(),
            Tensor::zeros(3, DType::F64, &Device::Cpu).expect("zeros"),
        );
        let err = DenseModel::from_tensors(f64_weight, spec).expect_err("dtype");
        assert!(matches!(err, ModelError::DType { .. }), "{err}");

        let err = DenseModel::from_tensors(
            tiny_tensors(),
            ArchitectureSpec::single_layer(Architecture::Softmax),
        )
        .expect_err("two layers for softmax");
        assert!(
            matches!(err, ModelError::LayerCount { layers: 2, .. }),
            "{err}"
        );

        // An absurd index from the file is a missing layer, not an allocation failure.
        let mut huge = tiny_tensors();
        huge.insert(format!("layers.{}.weight", usize::MAX), t(&[1.0], &[1, 1]));
        let err = DenseModel::from_tensors(huge, spec).expect_err("huge index");
        assert!(err.to_string().contains("layers.2.weight"), "{err}");

        let err = DenseModel::from_tensors(HashMap::new(), spec).expect_err("empty");
        assert!(err.to_string().contains("layers.0.weight"), "{err}");
    }

    #[test]
    fn load_from_file_and_corrupt_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&tiny_tensors(), &path).expect("save");
        let spec = relu_mlp(OutputActivation::None);
        let model = DenseModel::load(&path, spec, &Device::Cpu).expect("load");
        assert_eq!(model.input_features(), 2);

        let bytes = std::fs::read(&path).expect("read");
        // Every truncation must be an error, never a panic.
        for len in [0, 4, 8, 9, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..len]).expect("write");
            let err = DenseModel::load(&path, spec, &Device::Cpu).expect_err("truncated");
            assert!(matches!(err, ModelError::Format { .. }), "{len}: {err}");
            assert!(err.to_string().contains("model.safetensors"), "{err}");
        }
        std::fs::write(&path, b"this is not a safetensors file at all").expect("write");
        assert!(DenseModel::load(&path, spec, &Device::Cpu).is_err());

        // A header length far beyond the file.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        std::fs::write(&path, &huge).expect("write");
        assert!(DenseModel::load(&path, spec, &Device::Cpu).is_err());

        // Contract errors from a file name the file too.
        let mut missing = tiny_tensors();
        missing.remove("layers.1.weight");
        candle_core::safetensors::save(&missing, &path).expect("save");
        let err = DenseModel::load(&path, spec, &Device::Cpu).expect_err("missing layer");
        let msg = err.to_string();
        assert!(
            msg.contains("model.safetensors") && msg.contains("layers.1.weight"),
            "{msg}"
        );

        let err = DenseModel::load(&dir.path().join("absent.safetensors"), spec, &Device::Cpu)
            .expect_err("absent");
        assert!(matches!(err, ModelError::Read { .. }), "{err}");
    }
}
