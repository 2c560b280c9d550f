//! Sequence batching for stateful models (`sequence_batching` in a model's config).
//!
//! A request names its sequence with the `sequence_id` parameter (an integer or a string) and
//! marks the first and last requests with `sequence_start` and `sequence_end`. The requests of
//! one sequence run one at a time, in the order they arrive (each holds its sequence's slot, a
//! fair async lock, from validation to response); requests of different sequences run
//! concurrently and are batched together like any others (the `oldest` strategy's and the
//! `direct` strategy's queue delay and the `oldest` strategy's preferred sizes become the
//! model's batching policy). Nereid's backends keep no state between executions, so both
//! strategies behave the same: what a sequence carries from one request to the next is its
//! implicit state.
//!
//! Before a request runs, its control inputs are added as tensors (`CONTROL_SEQUENCE_START`,
//! `_END`, `_READY`: the config's false/true values; `_CORRID`: the correlation id in the
//! configured datatype), then its state inputs: zeros on a sequence's first request, else the
//! state outputs of the previous one. State outputs are kept for the next request and not
//! returned. A sequence ends with `sequence_end`, or when no request has arrived for
//! `max_sequence_idle_microseconds`; a request after either must start a new sequence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nereid_protocol::inference::model_config::SchedulingChoice;
use nereid_protocol::inference::model_sequence_batching::control::Kind;
use nereid_protocol::inference::{ModelConfig, ModelSequenceBatching};
use nereid_protocol::{encode_bytes_elements, DataType, Error, InferRequest, Parameter, Tensor};

/// Triton's default `max_sequence_idle_microseconds` (1 s).
const DEFAULT_IDLE: Duration = Duration::from_secs(1);

/// A sequence's correlation id, as the request gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CorrelationId {
    Int(u64),
    Str(String),
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorrelationId::Int(v) => write!(f, "{v}"),
            CorrelationId::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone)]
struct ControlInput {
    name: String,
    kind: Kind,
    datatype: DataType,
    /// Little-endian bytes of one element for false and for true (START, END, READY).
    values: Option<[Vec<u8>; 2]>,
}

#[derive(Debug, Clone)]
struct StateSpec {
    input: String,
    output: String,
    datatype: DataType,
    dims: Vec<i64>,
}

/// The sequence settings of a model.
#[derive(Debug, Clone)]
pub struct SequenceSpec {
    controls: Vec<ControlInput>,
    states: Vec<StateSpec>,
    idle: Duration,
    batching: bool,
}

/// The sequence batcher's part of a model config, checked; `None` for other models.
pub fn sequence_batching(config: &ModelConfig) -> Option<&ModelSequenceBatching> {
    match &config.scheduling_choice {
        Some(SchedulingChoice::SequenceBatching(sb)) => Some(sb),
        _ => None,
    }
}

