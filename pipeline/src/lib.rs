//! Nereid's model lifecycle on the training side: the feature store, the dense model
//! architectures that both training and serving run, reproducible and tracked training, the
//! pipeline runner, the promotion gate and publishing into a Triton-layout model repository.
//!
//! Data flow:
//!
//! ```text
//! CSV / Parquet / JSON lines ──store::FeatureStore::ingest──> dataset version
//!            (Parquet; sha256 id, schema, statistics profile, parents)
//!     join::build_training_set (point-in-time) ──> dataset version (parents: its inputs)
//!                                                    │
//!                     training::train_from_dataset   ▼   (run record: tracking, mlflow mirror)
//!     features + targets ──train::train──> TrainedModel ──> run artifacts
//!                                                    │
//!               gate::evaluate / gate::gate          ▼   (candidate vs published, same rows)
//!                     gate::publish ─ publish::publish_next_version (atomic rename)
//! <repo>/<model>/config.pbtxt, labels.txt,
//!     <version>/{model.safetensors, reference.json, lineage.json}
//!                                                    │
//!                     model::DenseModel::load        ▼
//! the server's `candle` backend: ArchitectureSpec from config `parameters` + weights -> forward
//! ```
//!
//! - [`store`] owns the feature-store layout and catalog, kept through [`storage`] (read,
//!   create-if-absent, list) in a local directory or on object storage ([`location`] parses
//!   paths and `s3://`/`gs://`/`az://`/`file://` URLs, for the server's remote repositories
//!   too); [`profile`] the statistics profiles; [`join`] feature views and point-in-time joins.
//! - [`model`] owns the file contract (`normalize.*`, `layers.{i}.*` tensor names) and the
//!   `nereid.*` config parameters that name an architecture; it is the only place either is read.
//! - [`train`] produces tensors under exactly those names, and measures its metrics through
//!   [`model::DenseModel`], so a trained model is checked the way it will be served;
//!   [`training`] feeds it from a dataset version and tracks the run ([`tracking`], [`mlflow`]).
//! - [`runner`] executes pipeline files (a DAG of cached, retried steps; [`validate`] checks
//!   data); [`gate`] evaluates, gates and publishes; [`publish`] writes a version so that a
//!   polling server never sees half of it; [`repository`] reads and publishes the same way in
//!   a local directory or on object storage. [`cli`] holds the `nereid features|train|pipeline`
//!   commands.
//! - [`triggers`] decides when to retrain (drift, schedule, new data, live metrics), runs the
//!   action (a pipeline run in a child process, a webhook, an Airflow DAG run) and records every
//!   firing; the server feeds it its monitors' reports.
//!
//! Everything here is synchronous; callers in async code run it on a blocking thread.

#![forbid(unsafe_code)]

pub mod cli;
pub mod gate;
pub mod join;
pub mod lineage;
pub mod location;
pub mod mlflow;
pub mod model;
pub mod monitoring;
pub mod production;
pub mod profile;
pub mod publish;
pub mod repository;
pub mod runner;
pub mod storage;
pub mod store;
pub mod tracking;
pub mod train;
pub mod training;
pub mod triggers;
pub(crate) mod util;
pub mod validate;

pub use model::{
    Activation, Architecture, ArchitectureSpec, DenseModel, ModelError, OutputActivation,
};
pub use publish::{
    model_versions, publish_directory, publish_next_version, write_model_version, PublishError,
};
pub use store::{DatasetVersion, FeatureStore, IngestOptions, StoreError};
pub use train::{
    train, train_classifier, train_regressor, Metrics, Quality, SplitMetrics, Targets, Task,
    TrainConfig, TrainError, TrainedModel,
};
