//! `concat`: joins every input along its last dimension into the one output, row by row
//! (feature assembly: separately named features in, one feature vector out). All inputs share
//! the output's fixed-size datatype and have one-dimensional dims; the output's dims are their
//! sum.

use bytes::BytesMut;
use nereid_protocol::{DataType, Error, Tensor};

use super::{Backend, LoadContext};

pub struct Concat {
    output_name: String,
    element_size: usize,
    /// Elements each input contributes per row.
    widths: Vec<usize>,
}

impl Concat {
    pub fn new(ctx: &LoadContext) -> Result<Self, Error> {
        let config = &ctx.config;
        let invalid =
            |msg: &str| Error::invalid_arg(format!("concat model '{}': {msg}", config.name));
        let [output] = config.output.as_slice() else {
            return Err(invalid("needs exactly one output"));
        };
        let datatype = DataType::from_config(output.data_type)
            .ok_or_else(|| invalid("output has no data_type"))?;
        let element_size = datatype
            .element_size()
            .ok_or_else(|| invalid("BYTES tensors cannot be concatenated"))?;
        if config.max_batch_size == 0 || config.input.is_empty() {
            return Err(invalid("needs max_batch_size > 0 and at least one input"));
        }
        let mut widths = Vec::with_capacity(config.input.len());
        for input in &config.input {
            if DataType::from_config(input.data_type) != Some(datatype) {
                return Err(invalid(&format!(
                    "input '{}' must have the output's datatype {datatype}",
                    input.name
                )));
            }
            match input.dims[..] {
                [d] if d > 0 => widths.push(d as usize),
                _ => {
                    return Err(invalid(&format!(
                        "input '{}' must have fixed one-dimensional dims",
                        input.name
                    )))
                }
            }
        }
        if output.dims[..] != [widths.iter().sum::<usize>() as i64] {
            return Err(invalid(&format!(
                "output dims must be [{}], the sum of the input widths",
                widths.iter().sum::<usize>()
            )));
        }
        Ok(Concat {
            output_name: output.name.clone(),
            element_size,
            widths,
        })
    }
}

impl Backend for Concat {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let batch = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(0) as usize;
        let row: usize = self.widths.iter().sum();
        let mut out = BytesMut::with_capacity(batch * row * self.element_size);
        for r in 0..batch {
            for (input, width) in inputs.iter().zip(&self.widths) {
                let bytes = width * self.element_size;
                out.extend_from_slice(&input.data[r * bytes..(r + 1) * bytes]);
            }
        }
        let datatype = inputs.first().map_or(DataType::Fp32, |t| t.datatype);
        Ok(vec![Tensor::new(
            self.output_name.clone(),
            datatype,
            vec![batch as i64, row as i64],
            out.freeze(),
        )])
    }
}
