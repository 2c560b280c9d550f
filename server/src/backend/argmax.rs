//! `argmax`: turns one FP32 score vector per row into the winning class. The first output
//! (BYTES `[1]`) carries the label from its `label_filename` (or the index as text without one);
//! an optional second output (INT64 `[1]`) carries the index. Ties go to the lower index; NaN
//! never wins.

use nereid_protocol::{encode_bytes_elements, DataType, Error, Tensor};

use super::{Backend, LoadContext};

pub struct Argmax {
    classes: usize,
    labels: Option<Vec<String>>,
    label_output: String,
    index_output: Option<String>,
}

impl Argmax {
    pub fn new(ctx: &LoadContext) -> Result<Self, Error> {
        let config = &ctx.config;
        let invalid =
            |msg: &str| Error::invalid_arg(format!("argmax model '{}': {msg}", config.name));
        let [input] = config.input.as_slice() else {
            return Err(invalid("needs exactly one input"));
        };
        let classes = match (DataType::from_config(input.data_type), &input.dims[..]) {
            (Some(DataType::Fp32), [c]) if *c > 0 => *c as usize,
            _ => {
                return Err(invalid(
                    "the input must be TYPE_FP32 with fixed dims [classes]",
                ))
            }
        };
        if config.max_batch_size == 0 {
            return Err(invalid("needs max_batch_size > 0"));
        }
        let (label, index) = match config.output.as_slice() {
            [label] => (label, None),
            [label, index] => (label, Some(index)),
            _ => return Err(invalid("needs one or two outputs: the label (TYPE_STRING [1]), then optionally the index (TYPE_INT64 [1])")),
        };
        if DataType::from_config(label.data_type) != Some(DataType::Bytes) || label.dims[..] != [1]
        {
            return Err(invalid(&format!(
                "output '{}' must be TYPE_STRING with dims [1]",
                label.name
            )));
        }
        if let Some(index) = index {
            if DataType::from_config(index.data_type) != Some(DataType::Int64)
                || index.dims[..] != [1]
            {
                return Err(invalid(&format!(
                    "output '{}' must be TYPE_INT64 with dims [1]",
                    index.name
                )));
            }
        }
        let labels = if label.label_filename.is_empty() {
            None
        } else {
            let path = ctx
                .version_dir
                .parent()
                .map(|model_dir| model_dir.join(&label.label_filename));
            let path = path.ok_or_else(|| invalid("cannot locate the label file"))?;
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(&format!("failed to read {}: {e}", path.display())))?;
            Some(text.lines().map(str::to_owned).collect())
        };
        Ok(Argmax {
            classes,
            labels,
            label_output: label.name.clone(),
            index_output: index.map(|i| i.name.clone()),
        })
    }
}

/// Index of the largest value; ties keep the lower index and NaN never wins.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if !v.is_nan() && (row[best].is_nan() || *v > row[best]) {
            best = i;
        }
    }
    best
}

impl Backend for Argmax {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let input = inputs
            .first()
            .ok_or_else(|| Error::internal("argmax called without an input. This is a bug."))?;
        let scores: Vec<f32> = input.to_vec();
        let winners: Vec<usize> = scores.chunks(self.classes).map(argmax).collect();
        let batch = winners.len() as i64;
        let names: Vec<String> = winners
            .iter()
            .map(|&i| match self.labels.as_ref().and_then(|l| l.get(i)) {
                Some(label) => label.clone(),
                None => i.to_string(),
            })
            .collect();
        let mut outputs = vec![Tensor::new(
            self.label_output.clone(),
            DataType::Bytes,
            vec![batch, 1],
            encode_bytes_elements(&names),
        )];
        if let Some(name) = &self.index_output {
            let indices: Vec<i64> = winners.iter().map(|&i| i as i64).collect();
            outputs.push(Tensor::new(
                name.clone(),
                DataType::Int64,
                vec![batch, 1],
                bytes::Bytes::copy_from_slice(bytemuck::cast_slice(&indices)),
            ));
        }
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn ties_and_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[0.5, 0.5]), 0);
        assert_eq!(argmax(&[f32::NAN, 0.1]), 1);
        assert_eq!(argmax(&[0.1, f32::NAN, 0.3]), 2);
    }
}
