//! The v2 REST inference body: JSON, optionally followed by binary tensor sections.
//!
//! Request layout (binary tensor extension): the JSON header, then the bytes of each input that
//! has `parameters.binary_data_size`, in the order of `inputs`; the header's length is sent in
//! `Inference-Header-Content-Length`. JSON `data` arrays (flat or nested) are decoded straight
//! into the tensor's little-endian buffer; the JSON is never built into a `serde_json::Value`.

use std::fmt;

use bytes::{BufMut, Bytes};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{
    bytes_elements, element_count, DataType, Error, InferRequest, InferResponse, OutputForm,
    Parameter, Parameters, RequestedOutput, Result, SharedMemoryRef, Tensor,
};

/// The header that carries the JSON length of a binary-framed body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Triton's limit on JSON nesting.
pub const MAX_JSON_DEPTH: usize = 100;

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    /// Any JSON numbers, so that a negative dimension gets Triton's own answer.
    shape: Vec<serde_json::Number>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// Splits a body into its JSON header and binary tail according to `Inference-Header-Content-Length`.
///
/// `header` is the raw header value, if present; without it the whole body is JSON and the
/// binary part is `None`. A value of 0 means the whole body is one raw tensor, which the caller
/// handles (it needs the model's only input); this returns `Ok(None)`.
pub fn split_body(body: &Bytes, header: Option<&str>) -> Result<Option<(Bytes, Option<Bytes>)>> {
    let Some(value) = header else {
        return Ok(Some((body.clone(), None)));
    };
    let length: i64 = value.trim().parse().map_err(|_| {
        Error::invalid_arg(format!(
            "Unable to parse Inference-Header-Content-Length, got: {value}"
        ))
    })?;
    if length == 0 {
        return Ok(None);
    }
    let length = usize::try_from(length)
        .ok()
        .filter(|l| *l <= body.len() && *l <= i32::MAX as usize)
        .ok_or_else(|| {
            Error::invalid_arg(format!(
                "inference header size should be in range (0, {}), got: {length}",
                body.len()
            ))
        })?;
    Ok(Some((body.slice(..length), Some(body.slice(length..)))))
}

