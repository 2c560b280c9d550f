//! Conversions between `inference.ModelInfer*` messages and the protocol-neutral values.
//!
//! Inputs in `raw_input_contents` are kept as the `Bytes` slices tonic decoded them into; typed
//! `contents` are converted to the same little-endian layout. Responses always carry their data
//! in `raw_output_contents`, as Triton's do.

use bytes::Bytes;

use crate::inference::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor, InferParameter, InferTensorContents,
    ModelInferRequest, ModelInferResponse,
};
use crate::{
    encode_bytes_elements, DataType, Error, InferRequest, InferResponse, Parameter, Parameters,
    RequestedOutput, Result, SharedMemoryRef, Tensor,
};

/// The `triton_` request parameters a gRPC client may send (NVIDIA's clients and perf_analyzer
/// send them; Triton accepts exactly these and refuses every other `triton_` key).
pub const GRPC_TRITON_PARAMETERS: &[&str] = &["triton_enable_empty_final_response"];

/// The response parameter that marks a stream response as the last for its request.
pub const FINAL_RESPONSE_PARAMETER: &str = "triton_final_response";

pub fn parameter_from_grpc(p: &InferParameter) -> Option<Parameter> {
    Some(match p.parameter_choice.as_ref()? {
        ParameterChoice::BoolParam(v) => Parameter::Bool(*v),
        ParameterChoice::Int64Param(v) => Parameter::Int(*v),
        ParameterChoice::StringParam(v) => Parameter::String(v.clone()),
        ParameterChoice::DoubleParam(v) => Parameter::Double(*v),
        ParameterChoice::Uint64Param(v) => Parameter::Uint(*v),
    })
}

pub fn parameter_to_grpc(p: &Parameter) -> InferParameter {
    let choice = match p {
        Parameter::Bool(v) => ParameterChoice::BoolParam(*v),
        Parameter::Int(v) => ParameterChoice::Int64Param(*v),
        Parameter::Uint(v) => ParameterChoice::Uint64Param(*v),
        Parameter::Double(v) => ParameterChoice::DoubleParam(*v),
        Parameter::String(v) => ParameterChoice::StringParam(v.clone()),
    };
    InferParameter {
        parameter_choice: Some(choice),
    }
}

fn parameters_from_grpc(
    map: &std::collections::HashMap<String, InferParameter>,
) -> Result<Parameters> {
    let mut out = Parameters::new();
    for (key, value) in map {
        if key.starts_with("triton_") {
            if !GRPC_TRITON_PARAMETERS.contains(&key.as_str()) {
                return Err(Error::invalid_arg(format!(
                    "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting with 'triton_' are allowed: {}",
                    GRPC_TRITON_PARAMETERS.join(" ")
                )));
            }
            if !matches!(value.parameter_choice, Some(ParameterChoice::BoolParam(_))) {
                return Err(Error::invalid_arg(format!(
                    "invalid value type for '{key}' parameter, expected bool_param."
                )));
            }
            // It asks for an empty final response from decoupled models, which Nereid does not
            // serve; every stream response is final (`triton_final_response: true`).
            continue;
        }
        if let Some(value) = parameter_from_grpc(value) {
            out.insert(key.clone(), value);
        }
    }
    Ok(out)
}

/// Converts a `ModelInferRequest`; returns the model name and version with the request.
pub fn request_from_grpc(message: ModelInferRequest) -> Result<(String, String, InferRequest)> {
    let ModelInferRequest {
        model_name,
        model_version,
        id,
        parameters,
        inputs,
        outputs,
        raw_input_contents,
    } = message;
    let mut request = InferRequest {
        id,
        parameters: parameters_from_grpc(&parameters)?,
        ..Default::default()
    };
    // Raw contents belong, in order, to the inputs whose data is not in shared memory.
    let mut regions = Vec::with_capacity(inputs.len());
    for input in &inputs {
        regions.push(shared_memory_from_grpc(&input.parameters, &input.name)?);
    }
    let in_message = regions.iter().filter(|r| r.is_none()).count();
    if !raw_input_contents.is_empty() && raw_input_contents.len() != in_message {
        return Err(Error::invalid_arg(format!(
            "expected {in_message} raw input contents for model '{model_name}', got {}",
            raw_input_contents.len()
        )));
    }
    let mut raw = raw_input_contents.into_iter();
    for (input, region) in inputs.into_iter().zip(regions) {
        match region {
            Some(region) => {
                if input
                    .contents
                    .as_ref()
                    .is_some_and(|c| !contents_is_empty(c))
                {
                    return Err(Error::invalid_arg(format!(
                        "unexpected 'content' provided when using shared memory for input tensor '{}' for model '{model_name}'",
                        input.name
                    )));
                }
                let datatype = DataType::from_wire(&input.datatype).ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "invalid datatype '{}' for input '{}'",
                        input.datatype, input.name
                    ))
                })?;
                let tensor = Tensor::new(input.name, datatype, input.shape, Bytes::new());
                tensor.element_count()?;
                request.input_regions.insert(tensor.name.clone(), region);
                request.inputs.push(tensor);
            }
            None => {
                let tensor = input_from_grpc(input, raw.next(), &model_name)?;
                request.inputs.push(tensor);
            }
        }
    }
    for output in outputs {
        if request.outputs.iter().any(|o| o.name == output.name) {
            return Err(Error::invalid_arg(format!(
                "output '{}' already exists in request",
                output.name
            )));
        }
        let mut requested = RequestedOutput {
            shared_memory: shared_memory_from_grpc(&output.parameters, &output.name)?,
            name: output.name,
            ..Default::default()
        };
        if requested.shared_memory.is_some() && output.parameters.contains_key("classification") {
            return Err(Error::invalid_arg(
                "Output can't set both 'shared_memory_region' and 'classification'",
            ));
        }
        if let Some(k) = output.parameters.get("classification") {
            let k = parameter_from_grpc(k)
                .and_then(|p| p.as_u64())
                .and_then(|k| u32::try_from(k).ok())
                .filter(|k| *k > 0)
                .ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "parameter 'classification' of output '{}' must be a positive integer",
                        requested.name
                    ))
                })?;
            requested.classification = Some(k);
        }
        request.outputs.push(requested);
    }
    Ok((model_name, model_version, request))
}

