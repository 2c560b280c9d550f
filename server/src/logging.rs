//! The logging extension (`GET|POST /v2/logging`, gRPC `LogSettings`): the log levels a running
//! server emits, changed without a restart, in Triton's terms.
//!
//! Triton's settings map onto one level filter for the server's `tracing` output: `log_error`,
//! `log_warning` and `log_info` switch those levels on, and `log_verbose_level` 1 adds debug
//! messages, 2 and above trace messages. The filter is applied through a hook that the binary
//! installs (a reloadable filter layer); without one (a server embedded in tests), the settings
//! are kept and reported but change nothing. Log lines go to stderr, as text with ISO 8601
//! (RFC 3339) timestamps (`log_format` `ISO8601`) or as JSON (`json`), chosen by `--log-format`
//! at start; `log_file` is empty. Requests to change either are refused, as Triton refuses to
//! move its log file.

use std::fmt;
use std::sync::{Arc, Mutex};

use nereid_protocol::Error;

/// Applies a level filter (`tracing` directive syntax, e.g. `warn` or `debug`).
pub type ApplyFilter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The hook that applies a filter to the process's logging.
#[derive(Clone)]
pub struct LogHook(pub ApplyFilter);

impl fmt::Debug for LogHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LogHook")
    }
}

/// Triton's log settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub info: bool,
    pub warning: bool,
    pub error: bool,
    pub verbose_level: u32,
    /// The form of the log lines (`--log-format`): [`LOG_FORMAT`] or `json`; fixed at start.
    pub format: &'static str,
}

impl Default for LogSettings {
    /// Triton's defaults (and Nereid's `NEREID_LOG=info`).
    fn default() -> Self {
        LogSettings {
            info: true,
            warning: true,
            error: true,
            verbose_level: 0,
            format: LOG_FORMAT,
        }
    }
}

/// The text form of log lines, as `log_format` reports it (lines with ISO 8601 timestamps).
pub const LOG_FORMAT: &str = "ISO8601";

impl LogSettings {
    /// The settings a plain level name stands for (`NEREID_LOG=warn` and so on); `None` for a
    /// more detailed directive, which the settings cannot express.
    pub fn from_level(level: &str) -> Option<Self> {
        let all = LogSettings::default();
        Some(match level.trim().to_ascii_lowercase().as_str() {
            "trace" => LogSettings {
                verbose_level: 2,
                ..all
            },
            "debug" => LogSettings {
                verbose_level: 1,
                ..all
            },
            "info" => all,
            "warn" | "warning" => LogSettings { info: false, ..all },
            "error" => LogSettings {
                info: false,
                warning: false,
                ..all
            },
            "off" => LogSettings {
                info: false,
                warning: false,
                error: false,
                ..all
            },
            _ => return None,
        })
    }

    /// The `tracing` filter these settings stand for (the most verbose level switched on).
    pub fn filter(&self) -> &'static str {
        match self.verbose_level {
            2.. => "trace",
            1 => "debug",
            0 if self.info => "info",
            0 if self.warning => "warn",
            0 if self.error => "error",
            _ => "off",
        }
    }
}

/// One change request, with each setting optional (as both protocols send them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogUpdate {
    pub file: Option<String>,
    pub info: Option<bool>,
    pub warning: Option<bool>,
    pub error: Option<bool>,
    pub verbose_level: Option<u32>,
    pub format: Option<String>,
}

/// The server's log settings and the hook that applies them.
#[derive(Debug)]
pub struct LogControl {
    settings: Mutex<LogSettings>,
    hook: Option<LogHook>,
}

impl LogControl {
    pub fn new(initial: LogSettings, hook: Option<LogHook>) -> Self {
        LogControl {
            settings: Mutex::new(initial),
            hook,
        }
    }

    pub fn settings(&self) -> LogSettings {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `update` (all of it or, on an error, none of it) and returns the new settings.
    pub fn update(&self, update: &LogUpdate) -> Result<LogSettings, Error> {
        if update.file.as_deref().is_some_and(|f| !f.is_empty()) {
            return Err(Error::unsupported(
                "log file location can not be updated through network protocol",
            ));
        }
        let mut settings = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(format) = update.format.as_deref() {
            if format != settings.format {
                return Err(Error::unsupported(format!(
                    "invalid argument for --log_format, got: {format} (this server's log lines are {}, set by --log-format at start)",
                    settings.format
                )));
            }
        }
        let mut next = *settings;
        next.info = update.info.unwrap_or(next.info);
        next.warning = update.warning.unwrap_or(next.warning);
        next.error = update.error.unwrap_or(next.error);
        next.verbose_level = update.verbose_level.unwrap_or(next.verbose_level);
        if let Some(hook) = &self.hook {
            (hook.0)(next.filter())
                .map_err(|e| Error::internal(format!("failed to change the log settings: {e}")))?;
        }
        *settings = next;
        Ok(next)
    }
}

impl Default for LogControl {
    fn default() -> Self {
        LogControl::new(LogSettings::default(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_to_one_filter() {
        assert_eq!(LogSettings::default().filter(), "info");
        assert_eq!(LogSettings::from_level("WARN").unwrap().filter(), "warn");
        assert_eq!(LogSettings::from_level("debug").unwrap().filter(), "debug");
        assert_eq!(LogSettings::from_level("off").unwrap().filter(), "off");
        assert_eq!(LogSettings::from_level("nereid_server=debug"), None);
        let only_errors = LogSettings {
            info: false,
            warning: false,
            ..LogSettings::default()
        };
        assert_eq!(only_errors.filter(), "error");
        let verbose = LogSettings {
            verbose_level: 3,
            info: false,
            ..LogSettings::default()
        };
        assert_eq!(verbose.filter(), "trace");
    }

    #[test]
    fn updates_apply_through_the_hook_or_not_at_all() {
        let applied = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&applied);
        let control = LogControl::new(
            LogSettings::default(),
            Some(LogHook(Arc::new(move |filter| {
                seen.lock().unwrap().push(filter.to_string());
                Ok(())
            }))),
        );
        let next = control
            .update(&LogUpdate {
                verbose_level: Some(1),
                ..LogUpdate::default()
            })
            .unwrap();
        assert_eq!(next.verbose_level, 1);
        control
            .update(&LogUpdate {
                verbose_level: Some(0),
                info: Some(false),
                ..LogUpdate::default()
            })
            .unwrap();
        assert_eq!(*applied.lock().unwrap(), ["debug", "warn"]);

        let err = control
            .update(&LogUpdate {
                file: Some("/tmp/x.log".into()),
                info: Some(true),
                ..LogUpdate::default()
            })
            .unwrap_err();
        assert_eq!(
            err.message,
            "log file location can not be updated through network protocol"
        );
        let err = control
            .update(&LogUpdate {
                format: Some("default".into()),
                ..LogUpdate::default()
            })
            .unwrap_err();
        assert!(err
            .message
            .starts_with("invalid argument for --log_format, got: default"));
        assert!(!control.settings().info, "a refused update changes nothing");
        assert_eq!(applied.lock().unwrap().len(), 2);
    }
}