/// Rejects JSON nested deeper than [`MAX_JSON_DEPTH`] before it is parsed.
pub fn check_json_depth(json: &[u8]) -> Result<()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Error::invalid_arg(format!(
                        "JSON nesting depth exceeds maximum allowed limit ({MAX_JSON_DEPTH})"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a JSON inference request. `binary` holds the bytes that followed the JSON header, or
/// `None` when the request had no `Inference-Header-Content-Length` (a JSON-only body).
pub fn parse_request(json: &[u8], binary: Option<Bytes>, model_name: &str) -> Result<InferRequest> {
    check_json_depth(json)?;
    let parsed: RequestJson<'_> = serde_json::from_slice(json)
        .map_err(|e| Error::invalid_arg(format!("failed to parse the request JSON buffer: {e}")))?;

    let mut request = InferRequest {
        id: parsed.id.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(parameters) = parsed.parameters {
        for (key, value) in parameters {
            if key.starts_with("triton_") {
                return Err(Error::invalid_arg("parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."));
            }
            if key == "binary_data_output" {
                request.binary_data_output = value.as_bool().ok_or_else(|| {
                    Error::invalid_arg("parameter 'binary_data_output' must be a boolean")
                })?;
            }
            request.parameters.insert(key, value);
        }
    }

    let framed = binary.is_some();
    let binary = binary.unwrap_or_default();
    let mut offset = 0usize;
    for input in parsed.inputs {
        match parse_input(input, &binary, framed, &mut offset, model_name)? {
            ParsedInput::Data(tensor) => request.inputs.push(tensor),
            ParsedInput::SharedMemory(tensor, region) => {
                request.input_regions.insert(tensor.name.clone(), region);
                request.inputs.push(tensor);
            }
        }
    }
    if offset != binary.len() {
        return Err(Error::invalid_arg(format!(
            "unexpected additional input data for model '{model_name}'"
        )));
    }

    for output in parsed.outputs.unwrap_or_default() {
        if request.outputs.iter().any(|o| o.name == output.name) {
            return Err(Error::invalid_arg(format!(
                "output '{}' already exists in request",
                output.name
            )));
        }
        request.outputs.push(parse_output(output)?);
    }
    Ok(request)
}

fn parse_input(
    input: InputJson<'_>,
    binary: &Bytes,
    framed: bool,
    offset: &mut usize,
    model_name: &str,
) -> Result<ParsedInput> {
    let name = input.name;
    // Triton's text (it does not quote the datatype it did not recognise).
    let datatype = DataType::from_wire(&input.datatype)
        .ok_or_else(|| Error::invalid_arg(format!("invalid datatype for input {name}")))?;
    let shape = input
        .shape
        .iter()
        .map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok()))
        .collect::<Option<Vec<i64>>>()
        // Triton answers this one with INTERNAL (500), and its tests expect exactly that.
        .ok_or_else(|| {
            Error::internal(
                "Unable to parse 'shape': attempt to access JSON non-unsigned-integer as unsigned-integer",
            )
        })?;
    let count = element_count(&name, &shape)?;
    // Refuse a shape whose byte size overflows before reading any data for it.
    Tensor::new(name.clone(), datatype, shape.clone(), Bytes::new())
        .expected_byte_size(model_name)?;

    let parameters = input.parameters.unwrap_or_default();
    let binary_size = parameters.get("binary_data_size");
    let shm = parameters.contains_key("shared_memory_region");
    let set: Vec<&str> = [
        (input.data.is_some(), "'data'"),
        (binary_size.is_some(), "'binary_data_size'"),
        (shm, "'shared_memory_region'"),
    ]
    .into_iter()
    .filter_map(|(present, field)| present.then_some(field))
    .collect();
    if set.len() != 1 {
        let which = if set.is_empty() {
            "no field is set".to_string()
        } else {
            format!("set {}", set.join(" "))
        };
        return Err(Error::invalid_arg(format!("Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', 'shared_memory_region' in 'parameters'. But {which}")));
    }
    if shm {
        let region = shared_memory_ref(&parameters, &name)?;
        return Ok(ParsedInput::SharedMemory(
            Tensor::new(name, datatype, shape, Bytes::new()),
            region,
        ));
    }

    let data = if let Some(size) = binary_size {
        if !framed {
            return Err(Error::invalid_arg("must specify valid 'Infer-Header-Content-Length' in request header and 'binary_data_size' when passing inputs in binary data format"));
        }
        let size = size
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| {
                Error::invalid_arg(format!(
                    "'binary_data_size' of input '{name}' must be a non-negative integer"
                ))
            })?;
        let remaining = binary.len() - *offset;
        if size > remaining {
            return Err(Error::invalid_arg(format!(
                "unexpected size for input '{name}', expecting {} additional bytes for model '{model_name}'",
                size - remaining
            )));
        }
        let data = binary.slice(*offset..*offset + size);
        *offset += size;
        data
    } else {
        let raw = input
            .data
            .expect("exactly one data source is set. This is a bug.");
        if matches!(datatype, DataType::Fp16 | DataType::Bf16) {
            return Err(Error::invalid_arg(format!("receiving {datatype} data via JSON is not supported. Please use the binary data format for input {name}")));
        }
        decode_json_data(raw.get(), datatype, count, &name)?
    };
    // The data's size against the shape is checked with the model's other request checks
    // (`ModelVersion::prepare`), as Triton's core checks it, naming the request.
    Ok(ParsedInput::Data(Tensor::new(name, datatype, shape, data)))
}

/// An input as the request carries it: its data, or where in shared memory it is.
enum ParsedInput {
    Data(Tensor),
    /// The tensor (without data) and its region.
    SharedMemory(Tensor, SharedMemoryRef),
}

/// The `shared_memory_*` parameters of a tensor, Triton's way: the region is a string, the
/// offset (default 0) and byte size non-negative integers, and the byte size is required.
fn shared_memory_ref(parameters: &Parameters, tensor: &str) -> Result<SharedMemoryRef> {
    let region = match parameters.get("shared_memory_region") {
        Some(Parameter::String(region)) => region.clone(),
        Some(_) => return Err(Error::invalid_arg("Unable to parse 'shared_memory_region'")),
        None => {
            let key = if parameters.contains_key("shared_memory_offset") {
                "shared_memory_offset"
            } else {
                "shared_memory_byte_size"
            };
            return Err(Error::invalid_arg(format!(
                "'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{tensor}'"
            )));
        }
    };
    let number = |key: &str| -> Result<Option<u64>> {
        parameters
            .get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| Error::invalid_arg(format!("Unable to parse '{key}'")))
            })
            .transpose()
    };
    let offset = number("shared_memory_offset")?.unwrap_or(0);
    let byte_size = number("shared_memory_byte_size")?.ok_or_else(|| {
        Error::invalid_arg(format!(
            "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor '{tensor}'"
        ))
    })?;
    Ok(SharedMemoryRef {
        region,
        offset,
        byte_size,
    })
}