/// A tensor's `shared_memory_*` parameters, checked with Triton's texts: `None` when it has none.
fn shared_memory_from_grpc(
    parameters: &std::collections::HashMap<String, InferParameter>,
    tensor: &str,
) -> Result<Option<SharedMemoryRef>> {
    let region = match parameters.get("shared_memory_region") {
        None => None,
        Some(InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(region)),
        }) => Some(region.clone()),
        Some(_) => {
            return Err(Error::invalid_arg(format!(
                "invalid value type for 'shared_memory_region' parameter for tensor '{tensor}', expected string_param."
            )))
        }
    };
    let number = |key: &str| -> Result<Option<u64>> {
        let Some(value) = parameters.get(key) else {
            return Ok(None);
        };
        if region.is_none() {
            return Err(Error::invalid_arg(format!(
                "'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{tensor}'"
            )));
        }
        match value.parameter_choice {
            Some(ParameterChoice::Int64Param(v)) => u64::try_from(v).map(Some).map_err(|_| {
                Error::invalid_arg(format!(
                    "'{key}' of tensor '{tensor}' must not be negative"
                ))
            }),
            _ => Err(Error::invalid_arg(format!(
                "invalid value type for '{key}' parameter for tensor '{tensor}', expected int64_param."
            ))),
        }
    };
    let offset = number("shared_memory_offset")?;
    let byte_size = number("shared_memory_byte_size")?;
    let Some(region) = region else {
        return Ok(None);
    };
    let byte_size = byte_size.ok_or_else(|| {
        Error::invalid_arg(format!(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor '{tensor}'"
        ))
    })?;
    Ok(Some(SharedMemoryRef {
        region,
        offset: offset.unwrap_or(0),
        byte_size,
    }))
}

fn input_from_grpc(input: InferInputTensor, raw: Option<Bytes>, model: &str) -> Result<Tensor> {
    let name = input.name;
    let datatype = DataType::from_wire(&input.datatype).ok_or_else(|| {
        Error::invalid_arg(format!(
            "invalid datatype '{}' for input '{name}'",
            input.datatype
        ))
    })?;
    let data = match (raw, input.contents) {
        (Some(_), Some(contents)) if !contents_is_empty(&contents) => {
            return Err(Error::invalid_arg(format!("contents field must not be specified when using raw_input_contents for '{name}' for model '{model}'")));
        }
        (Some(raw), _) => raw,
        (None, Some(contents)) if !contents_is_empty(&contents) => {
            contents_to_bytes(&name, datatype, contents)?
        }
        (None, _) => {
            // An input with no elements legitimately has no contents.
            if input.shape.contains(&0) {
                Bytes::new()
            } else {
                return Err(Error::invalid_arg(format!(
                    "unable to find data for input tensor '{name}' for model '{model}' in request."
                )));
            }
        }
    };
    let tensor = Tensor::new(name, datatype, input.shape, data);
    tensor.element_count()?;
    // The data's size against the shape is checked with the model's other request checks
    // (`ModelVersion::prepare`), as Triton's core checks it, naming the request.
    Ok(tensor)
}

