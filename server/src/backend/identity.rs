//! `identity`: returns input *i* as output *i*, for every datatype. Used to measure protocol and
//! scheduling overhead with no compute in the way.

use nereid_protocol::{DataType, Error, Tensor};

use super::{Backend, LoadContext};

pub struct Identity {
    output_names: Vec<String>,
}

impl Identity {
    pub fn new(ctx: &LoadContext) -> Result<Self, Error> {
        let config = &ctx.config;
        if config.input.len() != config.output.len() {
            return Err(Error::invalid_arg(format!(
                "identity model '{}' needs as many outputs as inputs ({} inputs, {} outputs)",
                config.name,
                config.input.len(),
                config.output.len()
            )));
        }
        for (input, output) in config.input.iter().zip(&config.output) {
            if DataType::from_config(input.data_type) != DataType::from_config(output.data_type) {
                return Err(Error::invalid_arg(format!(
                    "identity model '{}': output '{}' must have the datatype of input '{}'",
                    config.name, output.name, input.name
                )));
            }
        }
        Ok(Identity {
            output_names: config.output.iter().map(|o| o.name.clone()).collect(),
        })
    }
}

impl Backend for Identity {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        Ok(inputs
            .into_iter()
            .zip(&self.output_names)
            .map(|(tensor, name)| Tensor {
                name: name.clone(),
                ..tensor
            })
            .collect())
    }
}