impl SequenceSpec {
    /// Reads `sequence_batching`, with the reason a config is refused.
    pub fn from_config(config: &ModelConfig) -> Result<Option<Self>, String> {
        let Some(sb) = sequence_batching(config) else {
            return Ok(None);
        };
        let m = &config.name;
        if sb.iterative_sequence {
            return Err(format!(
                "model '{m}': sequence_batching iterative_sequence is not supported"
            ));
        }
        let mut controls = Vec::new();
        for input in &sb.control_input {
            let [control] = input.control.as_slice() else {
                return Err(format!(
                    "model '{m}': control input '{}' must have exactly one control",
                    input.name
                ));
            };
            let kind = Kind::try_from(control.kind).map_err(|_| {
                format!(
                    "model '{m}': control input '{}' has an unknown kind",
                    input.name
                )
            })?;
            let (datatype, values) = if kind == Kind::ControlSequenceCorrid {
                let datatype = DataType::from_config(control.data_type)
                    .filter(|d| {
                        matches!(
                            d,
                            DataType::Uint64 | DataType::Int64 | DataType::Uint32 | DataType::Int32 | DataType::Bytes
                        )
                    })
                    .ok_or_else(|| {
                        format!(
                            "model '{m}': the CORRID control '{}' must be TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING",
                            input.name
                        )
                    })?;
                (datatype, None)
            } else if let [f, t] = control.int32_false_true[..] {
                (
                    DataType::Int32,
                    Some([f.to_le_bytes().to_vec(), t.to_le_bytes().to_vec()]),
                )
            } else if let [f, t] = control.fp32_false_true[..] {
                (
                    DataType::Fp32,
                    Some([f.to_le_bytes().to_vec(), t.to_le_bytes().to_vec()]),
                )
            } else if let [f, t] = control.bool_false_true[..] {
                (DataType::Bool, Some([vec![u8::from(f)], vec![u8::from(t)]]))
            } else {
                return Err(format!(
                    "model '{m}': control input '{}' must give two false/true values (int32_false_true, fp32_false_true or bool_false_true)",
                    input.name
                ));
            };
            controls.push(ControlInput {
                name: input.name.clone(),
                kind,
                datatype,
                values,
            });
        }
        let mut states = Vec::new();
        for state in &sb.state {
            let datatype = DataType::from_config(state.data_type).ok_or_else(|| {
                format!(
                    "model '{m}': state '{}' must specify 'data_type'",
                    state.input_name
                )
            })?;
            if state.input_name.is_empty() || state.output_name.is_empty() {
                return Err(format!(
                    "model '{m}': a state must name its input_name and output_name"
                ));
            }
            if state.dims.iter().any(|d| *d < 0) || datatype == DataType::Bytes {
                return Err(format!(
                    "model '{m}': state '{}' needs fixed dims and a numeric or BOOL datatype",
                    state.input_name
                ));
            }
            if let Some(initial) = state.initial_state.first() {
                use nereid_protocol::inference::model_sequence_batching::initial_state::StateData;
                if !matches!(initial.state_data, Some(StateData::ZeroData(true))) {
                    return Err(format!(
                        "model '{m}': state '{}': only zero_data initial states are supported",
                        state.input_name
                    ));
                }
            }
            states.push(StateSpec {
                input: state.input_name.clone(),
                output: state.output_name.clone(),
                datatype,
                dims: state.dims.clone(),
            });
        }
        let idle = match sb.max_sequence_idle_microseconds {
            0 => DEFAULT_IDLE,
            us => Duration::from_micros(us),
        };
        Ok(Some(SequenceSpec {
            controls,
            states,
            idle,
            batching: config.max_batch_size > 0,
        }))
    }

    /// The tensors the batcher adds to each request, after the config's inputs: control
    /// inputs, then state inputs (name and datatype, in that order).
    pub fn extra_inputs(&self) -> Vec<(String, DataType)> {
        self.controls
            .iter()
            .map(|c| (c.name.clone(), c.datatype))
            .chain(self.states.iter().map(|s| (s.input.clone(), s.datatype)))
            .collect()
    }

    /// The state outputs the model must produce, after the config's outputs.
    pub fn extra_outputs(&self) -> Vec<(String, DataType)> {
        self.states
            .iter()
            .map(|s| (s.output.clone(), s.datatype))
            .collect()
    }

    /// Whether this model needs a backend that takes the added tensors.
    pub fn adds_tensors(&self) -> bool {
        !self.controls.is_empty() || !self.states.is_empty()
    }

    /// The control and state inputs of a warm-up request: a sequence's first request with
    /// correlation id 0 and zero state.
    pub fn warmup_tensors(&self) -> Vec<Tensor> {
        let mut tensors = Vec::with_capacity(self.controls.len() + self.states.len());
        for control in &self.controls {
            let data = match (&control.values, control.datatype) {
                (Some([off, _]), _) => Bytes::copy_from_slice(off),
                (None, DataType::Bytes) => encode_bytes_elements([&b""[..]]),
                (None, datatype) => Bytes::from(vec![0u8; datatype.element_size().unwrap_or(8)]),
            };
            tensors.push(Tensor::new(
                control.name.clone(),
                control.datatype,
                self.shape(&[1]),
                data,
            ));
        }
        tensors.extend(self.states.iter().map(|state| self.zero_state(state)));
        tensors
    }

