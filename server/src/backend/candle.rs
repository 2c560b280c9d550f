//! `candle`: dense models (linear, logistic, softmax regression, MLP) on CPU with candle.
//!
//! Weights come from `<version>/model.safetensors`; the architecture is named in the config's
//! `parameters` (`nereid.architecture`, `nereid.activation`, `nereid.output_activation`) and the
//! layer sizes are read from the weight shapes. The model takes one FP32 input `[batch, F]` and
//! returns one FP32 output `[batch, C]`.

use candle_core::{Device, Tensor as CandleTensor};
use nereid_pipeline::model::{ArchitectureSpec, DenseModel};
use nereid_protocol::{DataType, Error, Tensor};

use super::{Backend, LoadContext};

pub struct CandleBackend {
    model: DenseModel,
    output_name: String,
    device: Device,
}

impl CandleBackend {
    pub fn new(ctx: &LoadContext) -> Result<Self, Error> {
        let config = &ctx.config;
        let name = &config.name;
        let invalid = |msg: String| Error::invalid_arg(format!("model '{name}': {msg}"));
        if config.input.len() != 1 || config.output.len() != 1 {
            return Err(invalid(
                "the candle backend serves models with exactly one input and one output".into(),
            ));
        }
        let (input, output) = (&config.input[0], &config.output[0]);
        for (kind, tensor_name, dt) in [
            ("input", &input.name, input.data_type),
            ("output", &output.name, output.data_type),
        ] {
            if DataType::from_config(dt) != Some(DataType::Fp32) {
                return Err(invalid(format!(
                    "{kind} '{tensor_name}' must be TYPE_FP32 for the candle backend"
                )));
            }
        }
        if config.max_batch_size == 0 || input.dims.len() != 1 || output.dims.len() != 1 {
            return Err(invalid("the candle backend needs max_batch_size > 0 and one-dimensional dims ([features] and [outputs])".into()));
        }
        let spec = ArchitectureSpec::from_parameters(|key| ctx.parameter(key))
            .map_err(|e| invalid(e.to_string()))?;
        let device = Device::Cpu;
        let path = ctx.version_dir.join("model.safetensors");
        let model = DenseModel::load(&path, spec, &device).map_err(|e| invalid(e.to_string()))?;
        let (features, classes) = (
            model.input_features() as i64,
            model.output_features() as i64,
        );
        if input.dims[0] != features || output.dims[0] != classes {
            return Err(invalid(format!(
                "weights in {} map [{features}] to [{classes}], but the config declares input dims [{}] and output dims [{}]",
                path.display(),
                input.dims[0],
                output.dims[0]
            )));
        }
        Ok(CandleBackend {
            model,
            output_name: output.name.clone(),
            device,
        })
    }
}

impl Backend for CandleBackend {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let input = inputs.into_iter().next().ok_or_else(|| {
            Error::internal("candle backend called without an input. This is a bug.")
        })?;
        let batch = input.shape.first().copied().unwrap_or(0) as usize;
        let values: Vec<f32> = input.to_vec();
        let compute = || -> candle_core::Result<Vec<f32>> {
            let x =
                CandleTensor::from_vec(values, (batch, self.model.input_features()), &self.device)?;
            self.model.forward(&x)?.flatten_all()?.to_vec1::<f32>()
        };
        let out =
            compute().map_err(|e| Error::internal(format!("candle execution failed: {e}")))?;
        Ok(vec![Tensor::from_f32(
            self.output_name.clone(),
            vec![batch as i64, self.model.output_features() as i64],
            &out,
        )])
    }
}