fn parse_output(output: OutputJson) -> Result<RequestedOutput> {
    let mut requested = RequestedOutput {
        name: output.name,
        ..Default::default()
    };
    let parameters = output.parameters.unwrap_or_default();
    if parameters.contains_key("shared_memory_region") {
        if parameters.contains_key("classification") {
            return Err(Error::invalid_arg(
                "Output can't set both 'shared_memory_region' and 'classification'",
            ));
        }
        if parameters.get("binary_data").and_then(Parameter::as_bool) == Some(true) {
            return Err(Error::invalid_arg(
                "Output can't set both 'shared_memory_region' and 'binary_data'",
            ));
        }
        requested.shared_memory = Some(shared_memory_ref(&parameters, &requested.name)?);
    } else if parameters.keys().any(|k| k.starts_with("shared_memory_")) {
        shared_memory_ref(&parameters, &requested.name)?;
    }
    for (key, value) in parameters {
        match key.as_str() {
            "binary_data" => {
                requested.binary = value.as_bool().ok_or_else(|| {
                    Error::invalid_arg(format!(
                        "parameter 'binary_data' of output '{}' must be a boolean",
                        requested.name
                    ))
                })?
            }
            "classification" => {
                let k = value
                    .as_u64()
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
            _ => {}
        }
    }
    Ok(requested)
}

/// Decodes a JSON `data` value (nested or flat array) into the tensor byte layout.
pub fn decode_json_data(
    json: &str,
    datatype: DataType,
    expected: usize,
    name: &str,
) -> Result<Bytes> {
    // Sized from the shape, but never beyond what the JSON text can hold (every element takes
    // at least one character of it).
    let capacity = expected
        .saturating_mul(datatype.element_size().unwrap_or(8))
        .min(json.len().saturating_mul(8));
    let mut out = Vec::with_capacity(capacity);
    let mut count = 0usize;
    let mut deserializer = serde_json::Deserializer::from_str(json);
    DataSeed {
        datatype,
        out: &mut out,
        count: &mut count,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .map_err(|e| Error::invalid_arg(format!("Unable to parse 'data' of input '{name}': {e}")))?;
    // Triton's two texts, exactly (clients match on them).
    if count < expected {
        return Err(Error::invalid_arg(
            "Failed to parse 'data' field: shape does not match true shape",
        ));
    }
    if count > expected {
        return Err(Error::invalid_arg(
            "Unable to parse 'data': Shape does not match true shape of 'data' field",
        ));
    }
    Ok(Bytes::from(out))
}

struct DataSeed<'a> {
    datatype: DataType,
    out: &'a mut Vec<u8>,
    count: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl DataSeed<'_> {
    fn push_int<E: de::Error>(&mut self, value: i128) -> Result<(), E> {
        fn narrow<T: TryFrom<i128>, E: de::Error>(v: i128, dt: DataType) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("value {v} is out of range for {dt}")))
        }
        let dt = self.datatype;
        match dt {
            DataType::Uint8 => self.out.push(narrow::<u8, E>(value, dt)?),
            DataType::Int8 => self.out.extend(narrow::<i8, E>(value, dt)?.to_le_bytes()),
            DataType::Uint16 => self.out.extend(narrow::<u16, E>(value, dt)?.to_le_bytes()),
            DataType::Int16 => self.out.extend(narrow::<i16, E>(value, dt)?.to_le_bytes()),
            DataType::Uint32 => self.out.extend(narrow::<u32, E>(value, dt)?.to_le_bytes()),
            DataType::Int32 => self.out.extend(narrow::<i32, E>(value, dt)?.to_le_bytes()),
            DataType::Uint64 => self.out.extend(narrow::<u64, E>(value, dt)?.to_le_bytes()),
            DataType::Int64 => self.out.extend(narrow::<i64, E>(value, dt)?.to_le_bytes()),
            DataType::Fp32 => self.out.extend((value as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend((value as f64).to_le_bytes()),
            DataType::Bool => return Err(E::custom(format!("expected a boolean, got {value}"))),
            DataType::Bytes => return Err(E::custom(format!("expected a string, got {value}"))),
            DataType::Fp16 | DataType::Bf16 => {
                unreachable!("FP16/BF16 JSON is rejected before decoding. This is a bug.")
            }
        }
        *self.count += 1;
        Ok(())
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(()) = seq.next_element_seed(DataSeed {
            datatype: self.datatype,
            out: &mut *self.out,
            count: &mut *self.count,
        })? {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if self.datatype != DataType::Bool {
            return Err(E::custom(format!(
                "expected {}, got a boolean",
                self.datatype
            )));
        }
        self.out.push(u8::from(v));
        *self.count += 1;
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push_int(i128::from(v))
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push_int(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.datatype {
            DataType::Fp32 => self.out.extend((v as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend(v.to_le_bytes()),
            dt => return Err(E::custom(format!("expected {dt}, got the number {v}"))),
        }
        *self.count += 1;
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.datatype != DataType::Bytes {
            return Err(E::custom(format!(
                "expected {}, got a string",
                self.datatype
            )));
        }
        let len =
            u32::try_from(v.len()).map_err(|_| E::custom("string element longer than 4 GiB"))?;
        self.out.extend(len.to_le_bytes());
        self.out.extend_from_slice(v.as_bytes());
        *self.count += 1;
        Ok(())
    }
}

/// A rendered response body; `header_length` is set when binary sections follow the JSON.
pub struct RenderedResponse {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// Renders a response: outputs for which `binary(name)` holds go in the binary section.
pub fn render_response(
    response: &InferResponse,
    binary: impl Fn(&str) -> bool,
) -> RenderedResponse {
    render_response_with(response, |name| {
        if binary(name) {
            OutputForm::Binary
        } else {
            OutputForm::Json
        }
    })
}

/// [`render_response`] with each output's form given, shared memory included (such an output
/// is named in the response, without data).
pub fn render_response_with(
    response: &InferResponse,
    form: impl Fn(&str) -> OutputForm,
) -> RenderedResponse {
    let forms: Vec<OutputForm> = response.outputs.iter().map(|o| form(&o.name)).collect();
    let json = ResponseJson {
        response,
        forms: &forms,
    };
    let mut body = Vec::with_capacity(256);
    serde_json::to_writer(&mut body, &json).expect("response serialises. This is a bug.");
    if !forms.contains(&OutputForm::Binary) {
        return RenderedResponse {
            body,
            header_length: None,
        };
    }
    let header_length = body.len();
    for (output, _) in response
        .outputs
        .iter()
        .zip(&forms)
        .filter(|(_, f)| **f == OutputForm::Binary)
    {
        body.put_slice(&output.data);
    }
    RenderedResponse {
        body,
        header_length: Some(header_length),
    }
}

struct ResponseJson<'a> {
    response: &'a InferResponse,
    forms: &'a [OutputForm],
}

impl Serialize for ResponseJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.response;
        let mut map = s.serialize_map(None)?;
        if !r.id.is_empty() {
            map.serialize_entry("id", &r.id)?;
        }
        map.serialize_entry("model_name", &r.model_name)?;
        map.serialize_entry("model_version", &r.model_version)?;
        if !r.parameters.is_empty() {
            map.serialize_entry("parameters", &r.parameters)?;
        }
        let outputs: Vec<OutputView<'_>> = r
            .outputs
            .iter()
            .zip(self.forms)
            .map(|(tensor, &form)| OutputView { tensor, form })
            .collect();
        map.serialize_entry("outputs", &outputs)?;
        map.end()
    }
}

struct OutputView<'a> {
    tensor: &'a Tensor,
    form: OutputForm,
}

impl Serialize for OutputView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("name", &t.name)?;
        map.serialize_entry("datatype", t.datatype.as_str())?;
        map.serialize_entry("shape", &t.shape)?;
        match self.form {
            OutputForm::Binary => {
                let mut parameters = Parameters::new();
                parameters.insert(
                    "binary_data_size".into(),
                    Parameter::Uint(t.data.len() as u64),
                );
                map.serialize_entry("parameters", &parameters)?;
            }
            OutputForm::Json => map.serialize_entry("data", &DataView(t))?,
            OutputForm::SharedMemory => {}
        }
        map.end()
    }
}