    fn zero_state(&self, state: &StateSpec) -> Tensor {
        let shape = self.shape(&state.dims);
        let count: i64 = shape.iter().product();
        let size = state.datatype.element_size().unwrap_or(1);
        Tensor::new(
            state.input.clone(),
            state.datatype,
            shape,
            Bytes::from(vec![0u8; count.max(0) as usize * size]),
        )
    }

    fn shape(&self, dims: &[i64]) -> Vec<i64> {
        let mut shape = Vec::with_capacity(dims.len() + 1);
        if self.batching {
            shape.push(1);
        }
        shape.extend(dims);
        shape
    }
}

/// What a request says about its sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceFlags {
    pub id: CorrelationId,
    pub start: bool,
    pub end: bool,
}

/// Reads `sequence_id`, `sequence_start` and `sequence_end` from a request to the model `m`.
pub fn flags(request: &InferRequest, m: &str) -> Result<SequenceFlags, Error> {
    let id = match request.parameters.get("sequence_id") {
        Some(Parameter::String(s)) if !s.is_empty() => Some(CorrelationId::Str(s.clone())),
        Some(p) => p.as_u64().filter(|v| *v != 0).map(CorrelationId::Int),
        None => None,
    };
    let id = id.ok_or_else(|| {
        Error::invalid_arg(format!(
            "inference request to model '{m}' must specify a non-zero or non-empty correlation ID"
        ))
    })?;
    let flag = |key: &str| -> Result<bool, Error> {
        match request.parameters.get(key) {
            None => Ok(false),
            Some(p) => p
                .as_bool()
                .ok_or_else(|| Error::invalid_arg(format!("parameter '{key}' must be a boolean"))),
        }
    };
    Ok(SequenceFlags {
        id,
        start: flag("sequence_start")?,
        end: flag("sequence_end")?,
    })
}

/// The state a sequence carries between requests.
#[derive(Debug, Default)]
pub struct Carried {
    /// The next state inputs, in the spec's order; empty before the first request.
    states: Vec<Tensor>,
    open: bool,
    last_used: Option<Instant>,
}

type Slot = Arc<tokio::sync::Mutex<Carried>>;

/// The open sequences of one model version.
#[derive(Debug)]
pub struct Sequences {
    pub spec: SequenceSpec,
    slots: Mutex<HashMap<CorrelationId, Slot>>,
}

/// A request's hold on its sequence, from validation to response.
pub struct Held {
    flags: SequenceFlags,
    guard: tokio::sync::OwnedMutexGuard<Carried>,
}

impl Sequences {
    pub fn new(spec: SequenceSpec) -> Self {
        Sequences {
            spec,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for the request's turn in its sequence and checks that the sequence is open (or
    /// being started).
    pub async fn hold(&self, flags: SequenceFlags, m: &str) -> Result<Held, Error> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            // Forget sequences that ended or went idle and that no request holds.
            let idle = self.spec.idle;
            slots.retain(|_, slot| match slot.try_lock() {
                Ok(carried) => {
                    carried.open && carried.last_used.is_some_and(|t| t.elapsed() <= idle)
                }
                Err(_) => true,
            });
            Arc::clone(slots.entry(flags.id.clone()).or_default())
        };
        let mut guard = slot.lock_owned().await;
        let expired = guard
            .last_used
            .is_some_and(|t| t.elapsed() > self.spec.idle);
        if expired {
            *guard = Carried::default();
        }
        if flags.start {
            guard.open = true;
            guard.states.clear();
        } else if !guard.open {
            return Err(Error::invalid_arg(format!(
                "inference request for sequence {} to model '{m}' must specify the START flag on the first request of the sequence",
                flags.id
            )));
        }
        Ok(Held { flags, guard })
    }