fn contents_is_empty(c: &InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

fn contents_to_bytes(name: &str, datatype: DataType, c: InferTensorContents) -> Result<Bytes> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        name: &str,
        dt: DataType,
        values: &[S],
        mut push: impl FnMut(T),
    ) -> Result<()> {
        for &v in values {
            push(T::try_from(v).map_err(|_| {
                Error::invalid_arg(format!(
                    "value {v} of input '{name}' is out of range for {dt}"
                ))
            })?);
        }
        Ok(())
    }
    let mut out: Vec<u8> = Vec::new();
    let dt = datatype;
    match datatype {
        DataType::Bool => out.extend(c.bool_contents.iter().map(|b| u8::from(*b))),
        DataType::Uint8 => narrow(name, dt, &c.uint_contents, |v: u8| out.push(v))?,
        DataType::Uint16 => narrow(name, dt, &c.uint_contents, |v: u16| {
            out.extend(v.to_le_bytes())
        })?,
        DataType::Uint32 => out.extend(c.uint_contents.iter().flat_map(|v| v.to_le_bytes())),
        DataType::Uint64 => out.extend(c.uint64_contents.iter().flat_map(|v| v.to_le_bytes())),
        DataType::Int8 => narrow(name, dt, &c.int_contents, |v: i8| {
            out.extend(v.to_le_bytes())
        })?,
        DataType::Int16 => narrow(name, dt, &c.int_contents, |v: i16| {
            out.extend(v.to_le_bytes())
        })?,
        DataType::Int32 => out.extend(c.int_contents.iter().flat_map(|v| v.to_le_bytes())),
        DataType::Int64 => out.extend(c.int64_contents.iter().flat_map(|v| v.to_le_bytes())),
        DataType::Fp32 => out.extend(c.fp32_contents.iter().flat_map(|v| v.to_le_bytes())),
        DataType::Fp64 => out.extend(c.fp64_contents.iter().flat_map(|v| v.to_le_bytes())),
        DataType::Bytes => return Ok(encode_bytes_elements(&c.bytes_contents)),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(Error::invalid_arg(format!(
                "{dt} input '{name}' must be sent in raw_input_contents"
            )))
        }
    }
    Ok(Bytes::from(out))
}

/// Converts a response; all output data goes to `raw_output_contents`.
pub fn response_to_grpc(response: InferResponse) -> ModelInferResponse {
    let mut message = ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: response
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), parameter_to_grpc(v)))
            .collect(),
        outputs: Vec::with_capacity(response.outputs.len()),
        raw_output_contents: Vec::with_capacity(response.outputs.len()),
    };
    for tensor in response.outputs {
        message.outputs.push(InferOutputTensor {
            name: tensor.name,
            datatype: tensor.datatype.as_str().to_string(),
            shape: tensor.shape,
            parameters: Default::default(),
            contents: None,
        });
        message.raw_output_contents.push(tensor.data);
    }
    message
}

/// Converts a response message back into tensors (used by clients and tests).
pub fn response_from_grpc(message: ModelInferResponse) -> Result<InferResponse> {
    let mut raw = message.raw_output_contents.into_iter();
    let mut outputs = Vec::with_capacity(message.outputs.len());
    for output in message.outputs {
        let datatype = DataType::from_wire(&output.datatype).ok_or_else(|| {
            Error::invalid_arg(format!(
                "invalid datatype '{}' for output '{}'",
                output.datatype, output.name
            ))
        })?;
        let data = raw.next().ok_or_else(|| {
            Error::invalid_arg(format!(
                "no raw_output_contents for output '{}'",
                output.name
            ))
        })?;
        outputs.push(Tensor::new(output.name, datatype, output.shape, data));
    }
    Ok(InferResponse {
        model_name: message.model_name,
        model_version: message.model_version,
        id: message.id,
        parameters: message
            .parameters
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), parameter_from_grpc(v)?)))
            .collect(),
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn typed_contents_become_little_endian_buffers() {
        let message = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![
                input(
                    "A",
                    "INT16",
                    vec![2],
                    Some(InferTensorContents {
                        int_contents: vec![-2, 7],
                        ..Default::default()
                    }),
                ),
                input(
                    "B",
                    "BYTES",
                    vec![1],
                    Some(InferTensorContents {
                        bytes_contents: vec![b"hi".to_vec()],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let (_, _, request) = request_from_grpc(message).unwrap();
        assert_eq!(request.inputs[0].to_vec::<i16>(), vec![-2, 7]);
        assert_eq!(request.inputs[1].data, encode_bytes_elements(["hi"]));
    }

    #[test]
    fn raw_and_typed_contents_cannot_mix() {
        let message = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input(
                "A",
                "INT32",
                vec![1],
                Some(InferTensorContents {
                    int_contents: vec![1],
                    ..Default::default()
                }),
            )],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
            ..Default::default()
        };
        let err = request_from_grpc(message).unwrap_err();
        assert!(
            err.message.contains("contents field must not be specified"),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_data_and_out_of_range_values() {
        let message = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("A", "FP32", vec![1], None)],
            ..Default::default()
        };
        let err = request_from_grpc(message).unwrap_err();
        assert_eq!(
            err.message,
            "unable to find data for input tensor 'A' for model 'm' in request."
        );
        let message = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input(
                "A",
                "INT8",
                vec![1],
                Some(InferTensorContents {
                    int_contents: vec![300],
                    ..Default::default()
                }),
            )],
            ..Default::default()
        };
        assert!(request_from_grpc(message)
            .unwrap_err()
            .message
            .contains("out of range"));
    }

    #[test]
    fn response_round_trip() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            outputs: vec![Tensor::from_f32("O", vec![1, 2], &[1.0, 2.0])],
            ..Default::default()
        };
        let message = response_to_grpc(response.clone());
        assert_eq!(message.raw_output_contents.len(), 1);
        assert_eq!(response_from_grpc(message).unwrap(), response);
    }
}
