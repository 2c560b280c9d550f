//! Nereid's model lifecycle on the training side: the dense model architectures that both
//! training and serving run, reproducible training of classifiers, and publishing trained models
//! into a Triton-layout model repository.
//!
//! Data flow:
//!
//! ```text
//! features + labels ──train::train_classifier──> TrainedModel (tensors + metrics + split)
//!        (seeded split, training-split standardisation, AdamW, early stopping)
//!                                                    │
//!                     publish::write_model_version   ▼
//! <repo>/<model>/config.pbtxt, labels.txt, <version>/model.safetensors  (atomic rename)
//!                                                    │
//!                     model::DenseModel::load        ▼
//! the server's `candle` backend: ArchitectureSpec from config `parameters` + weights -> forward
//! ```
//!
//! - [`model`] owns the file contract (`normalize.*`, `layers.{i}.*` tensor names) and the
//!   `nereid.*` config parameters that name an architecture; it is the only place either is read.
//! - [`train`] produces tensors under exactly those names, and measures its metrics through
//!   [`model::DenseModel`], so a trained model is checked the way it will be served.
//! - [`publish`] writes a version so that a polling server never sees half of it.
//!
//! Everything here is synchronous; callers in async code run it on a blocking thread.

#![forbid(unsafe_code)]

pub mod model;
pub mod publish;
pub mod train;

pub use model::{
    Activation, Architecture, ArchitectureSpec, DenseModel, ModelError, OutputActivation,
};
pub use publish::{publish_directory, write_model_version, PublishError};
pub use train::{train_classifier, Metrics, SplitMetrics, TrainConfig, TrainError, TrainedModel};
