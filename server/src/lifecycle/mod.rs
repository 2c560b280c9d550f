//! The lifecycle hooks on the serving path: per model version, a monitor tap that samples
//! served requests off the request path ([`tap`]), the prediction log and ground-truth
//! feedback it keeps, and the drift page ([`page`]); and the monitors as the source that
//! retraining triggers watch ([`triggers`]). The statistics live in `nereid-monitor`, the
//! triggers in `nereid-pipeline`; this module only feeds them and shows what they report.

pub mod page;
pub mod tap;
pub mod triggers;

pub use tap::{MonitorSettings, VersionMonitor};
