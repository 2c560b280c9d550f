//! The client side of the v2 REST inference body: renders an [`InferRequest`] as JSON (optionally
//! followed by binary tensor sections) and reads an inference response back into tensors.
//!
//! The server side of the same format lives in `nereid_protocol::rest`; this is its mirror image
//! (request out, response in), kept here so that the protocol crate stays the server's contract.
//! Tensor data is written from the little-endian buffer straight into the JSON text and read
//! back with `nereid_protocol::rest::decode_json_data`, never through `serde_json::Value`.
//!
//! Responses are read leniently where other KServe v2 servers differ from Triton without
//! breaking the protocol: `model_version` may be missing, `null` or a number, and parameters
//! whose values are not scalars (MLServer sends `headers` objects) are dropped.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes};
use nereid_protocol::rest::{decode_json_data, split_body, DataView};
use nereid_protocol::{
    bytes_elements, element_count, DataType, InferRequest, InferResponse, Parameter, Parameters,
    Tensor,
};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{ClientError, Result};

/// A rendered request body; `header_length` is the value of `Inference-Header-Content-Length`
/// when binary sections follow the JSON.
#[derive(Debug, Clone)]
pub struct EncodedBody {
    pub body: Bytes,
    pub header_length: Option<usize>,
}

/// Whether an input can travel as a JSON `data` array at all: the protocol has no JSON form for
/// FP16/BF16, and JSON strings cannot hold BYTES elements that are not UTF-8.
fn json_representable(tensor: &Tensor) -> bool {
    match tensor.datatype {
        DataType::Fp16 | DataType::Bf16 => false,
        DataType::Bytes => {
            bytes_elements(&tensor.data).all(|e| e.is_ok_and(|e| std::str::from_utf8(e).is_ok()))
        }
        _ => true,
    }
}

/// Renders `request`. With `binary_inputs`, every input goes in a binary section; otherwise as
/// JSON `data`, except inputs that JSON cannot represent, which go binary regardless (the
/// extension allows mixing). Outputs follow `request.outputs[..].binary` and
/// `request.binary_data_output`.
pub fn encode_request(request: &InferRequest, binary_inputs: bool) -> Result<EncodedBody> {
    for input in &request.inputs {
        crate::check_tensor(input)
            .map_err(|e| ClientError::InvalidArgument(format!("input {e}")))?;
    }
    let binary: Vec<bool> = request
        .inputs
        .iter()
        .map(|t| binary_inputs || !json_representable(t))
        .collect();
    let mut body = Vec::with_capacity(
        256 + request
            .inputs
            .iter()
            .zip(&binary)
            .map(|(t, b)| if *b { t.data.len() } else { t.data.len() * 3 })
            .sum::<usize>(),
    );
    serde_json::to_writer(
        &mut body,
        &RequestJson {
            request,
            binary: &binary,
        },
    )
    .map_err(|e| ClientError::InvalidArgument(format!("cannot render the request: {e}")))?;
    if !binary.iter().any(|b| *b) {
        return Ok(EncodedBody {
            body: Bytes::from(body),
            header_length: None,
        });
    }
    let header_length = body.len();
    for (tensor, _) in request.inputs.iter().zip(&binary).filter(|(_, b)| **b) {
        body.put_slice(&tensor.data);
    }
    Ok(EncodedBody {
        body: Bytes::from(body),
        header_length: Some(header_length),
    })
}

struct RequestJson<'a> {
    request: &'a InferRequest,
    binary: &'a [bool],
}

impl Serialize for RequestJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.request;
        let mut map = s.serialize_map(None)?;
        if !r.id.is_empty() {
            map.serialize_entry("id", &r.id)?;
        }
        let mut parameters = r.parameters.clone();
        if r.binary_data_output {
            parameters.insert("binary_data_output".into(), Parameter::Bool(true));
        }
        if !parameters.is_empty() {
            map.serialize_entry("parameters", &parameters)?;
        }
        let inputs: Vec<InputView<'_>> = r
            .inputs
            .iter()
            .zip(self.binary)
            .map(|(tensor, &binary)| InputView { tensor, binary })
            .collect();
        map.serialize_entry("inputs", &inputs)?;
        if !r.outputs.is_empty() {
            let outputs: Vec<OutputRequestView<'_>> = r
                .outputs
                .iter()
                .map(|o| OutputRequestView(o, r.binary_data_output))
                .collect();
            map.serialize_entry("outputs", &outputs)?;
        }
        map.end()
    }
}

