//! Where data lives: a local path or an object-storage URL.
//!
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (or `azure://`) and
//! `file:///absolute/path` name a prefix in an object store; any other `scheme://` value is an
//! error; anything else is a local path. The feature store ([`crate::store`]) and the server's
//! remote model repositories both open their locations here, so the two accept the same URLs and
//! read the same settings.
//!
//! Credentials and settings come from the providers' standard environment variables, read by the
//! object_store builders' `from_env` (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, ...;
//! `GOOGLE_SERVICE_ACCOUNT`, ...; `AZURE_STORAGE_ACCOUNT_NAME`, ...). S3 uses region `us-east-1`
//! unless `AWS_REGION` names the bucket's region (it is not discovered). Azure needs the account:
//! `az://container@account.blob.core.windows.net/prefix` or `AZURE_STORAGE_ACCOUNT_NAME`.
//! Nothing here touches the network: a wrong bucket or missing credentials show up at the first
//! request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

/// The URL schemes [`Location::parse`] accepts, for messages.
pub const SCHEMES: &str = "s3://, gs://, az://, azure://, file://";

/// Why a location could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("invalid URL '{url}': {reason}")]
    Invalid { url: String, reason: String },

    #[error("unsupported URL scheme '{scheme}://' in '{url}' (supported: {SCHEMES})")]
    UnsupportedScheme { url: String, scheme: String },

    #[error("cannot open {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
}

/// A prefix in an object store.
#[derive(Clone)]
pub struct ObjectLocation {
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside `store` (root for a bucket without a path).
    pub prefix: ObjectPath,
    /// The URL as the user gave it, for messages.
    pub url: String,
    /// For `file://` URLs, the directory the prefix names.
    pub local_dir: Option<PathBuf>,
}

impl fmt::Debug for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectLocation")
            .field("url", &self.url)
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl ObjectLocation {
    /// The object `key` (`/`-separated, relative) below the prefix.
    pub fn child(&self, key: &str) -> ObjectPath {
        key.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// `url/key`, for messages.
    pub fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.url.trim_end_matches('/'))
    }
}

/// A local path or an object-store prefix.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    Object(ObjectLocation),
}

impl Location {
    /// Parses a path or URL (see the module documentation).
    pub fn parse(value: &str) -> Result<Location, LocationError> {
        match split_scheme(value) {
            None => Ok(Location::Local(PathBuf::from(value))),
            Some((scheme, rest)) => open_url(value, &scheme, rest).map(Location::Object),
        }
    }

    /// Whether `value` is a URL rather than a path.
    pub fn is_url(value: &str) -> bool {
        split_scheme(value).is_some()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Object(o) => f.write_str(&o.url),
        }
    }
}

/// `("s3", "bucket/prefix")` for `s3://bucket/prefix`, when `value` starts with a URL scheme.
fn split_scheme(value: &str) -> Option<(String, &str)> {
    let (scheme, rest) = value.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let is_scheme = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    is_scheme.then(|| (scheme.to_ascii_lowercase(), rest))
}

fn open_url(url: &str, scheme: &str, rest: &str) -> Result<ObjectLocation, LocationError> {
    let invalid = |reason: &str| LocationError::Invalid {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if rest.contains(['?', '#']) {
        return Err(invalid(
            "query strings and fragments are not supported; configure the store with its \
             environment variables",
        ));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = ObjectPath::from_url_path(path).map_err(|e| invalid(&e.to_string()))?;
    let store_error = |source| LocationError::Store {
        url: url.to_string(),
        source,
    };
    let mut local_dir = None;
    let store: Arc<dyn ObjectStore> = match scheme {
        "file" => {
            if !(authority.is_empty() || authority.eq_ignore_ascii_case("localhost")) {
                return Err(invalid(
                    "a file URL needs an absolute path: file:///path/to/it",
                ));
            }
            local_dir = Some(Path::new("/").join(prefix.as_ref()));
            Arc::new(LocalFileSystem::new())
        }
        "s3" | "gs" | "az" | "azure" if authority.is_empty() => {
            return Err(invalid("the bucket (container) name is missing"));
        }
        "s3" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(store_error)?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(store_error)?,
        ),
        "az" | "azure" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(store_error)?,
        ),
        _ => {
            return Err(LocationError::UnsupportedScheme {
                url: url.to_string(),
                scheme: scheme.to_string(),
            })
        }
    };
    Ok(ObjectLocation {
        store,
        prefix,
        url: url.to_string(),
        local_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls() {
        assert!(matches!(
            Location::parse("feature-store").expect("path"),
            Location::Local(p) if p == Path::new("feature-store")
        ));
        assert!(matches!(
            Location::parse("C:/data").expect("drive letter path"),
            Location::Local(_)
        ));
        let Location::Object(o) = Location::parse("file:///tmp/some/store").expect("file") else {
            panic!("file URL is an object location");
        };
        assert_eq!(o.prefix.as_ref(), "tmp/some/store");
        assert_eq!(o.local_dir.as_deref(), Some(Path::new("/tmp/some/store")));
        assert_eq!(
            o.child("versions/a.json").as_ref(),
            "tmp/some/store/versions/a.json"
        );
        assert_eq!(o.describe("STORE"), "file:///tmp/some/store/STORE");
        let Location::Object(s3) = Location::parse("s3://bucket/prefix/x").expect("s3") else {
            panic!("s3 URL is an object location");
        };
        assert_eq!(s3.prefix.as_ref(), "prefix/x");
        assert!(Location::is_url("gs://b") && !Location::is_url("./a://b"));
    }

    #[test]
    fn bad_urls_say_why() {
        let err = |v: &str| Location::parse(v).expect_err(v).to_string();
        assert!(err("ftp://host/x").contains("unsupported URL scheme 'ftp://'"));
        assert!(err("s3:///x").contains("bucket (container) name is missing"));
        assert!(err("file://host/x").contains("absolute path"));
        assert!(err("s3://b/x?region=y").contains("query strings"));
    }
}
