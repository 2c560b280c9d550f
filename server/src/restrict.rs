//! Restricted APIs (`--http-restricted-api`, `--grpc-restricted-api`), with Triton's syntax
//! `<api>[,<api>...]:<header>=<value>`: the listed API groups answer only requests that carry
//! the header with that value. HTTP refuses with 403; gRPC with UNAVAILABLE, and there the
//! header is sent as gRPC metadata named `triton-grpc-protocol-<header>`, as Triton expects.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// API groups that can be restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
}

impl Api {
    const NAMES: [(&'static str, Api); 9] = [
        ("health", Api::Health),
        ("metadata", Api::Metadata),
        ("inference", Api::Inference),
        ("shared-memory", Api::SharedMemory),
        ("model-config", Api::ModelConfig),
        ("model-repository", Api::ModelRepository),
        ("statistics", Api::Statistics),
        ("trace", Api::Trace),
        ("logging", Api::Logging),
    ];
}

/// One `--*-restricted-api` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    pub apis: Vec<Api>,
    pub header: String,
    pub value: String,
}

impl FromStr for Restriction {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let usage = || format!("'{spec}' is not of the form <api>[,<api>...]:<header>=<value>");
        let (apis, key_value) = spec.split_once(':').ok_or_else(usage)?;
        let (header, value) = key_value.split_once('=').ok_or_else(usage)?;
        if header.is_empty() {
            return Err(usage());
        }
        let apis = apis
            .split(',')
            .map(|name| {
                Api::NAMES
                    .iter()
                    .find(|(n, _)| *n == name.trim())
                    .map(|(_, api)| *api)
                    .ok_or_else(|| {
                        let known: Vec<&str> = Api::NAMES.iter().map(|(n, _)| *n).collect();
                        format!(
                            "unknown API '{name}' in '{spec}'; known: {}",
                            known.join(", ")
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Restriction {
            apis,
            header: header.to_ascii_lowercase(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Restriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} API(s) require header '{}'",
            self.apis.len(),
            self.header
        )
    }
}

/// The restrictions of one protocol.
#[derive(Debug, Clone, Default)]
pub struct Restrictions {
    rules: HashMap<Api, (String, String)>,
}

impl Restrictions {
    /// Builds the rules; an API restricted twice is a configuration error.
    pub fn new(restrictions: &[Restriction]) -> Result<Self, String> {
        let mut rules = HashMap::new();
        for r in restrictions {
            for api in &r.apis {
                if rules
                    .insert(*api, (r.header.clone(), r.value.clone()))
                    .is_some()
                {
                    return Err(format!("API {api:?} is restricted more than once"));
                }
            }
        }
        Ok(Restrictions { rules })
    }

    /// `Err(header)` when `api` is restricted and `lookup(header)` does not give the value.
    pub fn check<'a>(
        &self,
        api: Api,
        lookup: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), String> {
        match self.rules.get(&api) {
            Some((header, value)) if lookup(header) != Some(value.as_str()) => Err(header.clone()),
            _ => Ok(()),
        }
    }

    /// gRPC: the header travels as `triton-grpc-protocol-<header>` metadata.
    pub fn check_grpc(
        &self,
        api: Api,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), tonic::Status> {
        let rule = self.rules.get(&api);
        let Some((header, value)) = rule else {
            return Ok(());
        };
        let key = format!("triton-grpc-protocol-{header}");
        let given = metadata.get(key.as_str()).and_then(|v| v.to_str().ok());
        if given == Some(value.as_str()) {
            Ok(())
        } else {
            Err(tonic::Status::unavailable(format!(
                "This protocol is restricted, expecting header '{key}'"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tritons_syntax() {
        let r: Restriction = "model-repository,statistics:Admin-Key=secret"
            .parse()
            .unwrap();
        assert_eq!(r.apis, vec![Api::ModelRepository, Api::Statistics]);
        assert_eq!(
            (r.header.as_str(), r.value.as_str()),
            ("admin-key", "secret")
        );
        assert!("model-repository".parse::<Restriction>().is_err());
        assert!("bogus:k=v"
            .parse::<Restriction>()
            .unwrap_err()
            .contains("unknown API 'bogus'"));
    }

    #[test]
    fn checks_the_header_value() {
        let rules = Restrictions::new(&["inference:k=v".parse().unwrap()]).unwrap();
        assert!(rules.check(Api::Inference, |_| Some("v")).is_ok());
        assert_eq!(
            rules.check(Api::Inference, |_| Some("w")),
            Err("k".to_string())
        );
        assert_eq!(rules.check(Api::Inference, |_| None), Err("k".to_string()));
        assert!(rules.check(Api::Health, |_| None).is_ok());
        assert!(Restrictions::new(&[
            "inference:a=b".parse().unwrap(),
            "inference:c=d".parse().unwrap()
        ])
        .is_err());
    }
}