struct InputView<'a> {
    tensor: &'a Tensor,
    binary: bool,
}

impl Serialize for InputView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("name", &t.name)?;
        map.serialize_entry("shape", &t.shape)?;
        map.serialize_entry("datatype", t.datatype.as_str())?;
        if self.binary {
            let mut parameters = Parameters::new();
            parameters.insert(
                "binary_data_size".into(),
                Parameter::Uint(t.data.len() as u64),
            );
            map.serialize_entry("parameters", &parameters)?;
        } else {
            map.serialize_entry("data", &DataView(t))?;
        }
        map.end()
    }
}

/// A requested output; `binary_data` is sent only when it differs from what the server would
/// do anyway, so that servers without the binary extension see plain v2 JSON.
struct OutputRequestView<'a>(&'a nereid_protocol::RequestedOutput, bool);

impl Serialize for OutputRequestView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("name", &o.name)?;
        let mut parameters = Parameters::new();
        if o.binary || self.1 {
            parameters.insert("binary_data".into(), Parameter::Bool(o.binary));
        }
        if let Some(k) = o.classification {
            parameters.insert("classification".into(), Parameter::Uint(u64::from(k)));
        }
        if !parameters.is_empty() {
            map.serialize_entry("parameters", &parameters)?;
        }
        map.end()
    }
}

/// Decodes a JSON `data` array into the tensor byte layout, for every datatype.
///
/// `nereid_protocol::rest::decode_json_data` refuses FP16/BF16 (the server rejects them in JSON
/// requests, as Triton does), but responses and files may carry them as numbers: those are read
/// as FP32 and narrowed here.
pub fn decode_data(json: &str, datatype: DataType, count: usize, name: &str) -> Result<Bytes> {
    let invalid = |e: nereid_protocol::Error| ClientError::InvalidResponse(e.message);
    match datatype {
        DataType::Fp16 | DataType::Bf16 => {
            let wide = decode_json_data(json, DataType::Fp32, count, name).map_err(invalid)?;
            let mut out = Vec::with_capacity(count * 2);
            for chunk in wide.chunks_exact(4) {
                let v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                let bits = if datatype == DataType::Fp16 {
                    half::f16::from_f32(v).to_bits()
                } else {
                    half::bf16::from_f32(v).to_bits()
                };
                out.extend(bits.to_le_bytes());
            }
            Ok(Bytes::from(out))
        }
        _ => decode_json_data(json, datatype, count, name).map_err(invalid),
    }
}

#[derive(Deserialize)]
struct ResponseJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<serde_json::Value>,
    #[serde(default)]
    parameters: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(borrow, default)]
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Deserialize)]
struct OutputJson<'a> {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// Keeps the parameters that are protocol scalars; drops the rest (see the module docs).
fn scalar_parameters(map: Option<BTreeMap<String, serde_json::Value>>) -> Parameters {
    map.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| {
            let p = match v {
                serde_json::Value::Bool(b) => Parameter::Bool(b),
                serde_json::Value::String(s) => Parameter::String(s),
                serde_json::Value::Number(n) => {
                    if let Some(i) = n.as_i64() {
                        Parameter::Int(i)
                    } else if let Some(u) = n.as_u64() {
                        Parameter::Uint(u)
                    } else {
                        Parameter::Double(n.as_f64()?)
                    }
                }
                _ => return None,
            };
            Some((k, p))
        })
        .collect()
}

