//! `config.pbtxt` parsing and the JSON form of [`ModelConfig`], both by reflection over the
//! descriptor of our own `model_config.proto` (no hand-written text-format parser).
//!
//! The JSON form follows Triton's `ModelConfigToJson`: proto field names, every primitive field
//! printed with its default, enums as strings, and 64-bit integers as JSON numbers (protobuf's
//! canonical JSON would print them as strings, which Triton undoes for the fields clients read).

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::text_format::FormatOptions;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};

use crate::inference::{ModelConfig, FILE_DESCRIPTOR_SET};
use crate::{Error, Result};

fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor set decodes. This is a bug.")
    })
}

fn model_config_descriptor() -> MessageDescriptor {
    descriptor_pool()
        .get_message_by_name("inference.ModelConfig")
        .expect("descriptor set contains inference.ModelConfig. This is a bug.")
}

/// Parses the protobuf text format of a `ModelConfig`. `origin` (usually the file path) prefixes
/// every error so that a user knows which file to fix.
pub fn parse_pbtxt(text: &str, origin: &str) -> Result<ModelConfig> {
    let text = &colon_before_lists(text);
    let message =
        DynamicMessage::parse_text_format(model_config_descriptor(), text).map_err(|e| {
            Error::invalid_arg(format!(
                "failed to parse {origin}: {}",
                describe_text_error(text, &e)
            ))
        })?;
    message
        .transcode_to::<ModelConfig>()
        .map_err(|e| Error::internal(format!("failed to convert {origin}: {e}")))
}

/// Inserts the optional `:` in `field [ ... ]`. Protobuf's own text parser treats the colon
/// before a list of messages as optional and Triton's configs rely on it (`input [ { ... } ]`),
/// but prost-reflect requires it. Comments and strings are left untouched; line numbers in error
/// messages are unchanged (columns after an insertion shift by one).
fn colon_before_lists(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    // Whether the last significant token was an identifier (a candidate field name).
    let mut after_identifier = false;
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                out.push(c);
                for c in chars.by_ref() {
                    out.push(c);
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' => {
                out.push(c);
                let mut escaped = false;
                for s in chars.by_ref() {
                    out.push(s);
                    match s {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        _ if s == c => break,
                        _ => {}
                    }
                }
                after_identifier = false;
            }
            '[' if after_identifier => {
                out.push(':');
                out.push(c);
                after_identifier = false;
            }
            c if c.is_whitespace() => out.push(c),
            c if c.is_alphanumeric() || c == '_' => {
                out.push(c);
                while let Some(&n) = chars.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '.') {
                        break;
                    }
                    out.push(n);
                    chars.next();
                }
                after_identifier = c.is_alphabetic() || c == '_';
            }
            c => {
                out.push(c);
                after_identifier = false;
            }
        }
    }
    out
}

/// The text-format error with the line and column where it was found.
fn describe_text_error(text: &str, err: &prost_reflect::text_format::ParseError) -> String {
    use miette::Diagnostic;
    let offset = err
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| l.offset());
    match offset {
        Some(offset) => {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rfind('\n')
                .map_or(before.len(), |nl| before.len() - nl - 1)
                + 1;
            format!("line {line}, column {column}: {err}")
        }
        None => err.to_string(),
    }
}

/// Renders `config` in the protobuf text format (`config.pbtxt`), one field per line; what
/// [`parse_pbtxt`] reads back to the same message.
pub fn to_pbtxt(config: &ModelConfig) -> String {
    let message =
        DynamicMessage::decode(model_config_descriptor(), config.encode_to_vec().as_slice())
            .expect("a ModelConfig re-decodes against its own descriptor. This is a bug.");
    let mut text = message.to_text_format_with_options(&FormatOptions::new().pretty(true));
    text.push('\n');
    text
}

/// Renders `config` in Triton's JSON form.
pub fn to_json(config: &ModelConfig) -> String {
    message_to_json(config, "inference.ModelConfig")
}

/// Renders any message of package `inference` the way Triton renders its JSON payloads: proto
/// field names, defaults printed (clients such as perf_analyzer read every counter), enums as
/// strings and 64-bit integers as numbers.
pub fn message_to_json<M: Message>(message: &M, full_name: &str) -> String {
    let descriptor = descriptor_pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the descriptor set. This is a bug."));
    let message = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message re-decodes against its own descriptor. This is a bug.");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &options)
        .expect("a message serialises to JSON. This is a bug.");
    String::from_utf8(out.into_inner()).expect("serde_json writes UTF-8. This is a bug.")
}

