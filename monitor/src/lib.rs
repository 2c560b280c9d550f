//! Nereid's monitors: what a served model version sees, compared with what it was trained on.
//!
//! Pure statistics: no server, no Arrow, no threads. The server hands each sampled request's
//! tensors to a [`Monitor`]; it turns rows into column values, fills windows, and when a window
//! closes runs the drift tests ([`stattest`]) and data-quality checks ([`quality`]) against the
//! version's [`Reference`] and returns a [`DriftReport`]. Ground-truth feedback feeds
//! [`performance`]; [`log`] writes and reads the prediction log that both feedback and
//! retraining read.
//!
//! ```text
//! reference.json ──> Reference ──┐
//!                                v
//! sampled request ──> Monitor: rows -> columns -> window ──(closes)──> tests + quality -> DriftReport
//!        │
//!        └──> prediction log segments ──> export as a dataset version; feedback joins by id
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod distribution;
pub mod feedback;
pub mod log;
pub mod monitor;
pub mod performance;
pub mod profile;
pub mod quality;
pub mod reference;
pub mod report;
pub mod simulate;
pub mod special;
pub mod stattest;

pub use config::{MonitorConfig, WindowSpec};
pub use monitor::{Layout, Monitor, Observed, Predicted, Sample, TensorInfo};
pub use reference::{Reference, Task};
pub use report::DriftReport;
