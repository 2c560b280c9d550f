//! Tensors written as JSON by people: a nested array whose nesting gives the shape
//! (`[[1, 2], [3, 4]]`), or an object with the data and, optionally, its shape and datatype
//! (`{"shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}`; perf_analyzer's input files
//! call the data `content`). Used by `nereid infer` and the load generator's input files; not a
//! hot path, so it goes through `serde_json::Value`.

use nereid_protocol::{element_count, DataType, Tensor};

use crate::rest_body::decode_data;

/// A tensor read from JSON, before the caller settles its datatype and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTensor {
    /// The datatype the JSON states, if any.
    pub datatype: Option<DataType>,
    /// The shape the JSON states, if any.
    pub shape: Option<Vec<i64>>,
    /// The shape implied by the nesting of the data.
    pub nested_shape: Vec<i64>,
    /// The elements as one flat JSON array.
    flat: String,
}

impl JsonTensor {
    pub fn parse(value: &serde_json::Value) -> Result<JsonTensor, String> {
        let (data, datatype, shape) = match value {
            serde_json::Value::Object(object) => {
                let data = object
                    .get("data")
                    .or_else(|| object.get("content"))
                    .ok_or("a tensor object needs a \"data\" (or \"content\") field")?;
                let datatype = match object.get("datatype") {
                    None => None,
                    Some(serde_json::Value::String(s)) => Some(
                        DataType::from_wire(s).ok_or_else(|| format!("unknown datatype '{s}'"))?,
                    ),
                    Some(other) => {
                        return Err(format!("\"datatype\" must be a string, got {other}"))
                    }
                };
                let shape = match object.get("shape") {
                    None => None,
                    Some(shape) => Some(
                        serde_json::from_value::<Vec<i64>>(shape.clone())
                            .map_err(|_| "\"shape\" must be an array of integers".to_string())?,
                    ),
                };
                (data, datatype, shape)
            }
            other => (other, None, None),
        };
        let mut nested_shape = Vec::new();
        let mut flat = Vec::new();
        flatten(data, 0, &mut nested_shape, &mut flat)?;
        let flat = serde_json::to_string(&flat).map_err(|e| e.to_string())?;
        Ok(JsonTensor {
            datatype,
            shape,
            nested_shape,
            flat,
        })
    }

    /// The stated shape, else the nesting's.
    pub fn shape(&self) -> &[i64] {
        self.shape.as_deref().unwrap_or(&self.nested_shape)
    }

    /// Number of elements in the data.
    pub fn len(&self) -> usize {
        self.nested_shape.iter().map(|d| *d as usize).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encodes the data as `datatype` under `shape`, whose element count must match the data.
    pub fn to_tensor(
        &self,
        name: &str,
        datatype: DataType,
        shape: Vec<i64>,
    ) -> Result<Tensor, String> {
        let count = element_count(name, &shape).map_err(|e| e.message)?;
        let data = decode_data(&self.flat, datatype, count, name).map_err(|e| match e {
            crate::ClientError::InvalidResponse(m) => m,
            other => other.to_string(),
        })?;
        let tensor = Tensor::new(name, datatype, shape, data);
        crate::check_tensor(&tensor)?;
        Ok(tensor)
    }
}

/// Flattens a nested array, recording its shape and refusing ragged nesting.
fn flatten(
    value: &serde_json::Value,
    depth: usize,
    shape: &mut Vec<i64>,
    flat: &mut Vec<serde_json::Value>,
) -> Result<(), String> {
    match value {
        serde_json::Value::Array(items) => {
            if depth > 64 {
                return Err("data is nested more than 64 deep".into());
            }
            if shape.len() == depth {
                if !flat.is_empty() {
                    return Err("ragged data: an array stands where a value was expected".into());
                }
                shape.push(items.len() as i64);
            } else if shape.len() < depth || shape[depth] != items.len() as i64 {
                return Err(format!(
                    "ragged data: arrays at depth {depth} differ in length"
                ));
            }
            for item in items {
                flatten(item, depth + 1, shape, flat)?;
            }
            Ok(())
        }
        scalar => {
            if shape.len() != depth {
                return Err("ragged data: a value stands where an array was expected".into());
            }
            flat.push(scalar.clone());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JsonTensor, String> {
        JsonTensor::parse(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn nesting_gives_the_shape() {
        let t = parse("[[1, 2, 3], [4, 5, 6]]").unwrap();
        assert_eq!(t.nested_shape, vec![2, 3]);
        assert_eq!(t.len(), 6);
        let tensor = t.to_tensor("x", DataType::Int32, vec![3, 2]).unwrap();
        assert_eq!(tensor.to_vec::<i32>(), vec![1, 2, 3, 4, 5, 6]);
        assert!(t.to_tensor("x", DataType::Int32, vec![7]).is_err());
        assert_eq!(parse("5").unwrap().nested_shape, Vec::<i64>::new());
        assert_eq!(parse("[[], []]").unwrap().len(), 0);
    }

    #[test]
    fn objects_state_shape_and_datatype() {
        let t = parse(r#"{"content": ["a", "b"], "shape": [2, 1], "datatype": "BYTES"}"#).unwrap();
        assert_eq!(
            (t.datatype, t.shape()),
            (Some(DataType::Bytes), &[2i64, 1][..])
        );
        let t = parse(r#"{"data": [1.5], "datatype": "FP16"}"#).unwrap();
        let tensor = t.to_tensor("h", DataType::Fp16, vec![1]).unwrap();
        assert_eq!(&tensor.data[..], &half::f16::from_f32(1.5).to_le_bytes());
    }

    #[test]
    fn refuses_ragged_and_malformed() {
        for bad in [
            "[[1, 2], [3]]",
            "[[1, 2], 3]",
            "[1, [2]]",
            r#"{"shape": [1]}"#,
            r#"{"data": [1], "datatype": "NOPE"}"#,
            r#"{"data": [1], "shape": "x"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let t = parse(r#"["x"]"#).unwrap();
        assert!(t.to_tensor("x", DataType::Fp32, vec![1]).is_err());
    }
}