/// Serialises a tensor buffer as a flat JSON array of its elements (the `data` of a v2 JSON
/// tensor, for requests and responses alike).
pub struct DataView<'a>(pub &'a Tensor);

impl Serialize for DataView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn each<S: SerializeSeq, T: bytemuck::Pod, V: Serialize>(
            seq: &mut S,
            data: &[u8],
            map: impl Fn(T) -> V,
        ) -> Result<(), S::Error> {
            for chunk in data.chunks_exact(std::mem::size_of::<T>()) {
                seq.serialize_element(&map(bytemuck::pod_read_unaligned::<T>(chunk)))?;
            }
            Ok(())
        }
        let t = self.0;
        let data = &t.data[..];
        let mut seq = s.serialize_seq(None)?;
        match t.datatype {
            DataType::Bool => each(&mut seq, data, |v: u8| v != 0)?,
            DataType::Uint8 => each(&mut seq, data, |v: u8| v)?,
            DataType::Int8 => each(&mut seq, data, |v: i8| v)?,
            DataType::Uint16 => each(&mut seq, data, |v: u16| v)?,
            DataType::Int16 => each(&mut seq, data, |v: i16| v)?,
            DataType::Uint32 => each(&mut seq, data, |v: u32| v)?,
            DataType::Int32 => each(&mut seq, data, |v: i32| v)?,
            DataType::Uint64 => each(&mut seq, data, |v: u64| v)?,
            DataType::Int64 => each(&mut seq, data, |v: i64| v)?,
            DataType::Fp16 => each(&mut seq, data, |v: u16| half::f16::from_bits(v).to_f32())?,
            DataType::Bf16 => each(&mut seq, data, |v: u16| half::bf16::from_bits(v).to_f32())?,
            DataType::Fp32 => each(&mut seq, data, |v: f32| v)?,
            DataType::Fp64 => each(&mut seq, data, |v: f64| v)?,
            DataType::Bytes => {
                for element in bytes_elements(data) {
                    let element = element
                        .map_err(|()| serde::ser::Error::custom("malformed BYTES buffer"))?;
                    seq.serialize_element(&String::from_utf8_lossy(element))?;
                }
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_bytes_elements;

    fn parse(json: &str) -> Result<InferRequest> {
        parse_request(json.as_bytes(), None, "m")
    }

    #[test]
    fn parses_nested_and_flat_data_into_typed_buffers() {
        let r = parse(
            r#"{"inputs":[{"name":"A","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]},
            {"name":"B","shape":[3],"datatype":"INT8","data":[-1,0,127]},
            {"name":"C","shape":[2],"datatype":"BOOL","data":[true,false]},
            {"name":"D","shape":[2],"datatype":"BYTES","data":["hi",""]}]}"#,
        )
        .unwrap();
        assert_eq!(r.inputs[0].to_vec::<f32>(), vec![1.0, 2.5, 3.0, 4.0]);
        assert_eq!(&r.inputs[1].data[..], &[0xff, 0, 127]);
        assert_eq!(&r.inputs[2].data[..], &[1, 0]);
        assert_eq!(r.inputs[3].data, encode_bytes_elements(["hi", ""]));
    }

    #[test]
    fn data_count_mismatches_are_reported() {
        let short =
            parse(r#"{"inputs":[{"name":"A","shape":[3],"datatype":"INT32","data":[1,2]}]}"#)
                .unwrap_err();
        assert_eq!(
            short.message,
            "Failed to parse 'data' field: shape does not match true shape"
        );
        let long =
            parse(r#"{"inputs":[{"name":"A","shape":[1],"datatype":"INT32","data":[1,2]}]}"#)
                .unwrap_err();
        assert_eq!(
            long.message,
            "Unable to parse 'data': Shape does not match true shape of 'data' field"
        );
    }

    #[test]
    fn rejects_wrong_element_types_and_ranges() {
        for bad in [
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"UINT8","data":[256]}]}"#,
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP32","data":["x"]}]}"#,
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"NOPE","data":[1]}]}"#,
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP16","data":[1]}]}"#,
            r#"{"inputs":[{"name":"A","shape":[1],"datatype":"FP32"}]}"#,
            r#"{"inputs": [}"#,
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code, crate::Code::InvalidArg, "{bad}: {}", err.message);
        }
    }

    #[test]
    fn negative_dimensions_and_overflow() {
        let err = parse(r#"{"inputs":[{"name":"A","shape":[-1],"datatype":"FP32","data":[1]}]}"#)
            .unwrap_err();
        assert_eq!(err.code, crate::Code::Internal);
        assert!(err.message.starts_with("Unable to parse 'shape'"));
        let err = parse(r#"{"inputs":[{"name":"A","shape":[4, 1152921504606846978],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(err.message.contains("overflow"), "{}", err.message);
    }

    #[test]
    fn reserved_parameters_and_duplicate_outputs() {
        let err = parse(r#"{"parameters":{"triton_x":1},"inputs":[]}"#).unwrap_err();
        assert!(err.message.contains("reserved for Triton usage"));
        let err = parse(r#"{"inputs":[],"outputs":[{"name":"O"},{"name":"O"}]}"#).unwrap_err();
        assert_eq!(err.message, "output 'O' already exists in request");
    }

    #[test]
    fn output_parameters() {
        let r = parse(r#"{"inputs":[],"parameters":{"binary_data_output":true},
            "outputs":[{"name":"A","parameters":{"binary_data":true,"classification":3}},{"name":"B"}]}"#)
        .unwrap();
        assert_eq!(r.outputs[0].classification, Some(3));
        assert!(r.wants_binary("A"));
        assert!(
            !r.wants_binary("B"),
            "a listed output without binary_data is JSON"
        );
        assert!(
            r.wants_binary("C"),
            "unlisted outputs follow binary_data_output"
        );
    }

    #[test]
    fn binary_sections_are_sliced_in_order() {
        let json = br#"{"inputs":[{"name":"A","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"B","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}"#;
        let mut body = json.to_vec();
        body.extend(1.0f32.to_le_bytes());
        body.extend(2.0f32.to_le_bytes());
        body.extend(encode_bytes_elements(["abc"]));
        let body = Bytes::from(body);
        let header = json.len().to_string();
        let (head, tail) = split_body(&body, Some(&header)).unwrap().unwrap();
        let tail = tail.unwrap();
        let r = parse_request(&head, Some(tail.clone()), "m").unwrap();
        let err = parse_request(&head, None, "m").unwrap_err();
        assert!(
            err.message.contains("Infer-Header-Content-Length"),
            "{}",
            err.message
        );
        assert_eq!(r.inputs[0].to_vec::<f32>(), vec![1.0, 2.0]);
        assert_eq!(r.inputs[1].data, encode_bytes_elements(["abc"]));

        // Truncated: one byte short.
        let err = parse_request(&head, Some(tail.slice(..tail.len() - 1)), "m").unwrap_err();
        assert!(
            err.message
                .contains("expecting 1 additional bytes for model 'm'"),
            "{}",
            err.message
        );
        // Leftover bytes.
        let mut long = tail.to_vec();
        long.push(0);
        let err = parse_request(&head, Some(Bytes::from(long)), "m").unwrap_err();
        assert_eq!(
            err.message,
            "unexpected additional input data for model 'm'"
        );
    }

    #[test]
    fn header_length_validation() {
        let body = Bytes::from_static(b"{}");
        assert!(split_body(&body, Some("0")).unwrap().is_none());
        assert!(split_body(&body, Some("abc"))
            .unwrap_err()
            .message
            .contains("Unable to parse"));
        assert!(split_body(&body, Some("5"))
            .unwrap_err()
            .message
            .contains("should be in range"));
        assert!(split_body(&body, Some("-3")).is_err());
        assert!(split_body(&body, Some("99999999999999")).is_err());
        let (head, tail) = split_body(&body, None).unwrap().unwrap();
        assert_eq!((&head[..], tail), (&b"{}"[..], None));
    }

    #[test]
    fn depth_limit() {
        let deep = format!("{}{}", "[".repeat(101), "]".repeat(101));
        assert!(check_json_depth(deep.as_bytes())
            .unwrap_err()
            .message
            .contains("(100)"));
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        check_json_depth(ok.as_bytes()).unwrap();
        check_json_depth(br#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"["}"#).unwrap();
    }

    #[test]
    fn renders_json_and_binary_outputs() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "req".into(),
            outputs: vec![
                Tensor::from_f32("A", vec![1, 2], &[0.5, 1.0]),
                Tensor::new("B", DataType::Bytes, vec![1], encode_bytes_elements(["x"])),
            ],
            ..Default::default()
        };
        let json = render_response(&response, |_| false);
        assert_eq!(json.header_length, None);
        assert_eq!(
            String::from_utf8(json.body).unwrap(),
            r#"{"id":"req","model_name":"m","model_version":"1","outputs":[{"name":"A","datatype":"FP32","shape":[1,2],"data":[0.5,1.0]},{"name":"B","datatype":"BYTES","shape":[1],"data":["x"]}]}"#
        );
        let binary = render_response(&response, |n| n == "A");
        let header = binary.header_length.unwrap();
        let head = std::str::from_utf8(&binary.body[..header]).unwrap();
        assert!(
            head.contains(r#""parameters":{"binary_data_size":8}"#),
            "{head}"
        );
        assert_eq!(
            &binary.body[header..],
            bytemuck::cast_slice::<f32, u8>(&[0.5, 1.0])
        );
    }
}
