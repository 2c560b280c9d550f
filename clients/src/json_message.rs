//! Reads the JSON payloads of the REST API (metadata, config, statistics, repository index) into
//! the same prost messages the gRPC API returns, by reflection over `nereid_protocol`'s
//! descriptor set. One set of result types for both protocols, and no hand-kept serde mirror of
//! Triton's protos.
//!
//! Unknown fields are ignored rather than refused: other KServe v2 servers add their own (for
//! example MLServer's `parameters` in model metadata), and a client must still read the rest.

use std::sync::OnceLock;

use nereid_protocol::inference::FILE_DESCRIPTOR_SET;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};

use crate::error::{ClientError, Result};

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("embedded descriptor set decodes. This is a bug.")
    })
}

/// Parses `json` as the message `full_name` (e.g. `inference.ModelMetadataResponse`).
pub(crate) fn from_json<M: prost::Message + Default>(json: &[u8], full_name: &str) -> Result<M> {
    let descriptor = pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} is in the descriptor set. This is a bug."));
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(descriptor, &mut deserializer, &options)
        .and_then(|m| deserializer.end().map(|()| m))
        .map_err(|e| {
            ClientError::InvalidResponse(format!("cannot read the {full_name} JSON: {e}"))
        })?;
    message.transcode_to::<M>().map_err(|e| {
        ClientError::InvalidResponse(format!("cannot convert the {full_name} JSON: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nereid_protocol::inference::{ModelMetadataResponse, ModelStatisticsResponse};

    #[test]
    fn reads_triton_and_mlserver_metadata() {
        let triton = br#"{"name":"m","versions":["1"],"platform":"identity",
            "inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,16]}],"outputs":[]}"#;
        let m: ModelMetadataResponse =
            from_json(triton, "inference.ModelMetadataResponse").unwrap();
        assert_eq!(m.inputs[0].shape, vec![-1, 16]);
        let mlserver =
            br#"{"name":"m","versions":[],"platform":"","parameters":{"content_type":"np"},
            "inputs":[{"name":"INPUT0","datatype":"FP32","shape":[-1,16],"parameters":{"x":1}}]}"#;
        let m: ModelMetadataResponse =
            from_json(mlserver, "inference.ModelMetadataResponse").unwrap();
        assert_eq!(m.inputs[0].name, "INPUT0");
    }

    #[test]
    fn reads_64_bit_counters_as_numbers_or_strings() {
        let json = br#"{"model_stats":[{"name":"m","version":"1","inference_count":5,"execution_count":"4",
            "inference_stats":{"success":{"count":5,"ns":1000}}}]}"#;
        let s: ModelStatisticsResponse =
            from_json(json, "inference.ModelStatisticsResponse").unwrap();
        assert_eq!(s.model_stats[0].inference_count, 5);
        assert_eq!(s.model_stats[0].execution_count, 4);
    }

    #[test]
    fn malformed_json_is_an_invalid_response() {
        let err =
            from_json::<ModelMetadataResponse>(b"{\"name\": 3}", "inference.ModelMetadataResponse")
                .unwrap_err();
        assert!(matches!(err, ClientError::InvalidResponse(_)), "{err}");
    }
}