    /// The control and state tensors to add to the held request's inputs.
    pub fn extra_tensors(&self, held: &Held) -> Vec<Tensor> {
        let spec = &self.spec;
        let mut tensors = Vec::with_capacity(spec.controls.len() + spec.states.len());
        for control in &spec.controls {
            let data = match (control.kind, &control.values) {
                (Kind::ControlSequenceCorrid, _) => corrid_bytes(&held.flags.id, control.datatype),
                (kind, Some([off, on])) => {
                    let set = match kind {
                        Kind::ControlSequenceStart => held.flags.start,
                        Kind::ControlSequenceEnd => held.flags.end,
                        _ => true,
                    };
                    Bytes::copy_from_slice(if set { on } else { off })
                }
                (_, None) => Bytes::new(),
            };
            tensors.push(Tensor::new(
                control.name.clone(),
                control.datatype,
                spec.shape(&[1]),
                data,
            ));
        }
        for (i, state) in spec.states.iter().enumerate() {
            let tensor = held
                .guard
                .states
                .get(i)
                .cloned()
                .unwrap_or_else(|| spec.zero_state(state));
            tensors.push(tensor);
        }
        tensors
    }

    /// Takes the state outputs out of an execution's outputs, keeps them for the sequence's
    /// next request, and closes the sequence on its last.
    pub fn finish(&self, mut held: Held, outputs: &mut Vec<Tensor>, m: &str) -> Result<(), Error> {
        let mut states = Vec::with_capacity(self.spec.states.len());
        for state in &self.spec.states {
            let index = outputs
                .iter()
                .position(|t| t.name == state.output)
                .ok_or_else(|| {
                    Error::internal(format!(
                        "model '{m}' did not produce its state output '{}'",
                        state.output
                    ))
                })?;
            let mut tensor = outputs.remove(index);
            tensor.name = state.input.clone();
            states.push(tensor);
        }
        held.guard.states = states;
        held.guard.last_used = Some(Instant::now());
        if held.flags.end {
            held.guard.open = false;
            held.guard.states.clear();
        }
        Ok(())
    }
}

