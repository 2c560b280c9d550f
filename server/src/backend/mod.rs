//! Execution backends. A [`Backend`] is synchronous and owned by one model instance, which runs
//! it on its own OS thread (see `scheduler`); compute never runs on the async runtime's threads.
//!
//! Each execution receives the batch's inputs in the order of the model config's `input` list,
//! each with its full shape (batch dimension first when `max_batch_size > 0`), and returns
//! every output of the config's `output` list, in that order.

mod argmax;
mod candle;
mod concat;
mod identity;

use std::path::PathBuf;
use std::sync::Arc;

use nereid_protocol::inference::ModelConfig;
use nereid_protocol::{Error, Tensor};

pub trait Backend: Send {
    fn execute(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error>;
}

/// What a backend needs to build one instance.
#[derive(Debug, Clone)]
pub struct LoadContext {
    pub config: Arc<ModelConfig>,
    pub version: u64,
    /// `<repository>/<model>/<version>`.
    pub version_dir: PathBuf,
}

impl LoadContext {
    /// A `parameters` entry of the model config.
    pub fn parameter(&self, key: &str) -> Option<String> {
        self.config
            .parameters
            .get(key)
            .map(|p| p.string_value.clone())
    }
}

pub const BACKENDS: [&str; 4] = ["identity", "candle", "concat", "argmax"];

/// Creates one instance of the model's backend.
pub fn create(ctx: &LoadContext) -> Result<Box<dyn Backend>, Error> {
    match ctx.config.backend.as_str() {
        "identity" => Ok(Box::new(identity::Identity::new(ctx)?)),
        "candle" => Ok(Box::new(candle::CandleBackend::new(ctx)?)),
        "concat" => Ok(Box::new(concat::Concat::new(ctx)?)),
        "argmax" => Ok(Box::new(argmax::Argmax::new(ctx)?)),
        other => {
            let named = if other.is_empty() {
                format!("platform '{}'", ctx.config.platform)
            } else {
                format!("backend '{other}'")
            };
            Err(Error::invalid_arg(format!(
                "unsupported {named} for model '{}'; available backends: {}",
                ctx.config.name,
                BACKENDS.join(", ")
            )))
        }
    }
}
