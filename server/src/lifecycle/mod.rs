//! The lifecycle hooks on the serving path: per model version, a monitor tap that samples
//! served requests off the request path ([`tap`]), the prediction log and ground-truth
//! feedback it keeps, and the drift page ([`page`]). The statistics live in `nereid-monitor`;
//! this module only feeds it and shows what it reports.

pub mod page;
pub mod tap;

pub use tap::{MonitorSettings, VersionMonitor};