fn corrid_bytes(id: &CorrelationId, datatype: DataType) -> Bytes {
    let number = match id {
        CorrelationId::Int(v) => *v,
        CorrelationId::Str(_) => 0,
    };
    match datatype {
        DataType::Bytes => encode_bytes_elements([id.to_string().as_bytes()]),
        DataType::Uint64 => Bytes::copy_from_slice(&number.to_le_bytes()),
        DataType::Int64 => Bytes::copy_from_slice(&(number as i64).to_le_bytes()),
        DataType::Uint32 => Bytes::copy_from_slice(&(number as u32).to_le_bytes()),
        _ => Bytes::copy_from_slice(&(number as i32).to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"name: "acc" backend: "onnxruntime" max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [1] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [1] } ]
sequence_batching {
  max_sequence_idle_microseconds: 50000
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [0, 1] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [2] } ]
  oldest { max_candidate_sequences: 4 }
}"#;

    fn sequences() -> Sequences {
        let config = nereid_protocol::config::parse_pbtxt(CONFIG, "c").unwrap();
        Sequences::new(SequenceSpec::from_config(&config).unwrap().unwrap())
    }

    fn request(id: Parameter, start: bool, end: bool) -> InferRequest {
        let mut r = InferRequest::default();
        r.parameters.insert("sequence_id".into(), id);
        r.parameters
            .insert("sequence_start".into(), Parameter::Bool(start));
        r.parameters
            .insert("sequence_end".into(), Parameter::Bool(end));
        r
    }

    #[tokio::test]
    async fn controls_state_and_the_start_rule() {
        let s = sequences();
        assert_eq!(
            s.spec.extra_inputs(),
            [
                ("START".to_string(), DataType::Int32),
                ("END".to_string(), DataType::Fp32),
                ("CORRID".to_string(), DataType::Uint64),
                ("STATE_IN".to_string(), DataType::Fp32)
            ]
        );
        assert_eq!(
            s.spec.extra_outputs(),
            [("STATE_OUT".to_string(), DataType::Fp32)]
        );

        let err = s
            .hold(
                flags(&request(Parameter::Uint(7), false, false), "acc").unwrap(),
                "acc",
            )
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            "inference request for sequence 7 to model 'acc' must specify the START flag on the first request of the sequence"
        );
        let held = s
            .hold(
                flags(&request(Parameter::Uint(7), true, false), "acc").unwrap(),
                "acc",
            )
            .await
            .unwrap();
        let extra = s.extra_tensors(&held);
        assert_eq!(extra[0].to_vec::<i32>(), [1], "START");
        assert_eq!(extra[1].to_vec::<f32>(), [0.0], "END");
        assert_eq!(extra[2].to_vec::<u64>(), [7], "CORRID");
        assert_eq!(extra[3].shape, [1, 2]);
        assert_eq!(extra[3].to_vec::<f32>(), [0.0, 0.0], "zero state");
        let mut outputs = vec![
            Tensor::from_f32("OUTPUT", vec![1, 1], &[5.0]),
            Tensor::from_f32("STATE_OUT", vec![1, 2], &[5.0, 6.0]),
        ];
        s.finish(held, &mut outputs, "acc").unwrap();
        assert_eq!(outputs.len(), 1, "the state output is not returned");

        let held = s
            .hold(
                flags(&request(Parameter::Int(7), false, true), "acc").unwrap(),
                "acc",
            )
            .await
            .unwrap();
        let extra = s.extra_tensors(&held);
        assert_eq!(extra[0].to_vec::<i32>(), [0], "not START");
        assert_eq!(extra[1].to_vec::<f32>(), [1.0], "END");
        assert_eq!(extra[3].to_vec::<f32>(), [5.0, 6.0], "the state carried");
        let mut outputs = vec![Tensor::from_f32("STATE_OUT", vec![1, 2], &[0.0, 0.0])];
        s.finish(held, &mut outputs, "acc").unwrap();
        assert!(
            s.hold(
                flags(&request(Parameter::Uint(7), false, false), "acc").unwrap(),
                "acc"
            )
            .await
            .is_err(),
            "ended"
        );

        // Idle sequences end too.
        let held = s
            .hold(
                flags(&request(Parameter::String("s".into()), true, false), "acc").unwrap(),
                "acc",
            )
            .await
            .unwrap();
        assert_eq!(
            s.extra_tensors(&held)[2].to_vec::<u64>(),
            [0],
            "a string id in a UINT64 CORRID"
        );
        let mut outputs = vec![Tensor::from_f32("STATE_OUT", vec![1, 2], &[1.0, 1.0])];
        s.finish(held, &mut outputs, "acc").unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s
            .hold(
                flags(&request(Parameter::String("s".into()), false, false), "acc").unwrap(),
                "acc"
            )
            .await
            .is_err());

        let missing = flags(&InferRequest::default(), "acc").unwrap_err();
        assert_eq!(
            missing.message,
            "inference request to model 'acc' must specify a non-zero or non-empty correlation ID"
        );
        assert!(flags(&request(Parameter::Uint(0), true, false), "acc").is_err());
    }

    #[test]
    fn unsupported_settings_are_refused() {
        let refuse = |extra: &str| {
            let text = format!(
                "name: \"m\" backend: \"onnxruntime\" max_batch_size: 4 sequence_batching {{ {extra} }}"
            );
            let config = nereid_protocol::config::parse_pbtxt(&text, "c").unwrap();
            SequenceSpec::from_config(&config).unwrap_err()
        };
        assert!(refuse("iterative_sequence: true").contains("iterative_sequence"));
        assert!(refuse(
            r#"control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]"#
        )
        .contains("false/true values"));
        assert!(refuse(
            r#"state [ { input_name: "A" output_name: "B" data_type: TYPE_FP32 dims: [-1] } ]"#
        )
        .contains("fixed dims"));
    }
}