/// Reads a response body; `header_length` is the response's `Inference-Header-Content-Length`.
pub fn decode_response(body: &Bytes, header_length: Option<&str>) -> Result<InferResponse> {
    let invalid = |message: String| ClientError::InvalidResponse(message);
    let (json, binary) = split_body(body, header_length)
        .map_err(|e| invalid(e.message))?
        .ok_or_else(|| invalid("Inference-Header-Content-Length of 0 in a response".into()))?;
    let parsed: ResponseJson<'_> = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("cannot parse the response JSON: {e}")))?;
    let binary = binary.unwrap_or_default();
    let mut offset = 0usize;
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    for output in parsed.outputs {
        let datatype = DataType::from_wire(&output.datatype).ok_or_else(|| {
            invalid(format!(
                "unknown datatype '{}' for output '{}'",
                output.datatype, output.name
            ))
        })?;
        let count = element_count(&output.name, &output.shape).map_err(|e| invalid(e.message))?;
        let parameters = output.parameters.unwrap_or_default();
        let data = match (parameters.get("binary_data_size"), output.data) {
            (Some(size), _) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        invalid(format!(
                            "'binary_data_size' of output '{}' is not a non-negative integer",
                            output.name
                        ))
                    })?;
                let end = offset
                    .checked_add(size)
                    .filter(|end| *end <= binary.len())
                    .ok_or_else(|| {
                        invalid(format!(
                            "output '{}' claims {size} binary bytes but the body has {} left",
                            output.name,
                            binary.len() - offset
                        ))
                    })?;
                let data = binary.slice(offset..end);
                offset = end;
                data
            }
            (None, Some(raw)) => decode_data(raw.get(), datatype, count, &output.name)?,
            (None, None) => {
                return Err(invalid(format!("output '{}' has no data", output.name)));
            }
        };
        let tensor = Tensor::new(output.name, datatype, output.shape, data);
        crate::check_tensor(&tensor).map_err(|e| invalid(format!("output {e}")))?;
        outputs.push(tensor);
    }
    if offset != binary.len() {
        return Err(invalid(format!(
            "{} unclaimed bytes after the binary outputs",
            binary.len() - offset
        )));
    }
    let model_version = match parsed.model_version {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
    };
    Ok(InferResponse {
        model_name: parsed.model_name.unwrap_or_default(),
        model_version,
        id: parsed.id.unwrap_or_default(),
        parameters: scalar_parameters(parsed.parameters),
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::rest::{parse_request, render_response};
    use nereid_protocol::{encode_bytes_elements, RequestedOutput};

    fn sample() -> InferRequest {
        InferRequest {
            id: "r1".into(),
            inputs: vec![
                Tensor::from_f32("A", vec![1, 3], &[1.5, -2.0, 0.25]),
                Tensor::new(
                    "B",
                    DataType::Bytes,
                    vec![2],
                    encode_bytes_elements(["hi", ""]),
                ),
                Tensor::new(
                    "C",
                    DataType::Int64,
                    vec![2],
                    Bytes::copy_from_slice(bytemuck::cast_slice(&[-7i64, 1 << 40])),
                ),
            ],
            outputs: vec![RequestedOutput {
                name: "O".into(),
                classification: Some(2),
                binary: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The server's own parser is the oracle: whatever we render, it must read back unchanged.
    #[test]
    fn server_parser_reads_json_and_binary_renderings() {
        let request = sample();
        for binary in [false, true] {
            let encoded = encode_request(&request, binary).unwrap();
            assert_eq!(encoded.header_length.is_some(), binary);
            let header = encoded.header_length.map(|l| l.to_string());
            let (json, tail) = split_body(&encoded.body, header.as_deref())
                .unwrap()
                .unwrap();
            let parsed = parse_request(&json, tail, "m").unwrap();
            assert_eq!(parsed.id, "r1");
            assert_eq!(parsed.inputs, request.inputs);
            assert_eq!(parsed.outputs, request.outputs);
        }
    }

    #[test]
    fn fp16_and_non_utf8_bytes_always_go_binary() {
        let request = InferRequest {
            inputs: vec![
                Tensor::new("H", DataType::Fp16, vec![1], Bytes::from_static(&[0, 0x3c])),
                Tensor::new(
                    "S",
                    DataType::Bytes,
                    vec![1],
                    encode_bytes_elements([[0xffu8]]),
                ),
                Tensor::from_f32("F", vec![1], &[2.0]),
            ],
            ..Default::default()
        };
        let encoded = encode_request(&request, false).unwrap();
        let header = encoded.header_length.unwrap();
        let json = std::str::from_utf8(&encoded.body[..header]).unwrap();
        assert!(json.contains(r#""data":[2.0]"#), "{json}");
        let (head, tail) = split_body(&encoded.body, Some(&header.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(
            parse_request(&head, tail, "m").unwrap().inputs,
            request.inputs
        );
    }

    #[test]
    fn refuses_inconsistent_tensors() {
        let request = InferRequest {
            inputs: vec![Tensor::new(
                "A",
                DataType::Fp32,
                vec![2],
                Bytes::from_static(&[0; 4]),
            )],
            ..Default::default()
        };
        assert!(matches!(
            encode_request(&request, true),
            Err(ClientError::InvalidArgument(_))
        ));
    }

    #[test]
    fn binary_data_output_parameter() {
        let request = InferRequest {
            binary_data_output: true,
            ..Default::default()
        };
        let encoded = encode_request(&request, true).unwrap();
        assert_eq!(
            std::str::from_utf8(&encoded.body).unwrap(),
            r#"{"parameters":{"binary_data_output":true},"inputs":[]}"#
        );
        let parsed = parse_request(&encoded.body, None, "m").unwrap();
        assert!(parsed.binary_data_output);
    }

    /// The server's renderer is the oracle for reading responses.
    #[test]
    fn reads_server_rendered_responses() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "x".into(),
            outputs: vec![
                Tensor::from_f32("A", vec![1, 2], &[0.5, 1.0]),
                Tensor::new("B", DataType::Bytes, vec![1], encode_bytes_elements(["z"])),
                Tensor::new("H", DataType::Fp16, vec![1], Bytes::from_static(&[0, 0x3c])),
            ],
            ..Default::default()
        };
        for binary in [false, true] {
            let rendered = render_response(&response, |_| binary);
            let header = rendered.header_length.map(|l| l.to_string());
            let back = decode_response(&Bytes::from(rendered.body), header.as_deref()).unwrap();
            assert_eq!(back, response, "binary={binary}");
        }
    }

    #[test]
    fn reads_other_servers_leniently() {
        // MLServer's form: null version, non-scalar parameters, nested data.
        let body = br#"{"model_name":"m","model_version":null,"id":"1","parameters":{"headers":{"a":1},"content_type":"np"},
            "outputs":[{"name":"O","shape":[1,2],"datatype":"FP32","parameters":{"content_type":"np"},"data":[[1.0,2.0]]}]}"#;
        let r = decode_response(&Bytes::from_static(body), None).unwrap();
        assert_eq!(r.model_version, "");
        assert_eq!(
            r.parameters.get("content_type"),
            Some(&Parameter::String("np".into()))
        );
        assert!(!r.parameters.contains_key("headers"));
        assert_eq!(r.outputs[0].to_vec::<f32>(), vec![1.0, 2.0]);
    }

    #[test]
    fn rejects_malformed_responses() {
        for (body, header) in [
            (&br#"{"outputs":[{"name":"O","shape":[2],"datatype":"FP32","data":[1.0]}]}"#[..], None),
            (br#"{"outputs":[{"name":"O","shape":[1],"datatype":"NOPE","data":[1.0]}]}"#, None),
            (br#"{"outputs":[{"name":"O","shape":[1],"datatype":"FP32"}]}"#, None),
            (br#"not json"#, None),
            (br#"{"outputs":[{"name":"O","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, Some("84")),
        ] {
            let err = decode_response(&Bytes::from_static(body), header).unwrap_err();
            assert!(matches!(err, ClientError::InvalidResponse(_)), "{err}");
        }
    }
}