/// Parses Triton's JSON form (as sent in the load API's `config` parameter); unknown fields are
/// rejected, as Triton does.
pub fn from_json(json: &str) -> Result<ModelConfig> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message = DynamicMessage::deserialize_with_options(
        model_config_descriptor(),
        &mut deserializer,
        &options,
    )
    .and_then(|m| deserializer.end().map(|()| m))
    .map_err(|e| Error::invalid_arg(format!("failed to parse model configuration JSON: {e}")))?;
    message
        .transcode_to::<ModelConfig>()
        .map_err(|e| Error::internal(format!("failed to convert model configuration JSON: {e}")))
}

#[cfg(test)]
mod tests {

    #[test]
    fn text_format_round_trips_the_checked_in_configs() {
        for model in ["iris_classifier", "identity_fp32", "identity_bytes"] {
            let path = format!(
                "{}/../model-repo/{model}/config.pbtxt",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).expect("config");
            let config = parse_pbtxt(&text, &path).expect("parses");
            let written = to_pbtxt(&config);
            assert_eq!(
                parse_pbtxt(&written, "written").expect("reparses"),
                config,
                "{written}"
            );
        }
    }

    use super::*;
    use crate::inference::{model_version_policy, DataType as ConfigType};

    const SIMPLE: &str = r#"
# A comment.
name: "simple"
backend: "identity"
max_batch_size: 8
version_policy: { specific { versions: [1, 3] } }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
        { name: "INPUT1", data_type: TYPE_STRING, dims: [ -1 ] } ]
output {
  name: "OUTPUT0"
  data_type: TYPE_FP32
  dims: 16
  label_filename: "labels.txt"
}
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "nereid.architecture" value: { string_value: "mlp" } }
"#;

    #[test]
    fn parses_triton_text_format() {
        let config = parse_pbtxt(SIMPLE, "simple/config.pbtxt").unwrap();
        assert_eq!(config.name, "simple");
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.input.len(), 2);
        assert_eq!(config.input[0].dims, vec![16]);
        assert_eq!(config.input[1].data_type, ConfigType::TypeString as i32);
        assert_eq!(config.output[0].dims, vec![16]);
        assert_eq!(config.output[0].label_filename, "labels.txt");
        assert_eq!(config.instance_group[0].count, 2);
        assert_eq!(config.parameters["nereid.architecture"].string_value, "mlp");
        match config.version_policy.unwrap().policy_choice.unwrap() {
            model_version_policy::PolicyChoice::Specific(s) => assert_eq!(s.versions, vec![1, 3]),
            other => panic!("unexpected policy {other:?}"),
        }
    }

    #[test]
    fn bad_files_name_the_file_and_problem() {
        for (text, needle) in [
            (
                "name: \"x\"\nmax_batch_size: \"eight\"",
                "line 2, column 17",
            ),
            ("name: \"x\"\nbogus_field: 3", "bogus_field"),
            (
                "input [ { name: \"a\" data_type: TYPE_FLOAT99 } ]",
                "TYPE_FLOAT99",
            ),
            ("input [ { name: \"a\" ", ""),
        ] {
            let err = parse_pbtxt(text, "m/config.pbtxt").unwrap_err();
            assert!(
                err.message.starts_with("failed to parse m/config.pbtxt: "),
                "{}",
                err.message
            );
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }

    #[test]
    fn list_colon_is_optional_outside_strings_and_comments() {
        assert_eq!(colon_before_lists("input [ {} ]"), "input :[ {} ]");
        assert_eq!(colon_before_lists("input: [ {} ]"), "input: [ {} ]");
        assert_eq!(
            colon_before_lists("dims [ 1 ] # a [ b\nx"),
            "dims :[ 1 ] # a [ b\nx"
        );
        assert_eq!(
            colon_before_lists("name: \"a [\" v [1]"),
            "name: \"a [\" v :[1]"
        );
        assert_eq!(colon_before_lists("k: 1 [ 2 ]"), "k: 1 [ 2 ]");
    }

    #[test]
    fn json_form_uses_field_names_numbers_and_enum_strings() {
        let config = parse_pbtxt(SIMPLE, "simple/config.pbtxt").unwrap();
        let json: serde_json::Value = serde_json::from_str(&to_json(&config)).unwrap();
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["dims"], serde_json::json!([16]));
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][1]["is_shape_tensor"], false);
        assert_eq!(
            json["dynamic_batching"]["max_queue_delay_microseconds"],
            100
        );
        assert_eq!(json["instance_group"][0]["kind"], "KIND_CPU");
        assert_eq!(json["platform"], "");
        assert_eq!(
            json["version_policy"]["specific"]["versions"],
            serde_json::json!([1, 3])
        );
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_fields() {
        let config = parse_pbtxt(SIMPLE, "simple/config.pbtxt").unwrap();
        assert_eq!(from_json(&to_json(&config)).unwrap(), config);
        let err = from_json(r#"{"name":"x","not_a_field":1}"#).unwrap_err();
        assert!(err.message.contains("not_a_field"), "{}", err.message);
    }
}
