//! The feature store: immutable, content-addressed dataset versions kept as Parquet, with a small
//! catalog of separate files.
//!
//! A store lives in a local directory or under an object-storage prefix (`s3://`, `gs://`,
//! `az://`, `file://`; see [`crate::location`]), through the same code: [`crate::storage`] gives
//! both the three operations this layout needs (read, create-if-absent, list).
//!
//! Layout (every file is created whole and never rewritten: locally a temporary file, fsync, then
//! a hard link; on object storage a `PutMode::Create` upload):
//!
//! ```text
//! STORE                              marker: {"format": 1}
//! objects/<id>/data.parquet          the data of version <id> (never modified)
//! versions/<id>.json                 catalog entry: schema, profile, parents, files + hashes, ...
//! datasets/<name>/<seq>.json         index: the <seq>-th version of dataset <name> -> <id>
//! ```
//!
//! Data flow of a new version: source file (CSV / Parquet / JSON lines) -> Arrow `RecordBatch`
//! (arrow-rs readers; schema inferred or given) -> Parquet encoded in memory -> id = SHA-256 over
//! the sorted `(file, sha256, size)` list -> `objects/<id>/data.parquet` created (if it already
//! exists, its hash is checked instead) -> `versions/<id>.json` created (never rewritten) ->
//! index entry `datasets/<name>/<seq>.json` created if absent (a writer that loses the race for
//! `<seq>` takes the next number). A crash at any point leaves at most unreferenced objects; the
//! catalog never references a half-written version. Ingesting identical content again yields the
//! same id and reuses the stored files and entry.
//!
//! Concurrency: any number of processes may read and write one store; nothing is locked and
//! nothing is updated in place, so create-if-absent is the only guarantee the storage must give
//! (S3 gives it with conditional puts, `If-None-Match`).
//!
//! References to versions (`resolve`): `NAME` (latest), `NAME@SEQ` (the SEQ-th, 1-based),
//! `NAME@ID-PREFIX`, or an id prefix of at least 6 hex digits.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::location::{Location, LocationError};
use crate::profile::{profile_batch, profiles_match, Profile};
use crate::storage::Storage;
use crate::util::{is_safe_name, now_rfc3339, sha256_file, sha256_hex, to_json_pretty};

/// Version of the on-disk layout.
pub const STORE_FORMAT: u32 = 1;
const MARKER: &str = "STORE";
const OBJECTS: &str = "objects";
const VERSIONS: &str = "versions";
const DATASETS: &str = "datasets";
/// The one data file of a version.
pub const DATA_FILE: &str = "data.parquet";
const MIN_ID_PREFIX: usize = 6;
/// Rows per Parquet row group and per batch read from sources.
const BATCH_ROWS: usize = 64 * 1024;

/// Why a feature-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} is not a feature store (no {MARKER} file); `nereid features ingest` creates one", .0.display())]
    NotAStore(PathBuf),

    #[error(transparent)]
    Location(#[from] LocationError),

    #[error("{} holds feature-store format {found}, this build reads format {STORE_FORMAT}", path.display())]
    UnsupportedFormat { path: PathBuf, found: u32 },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot tell the format of {}: use a .csv, .tsv, .parquet, .jsonl or .ndjson name or give the format", .0.display())]
    UnknownFormat(PathBuf),

    #[error("cannot read {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },

    #[error("{} does not match the expected schema:\n  {}", path.display(), problems.join("\n  "))]
    SchemaMismatch {
        path: PathBuf,
        problems: Vec<String>,
    },

    #[error("{}: the dataset has no rows; an empty dataset version is never stored", path.display())]
    Empty { path: PathBuf },

    #[error(
        "invalid dataset name `{0}`: use letters, digits, `_`, `-` and `.`, not starting with `.`"
    )]
    InvalidName(String),

    #[error("invalid schema: {0}")]
    InvalidSchema(String),

    #[error("no dataset version matches `{0}`")]
    NotFound(String),

    #[error("`{reference}` is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },

    #[error("dataset version {id} is corrupted:\n  {}", problems.join("\n  "))]
    Corrupt { id: String, problems: Vec<String> },

    #[error("cannot read the data of dataset version {id}: {message} (`nereid features verify {id}` checks it)")]
    ReadData { id: String, message: String },

    #[error("catalog file {} is not valid: {source}", path.display())]
    BadEntry {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(transparent)]
    Arrow(#[from] ArrowError),

    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One column of a dataset's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    /// Arrow data type, as Arrow prints it (and parses it back).
    pub data_type: String,
    pub nullable: bool,
}

/// A file of a version, with the hash it had when the version was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the version's object folder.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// How a version came to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Derivation {
    /// Read from a file.
    Ingest {
        source: String,
        format: SourceFormat,
        source_sha256: String,
        explicit_schema: bool,
    },
    /// Built by a point-in-time join (the spec is [`crate::join::JoinSpec`]).
    Join { spec: serde_json::Value },
    /// Written by a program through [`FeatureStore::commit_batch`].
    Derived { how: String },
}

/// A catalog entry: everything known about one immutable dataset version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetVersion {
    pub format: u32,
    /// SHA-256 (hex) over the sorted `(path, sha256, bytes)` of [`Self::files`].
    pub id: String,
    /// Dataset name it was first created under.
    pub name: String,
    pub created_at: String,
    pub description: String,
    /// Versions it was derived from (lineage).
    pub parents: Vec<String>,
    pub derivation: Derivation,
    pub rows: u64,
    pub schema: Vec<ColumnSchema>,
    pub files: Vec<FileEntry>,
    pub profile: Profile,
}

impl DatasetVersion {
    /// The first 12 hex digits, for display.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// The schema as Arrow's.
    pub fn arrow_schema(&self) -> Result<Schema> {
        self.schema
            .iter()
            .map(|c| {
                DataType::from_str(&c.data_type)
                    .map(|t| Field::new(&c.name, t, c.nullable))
                    .map_err(|e| StoreError::InvalidSchema(format!("column {}: {e}", c.name)))
            })
            .collect::<Result<Vec<_>>>()
            .map(Schema::new)
    }
}

/// One entry of a dataset's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    /// 1-based position in the dataset's history.
    pub seq: u64,
    pub id: String,
    pub created_at: String,
}

/// The supported source formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Csv,
    Parquet,
    /// Newline-delimited JSON objects.
    Jsonl,
}

impl SourceFormat {
    /// Guesses the format from a file name.
    pub fn from_path(path: &Path) -> Option<(SourceFormat, u8)> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some((SourceFormat::Csv, b',')),
            "tsv" => Some((SourceFormat::Csv, b'\t')),
            "parquet" | "pq" => Some((SourceFormat::Parquet, b',')),
            "jsonl" | "ndjson" | "json" => Some((SourceFormat::Jsonl, b',')),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Csv => "csv",
            SourceFormat::Parquet => "parquet",
            SourceFormat::Jsonl => "jsonl",
        }
    }
}

/// An explicit schema: column names and types, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaSpec {
    pub columns: Vec<(String, DataType)>,
}

impl SchemaSpec {
    /// Parses `name:type` items separated by commas (or given one per item), e.g.
    /// `id:int64,ts:timestamp,price:float64,city:utf8`. Types: `int8..int64`, `uint8..uint64`,
    /// `float32`, `float64`, `utf8` (`string`), `bool`, `date32` (`date`), `timestamp`
    /// (microseconds), `timestamp[s|ms|us|ns]`, or any type in Arrow's own notation.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<SchemaSpec> {
        let mut columns = Vec::new();
        for item in items.iter().flat_map(|s| s.as_ref().split(',')) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, ty) = item
                .rsplit_once(':')
                .ok_or_else(|| StoreError::InvalidSchema(format!("`{item}` is not `name:type`")))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(StoreError::InvalidSchema(format!(
                    "`{item}` has no column name"
                )));
            }
            if columns.iter().any(|(n, _)| n == name) {
                return Err(StoreError::InvalidSchema(format!(
                    "column `{name}` appears twice"
                )));
            }
            columns.push((name.to_string(), parse_type(ty.trim())?));
        }
        if columns.is_empty() {
            return Err(StoreError::InvalidSchema("no columns given".into()));
        }
        Ok(SchemaSpec { columns })
    }

    fn to_arrow(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(n, t)| Field::new(n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Parses a friendly type name (see [`SchemaSpec::parse`]).
pub fn parse_type(name: &str) -> Result<DataType> {
    let t = match name.to_ascii_lowercase().as_str() {
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" | "int" => DataType::Int32,
        "int64" | "long" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" | "f32" => DataType::Float32,
        "float64" | "double" | "f64" => DataType::Float64,
        "utf8" | "string" | "str" => DataType::Utf8,
        "bool" | "boolean" => DataType::Boolean,
        "date32" | "date" => DataType::Date32,
        "timestamp" | "timestamp[us]" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamp[s]" => DataType::Timestamp(TimeUnit::Second, None),
        "timestamp[ms]" => DataType::Timestamp(TimeUnit::Millisecond, None),
        "timestamp[ns]" => DataType::Timestamp(TimeUnit::Nanosecond, None),
        _ => DataType::from_str(name)
            .map_err(|e| StoreError::InvalidSchema(format!("unknown type `{name}`: {e}")))?,
    };
    Ok(t)
}

/// How to ingest a file.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Dataset name the version is recorded under.
    pub name: String,
    /// `None`: from the file name.
    pub format: Option<SourceFormat>,
    /// `None`: inferred from the whole file.
    pub schema: Option<SchemaSpec>,
    pub description: String,
    /// CSV: whether the first line holds column names.
    pub csv_header: bool,
    /// CSV delimiter; `None`: `,` (or tab for `.tsv`).
    pub csv_delimiter: Option<u8>,
    /// Versions this one derives from.
    pub parents: Vec<String>,
}

impl IngestOptions {
    pub fn new(name: impl Into<String>) -> Self {
        IngestOptions {
            name: name.into(),
            format: None,
            schema: None,
            description: String::new(),
            csv_header: true,
            csv_delimiter: None,
            parents: Vec::new(),
        }
    }
}

/// What a commit did.
#[derive(Debug, Clone)]
pub struct Committed {
    pub version: DatasetVersion,
    /// Index position under the requested name.
    pub seq: u64,
    /// `false` when the same content was already stored (the existing version was reused).
    pub new_content: bool,
    /// `false` when the name's latest version already was this one (nothing was written).
    pub new_index_entry: bool,
}

/// What [`FeatureStore::verify`] found for one version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    pub problems: Vec<String>,
}

/// A feature store in a local directory or under an object-storage prefix.
#[derive(Debug, Clone)]
pub struct FeatureStore {
    storage: Arc<Storage>,
}

impl FeatureStore {
    /// Opens an existing store in a local directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<FeatureStore> {
        FeatureStore::open_location(Location::Local(root.into()))
    }

    /// Opens the store in a local directory, creating an empty one if there is none.
    pub fn open_or_create(root: impl Into<PathBuf>) -> Result<FeatureStore> {
        FeatureStore::open_or_create_location(Location::Local(root.into()))
    }

    /// Opens an existing store at a path or URL (see [`crate::location`]).
    pub fn open_at(location: &str) -> Result<FeatureStore> {
        FeatureStore::open_location(Location::parse(location)?)
    }

    /// Opens the store at a path or URL, creating an empty one if there is none.
    pub fn open_or_create_at(location: &str) -> Result<FeatureStore> {
        FeatureStore::open_or_create_location(Location::parse(location)?)
    }

    /// Opens an existing store.
    pub fn open_location(location: Location) -> Result<FeatureStore> {
        let storage = Storage::new(location).map_err(io_err(Path::new("tokio runtime")))?;
        FeatureStore::open_storage(Arc::new(storage))
    }

    /// Opens the store, creating an empty one if there is none.
    pub fn open_or_create_location(location: Location) -> Result<FeatureStore> {
        let storage = Storage::new(location).map_err(io_err(Path::new("tokio runtime")))?;
        let root = PathBuf::from(storage.describe_root());
        storage
            .create_dirs(&[OBJECTS, VERSIONS, DATASETS])
            .map_err(io_err(&root))?;
        // Racing creators write the same bytes; whichever wins, the marker is whole.
        storage
            .create(
                MARKER,
                format!("{{\"format\": {STORE_FORMAT}}}\n").as_bytes(),
            )
            .map_err(io_err(&storage.describe(MARKER)))?;
        FeatureStore::open_storage(Arc::new(storage))
    }

    fn open_storage(storage: Arc<Storage>) -> Result<FeatureStore> {
        let marker = storage.describe(MARKER);
        let text = match storage.read(MARKER).map_err(io_err(&marker))? {
            Some(text) => text,
            None => {
                return Err(StoreError::NotAStore(PathBuf::from(
                    storage.describe_root(),
                )))
            }
        };
        #[derive(Deserialize)]
        struct Marker {
            format: u32,
        }
        let m: Marker = serde_json::from_slice(&text).map_err(|source| StoreError::BadEntry {
            path: marker.clone(),
            source,
        })?;
        if m.format != STORE_FORMAT {
            return Err(StoreError::UnsupportedFormat {
                path: PathBuf::from(storage.describe_root()),
                found: m.format,
            });
        }
        Ok(FeatureStore { storage })
    }

    /// The store's directory or URL, as given.
    pub fn location(&self) -> String {
        self.storage.describe_root()
    }

    /// The store's directory, for a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.storage.local_root()
    }

    fn object_key(id: &str, file: &str) -> String {
        format!("{OBJECTS}/{id}/{file}")
    }

    fn entry_key(id: &str) -> String {
        format!("{VERSIONS}/{id}.json")
    }

    /// Reads a catalog file; `None` when it does not exist.
    fn read_file(&self, key: &str) -> Result<Option<bytes::Bytes>> {
        self.storage
            .read(key)
            .map_err(io_err(&self.storage.describe(key)))
    }

    /// Creates a file unless it exists; `true` if this call created it.
    fn create_file(&self, key: &str, contents: &[u8]) -> Result<bool> {
        self.storage
            .create(key, contents)
            .map_err(io_err(&self.storage.describe(key)))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.storage
            .list(dir)
            .map_err(io_err(&self.storage.describe(dir)))
    }

    /// Reads a source file and stores it as a new version (or reuses identical content).
    pub fn ingest(&self, source: &Path, opts: &IngestOptions) -> Result<Committed> {
        if !is_safe_name(&opts.name) {
            return Err(StoreError::InvalidName(opts.name.clone()));
        }
        let (format, default_delim) = match opts.format {
            Some(SourceFormat::Csv) => (
                SourceFormat::Csv,
                SourceFormat::from_path(source).map_or(b',', |(_, d)| d),
            ),
            Some(f) => (f, b','),
            None => SourceFormat::from_path(source)
                .ok_or_else(|| StoreError::UnknownFormat(source.to_path_buf()))?,
        };
        let (source_sha256, _) = sha256_file(source).map_err(io_err(source))?;
        let batch = read_source(
            source,
            format,
            opts,
            opts.csv_delimiter.unwrap_or(default_delim),
        )?;
        if batch.num_rows() == 0 {
            return Err(StoreError::Empty {
                path: source.to_path_buf(),
            });
        }
        let derivation = Derivation::Ingest {
            source: source.display().to_string(),
            format,
            source_sha256,
            explicit_schema: opts.schema.is_some(),
        };
        self.commit_batch(
            &opts.name,
            &batch,
            &opts.description,
            &opts.parents,
            derivation,
        )
    }

    /// Stores `batch` as a version of dataset `name` (see the module docs for the steps).
    pub fn commit_batch(
        &self,
        name: &str,
        batch: &RecordBatch,
        description: &str,
        parents: &[String],
        derivation: Derivation,
    ) -> Result<Committed> {
        if !is_safe_name(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        if batch.num_rows() == 0 {
            return Err(StoreError::Empty {
                path: PathBuf::from(name),
            });
        }
        check_column_names(batch.schema_ref(), Path::new(name))?;
        for parent in parents {
            self.get(parent)?;
        }

        // 1. The data as Parquet; its hash names the version.
        let data = encode_parquet(batch)?;
        let files = vec![FileEntry {
            path: DATA_FILE.to_string(),
            sha256: sha256_hex(&data),
            bytes: data.len() as u64,
        }];
        let id = manifest_id(&files);

        // 2. Stored under its id, unless identical content is already there.
        let new_content = self.create_file(&Self::object_key(&id, DATA_FILE), &data)?;
        if !new_content {
            // Never silently build on damaged files.
            let problems = self.check_files(&id, &files);
            if !problems.is_empty() {
                return Err(StoreError::Corrupt { id, problems });
            }
        }

        // 3. The catalog entry, created once.
        let schema = batch
            .schema()
            .fields()
            .iter()
            .map(|f| ColumnSchema {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect();
        let entry = DatasetVersion {
            format: STORE_FORMAT,
            id: id.clone(),
            name: name.to_string(),
            created_at: now_rfc3339(),
            description: description.to_string(),
            parents: parents.to_vec(),
            derivation,
            rows: batch.num_rows() as u64,
            schema,
            files,
            profile: profile_batch(batch)?,
        };
        let version = if self.create_file(&Self::entry_key(&id), &to_json_pretty(&entry))? {
            entry
        } else {
            self.get_exact(&id)?
        };

        // 4. The index entry, unless the name's latest already is this version.
        let history = self.history(name)?;
        if let Some(last) = history.last().filter(|e| e.id == id) {
            return Ok(Committed {
                version,
                seq: last.seq,
                new_content,
                new_index_entry: false,
            });
        }
        let seq = self.append_index(name, &id, history.last().map_or(0, |e| e.seq))?;
        Ok(Committed {
            version,
            seq,
            new_content,
            new_index_entry: true,
        })
    }

    /// Adds `datasets/<name>/<seq>.json`, taking the next free number after `after`.
    fn append_index(&self, name: &str, id: &str, after: u64) -> Result<u64> {
        let mut seq = after + 1;
        loop {
            let entry = IndexEntry {
                name: name.to_string(),
                seq,
                id: id.to_string(),
                created_at: now_rfc3339(),
            };
            let key = format!("{DATASETS}/{name}/{seq:010}.json");
            if self.create_file(&key, &to_json_pretty(&entry))? {
                return Ok(seq);
            }
            // Lost the race for this number to another writer: take the next one.
            seq += 1;
        }
    }

    /// Names of all datasets, sorted.
    pub fn datasets(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list(DATASETS)?
            .into_iter()
            .filter(|n| is_safe_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The index of dataset `name`, oldest first (empty if there is no such dataset).
    pub fn history(&self, name: &str) -> Result<Vec<IndexEntry>> {
        if !is_safe_name(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        let dir = format!("{DATASETS}/{name}");
        let mut entries = Vec::new();
        for file_name in self.list(&dir)? {
            let Some(stem) = file_name.strip_suffix(".json") else {
                continue;
            };
            if stem.starts_with('.') || stem.parse::<u64>().is_err() {
                continue;
            }
            let key = format!("{dir}/{file_name}");
            // Listed, so it exists: entries are never removed.
            let Some(text) = self.read_file(&key)? else {
                continue;
            };
            let entry: IndexEntry =
                serde_json::from_slice(&text).map_err(|source| StoreError::BadEntry {
                    path: self.storage.describe(&key),
                    source,
                })?;
            entries.push(entry);
        }
        entries.sort_by_key(|e| e.seq);
        Ok(entries)
    }

    /// All catalog entries, oldest first.
    pub fn all_versions(&self) -> Result<Vec<DatasetVersion>> {
        let mut versions = self
            .all_ids()?
            .iter()
            .map(|id| self.get_exact(id))
            .collect::<Result<Vec<_>>>()?;
        versions.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(versions)
    }

    fn all_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .list(VERSIONS)?
            .into_iter()
            .filter_map(|n| {
                n.strip_suffix(".json")
                    .filter(|n| is_hex_id(n))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn get_exact(&self, id: &str) -> Result<DatasetVersion> {
        let key = Self::entry_key(id);
        let Some(text) = self.read_file(&key)? else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        serde_json::from_slice(&text).map_err(|source| StoreError::BadEntry {
            path: self.storage.describe(&key),
            source,
        })
    }

    /// The version with this full id or unique id prefix.
    pub fn get(&self, id_or_prefix: &str) -> Result<DatasetVersion> {
        let prefix = id_or_prefix.to_ascii_lowercase();
        if prefix.len() < MIN_ID_PREFIX || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound(id_or_prefix.to_string()));
        }
        if prefix.len() == 64 {
            return self.get_exact(&prefix);
        }
        let matches: Vec<String> = self
            .all_ids()?
            .into_iter()
            .filter(|id| id.starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [] => Err(StoreError::NotFound(id_or_prefix.to_string())),
            [one] => self.get_exact(one),
            _ => Err(StoreError::Ambiguous {
                reference: id_or_prefix.to_string(),
                candidates: matches.iter().map(|m| m[..12].to_string()).collect(),
            }),
        }
    }

    /// Resolves a reference (`NAME`, `NAME@SEQ`, `NAME@ID-PREFIX` or `ID-PREFIX`).
    pub fn resolve(&self, reference: &str) -> Result<DatasetVersion> {
        let not_found = || StoreError::NotFound(reference.to_string());
        if let Some((name, which)) = reference.split_once('@') {
            let history = self.history(name)?;
            if let Ok(seq) = which.parse::<u64>() {
                if let Some(e) = history.iter().find(|e| e.seq == seq) {
                    return self.get_exact(&e.id);
                }
            }
            let version = self.get(which).map_err(|_| not_found())?;
            if history.iter().any(|e| e.id == version.id) {
                return Ok(version);
            }
            return Err(not_found());
        }
        if is_safe_name(reference) {
            if let Some(last) = self.history(reference)?.last() {
                return self.get_exact(&last.id);
            }
        }
        self.get(reference).map_err(|e| match e {
            StoreError::NotFound(_) => not_found(),
            other => other,
        })
    }

    /// Reads a version's data into one batch.
    pub fn read(&self, version: &DatasetVersion) -> Result<RecordBatch> {
        self.read_inner(version).map_err(|e| match e {
            StoreError::Parquet(e) => StoreError::ReadData {
                id: version.id.clone(),
                message: e.to_string(),
            },
            StoreError::Arrow(e) => StoreError::ReadData {
                id: version.id.clone(),
                message: e.to_string(),
            },
            other => other,
        })
    }

    fn read_inner(&self, version: &DatasetVersion) -> Result<RecordBatch> {
        let mut batches = Vec::new();
        let mut schema = None;
        for file in &version.files {
            let key = Self::object_key(&version.id, &file.path);
            let data = self.read_file(&key)?.ok_or_else(|| {
                io_err(&self.storage.describe(&key))(std::io::ErrorKind::NotFound.into())
            })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(data)?
                .with_batch_size(BATCH_ROWS)
                .build()?;
            schema.get_or_insert_with(|| reader.schema());
            for batch in reader {
                batches.push(batch?);
            }
        }
        let schema = match schema {
            Some(s) => s,
            None => Arc::new(version.arrow_schema()?),
        };
        Ok(concat_batches(&schema, &batches)?)
    }

    /// Re-hashes a version's files and re-derives its id, rows, schema and profile; any
    /// difference from the catalog entry is reported (the entry itself is never changed).
    pub fn verify(&self, version: &DatasetVersion) -> VerifyReport {
        let mut problems = self.check_files(&version.id, &version.files);
        let expected = manifest_id(&version.files);
        if expected != version.id {
            problems.push(format!(
                "the entry's file list hashes to {expected}, not to its id"
            ));
        }
        if let Ok(names) = self.list(&format!("{OBJECTS}/{}", version.id)) {
            for name in names {
                if !version.files.iter().any(|f| f.path == name) {
                    problems.push(format!("unexpected file {name}"));
                }
            }
        }
        if problems.is_empty() {
            match self.read(version) {
                Err(e) => problems.push(format!("data does not read back: {e}")),
                Ok(batch) => {
                    if batch.num_rows() as u64 != version.rows {
                        problems.push(format!(
                            "{} rows stored, entry says {}",
                            batch.num_rows(),
                            version.rows
                        ));
                    }
                    let schema: Vec<(String, String)> = batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().to_string()))
                        .collect();
                    let recorded: Vec<(String, String)> = version
                        .schema
                        .iter()
                        .map(|c| (c.name.clone(), c.data_type.clone()))
                        .collect();
                    if schema != recorded {
                        problems.push(format!(
                            "stored schema {schema:?} differs from the entry's {recorded:?}"
                        ));
                    }
                    match profile_batch(&batch) {
                        Ok(p) if profiles_match(&p, &version.profile) => {}
                        Ok(_) => problems
                            .push("the entry's statistics profile differs from the data's".into()),
                        Err(e) => problems.push(format!("cannot profile the data: {e}")),
                    }
                }
            }
        }
        VerifyReport {
            id: version.id.clone(),
            ok: problems.is_empty(),
            problems,
        }
    }

    /// Verifies every version and every index entry.
    pub fn verify_all(&self) -> Result<Vec<VerifyReport>> {
        let mut reports: Vec<VerifyReport> = self
            .all_versions()?
            .iter()
            .map(|v| self.verify(v))
            .collect();
        let known: BTreeMap<String, ()> = self.all_ids()?.into_iter().map(|id| (id, ())).collect();
        for name in self.datasets()? {
            for entry in self.history(&name)? {
                if !known.contains_key(&entry.id) {
                    reports.push(VerifyReport {
                        id: entry.id.clone(),
                        ok: false,
                        problems: vec![format!(
                            "index entry {name}@{} points at a missing version",
                            entry.seq
                        )],
                    });
                }
            }
        }
        Ok(reports)
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// The content address of a file list.
pub fn manifest_id(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut manifest = String::from("nereid-dataset-v1\n");
    for f in sorted {
        manifest.push_str(&format!("{}\t{}\t{}\n", f.path, f.sha256, f.bytes));
    }
    sha256_hex(manifest.as_bytes())
}

/// Parquet bytes of `batch`, with fixed writer properties: the bytes (hence the id) depend only
/// on the data and this build.
pub(crate) fn encode_parquet(batch: &RecordBatch) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(BATCH_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    writer.write(batch)?;
    Ok(writer.into_inner()?)
}

impl FeatureStore {
    /// Problems with a version's stored files: missing, wrong size or hash.
    fn check_files(&self, id: &str, files: &[FileEntry]) -> Vec<String> {
        let mut problems = Vec::new();
        for f in files {
            let key = Self::object_key(id, &f.path);
            match self.storage.read(&key) {
                Err(e) => problems.push(format!("{}: {e}", f.path)),
                Ok(None) => problems.push(format!("{}: missing", f.path)),
                Ok(Some(data)) => {
                    let (sha, bytes) = (sha256_hex(&data), data.len() as u64);
                    if bytes != f.bytes {
                        problems.push(format!("{}: {bytes} bytes, expected {}", f.path, f.bytes));
                    }
                    if sha != f.sha256 {
                        problems.push(format!(
                            "{}: sha256 {sha}, expected {} (modified after it was stored)",
                            f.path, f.sha256
                        ));
                    }
                }
            }
        }
        problems
    }
}

fn check_column_names(schema: &Schema, path: &Path) -> Result<()> {
    if schema.fields().is_empty() {
        // An empty file (or one with no fields at all) has nothing to store.
        return Err(StoreError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in schema.fields() {
        if f.name().trim().is_empty() {
            problems.push("a column has an empty name".to_string());
        } else if !seen.insert(f.name().as_str()) {
            problems.push(format!("column `{}` appears twice", f.name()));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::SchemaMismatch {
            path: path.to_path_buf(),
            problems,
        })
    }
}

fn parse_err(path: &Path) -> impl Fn(ArrowError) -> StoreError + '_ {
    move |e| StoreError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Compares the source's column names with the explicit schema's.
fn check_names(found: &[String], spec: &SchemaSpec, path: &Path) -> Result<()> {
    let expected: Vec<&str> = spec.columns.iter().map(|(n, _)| n.as_str()).collect();
    let mut problems = Vec::new();
    for name in &expected {
        if !found.iter().any(|f| f == name) {
            problems.push(format!("missing column `{name}`"));
        }
    }
    for name in found {
        if !expected.contains(&name.as_str()) {
            problems.push(format!("unexpected column `{name}`"));
        }
    }
    if problems.is_empty()
        && found
            .iter()
            .map(String::as_str)
            .ne(expected.iter().copied())
    {
        problems.push(format!(
            "columns are in the order {found:?}, the schema says {expected:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::SchemaMismatch {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Reads a whole source file into one batch with the arrow-rs readers.
fn read_source(
    path: &Path,
    format: SourceFormat,
    opts: &IngestOptions,
    delimiter: u8,
) -> Result<RecordBatch> {
    let open = || File::open(path).map_err(io_err(path));
    let perr = parse_err(path);
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = match format {
        SourceFormat::Csv => {
            let fmt = arrow::csv::reader::Format::default()
                .with_header(opts.csv_header)
                .with_delimiter(delimiter);
            let schema = match &opts.schema {
                Some(spec) => {
                    if opts.csv_header {
                        let (header, _) = fmt.infer_schema(open()?, Some(0)).map_err(&perr)?;
                        let names: Vec<String> =
                            header.fields().iter().map(|f| f.name().clone()).collect();
                        check_names(&names, spec, path)?;
                    }
                    spec.to_arrow()
                }
                None => {
                    let (schema, _) = fmt.infer_schema(open()?, None).map_err(&perr)?;
                    Arc::new(schema)
                }
            };
            check_column_names(&schema, path)?;
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(fmt)
                .with_batch_size(BATCH_ROWS)
                .build(open()?)
                .map_err(&perr)?;
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(&perr)?;
            (schema, batches)
        }
        SourceFormat::Jsonl => {
            let schema = match &opts.schema {
                Some(spec) => spec.to_arrow(),
                None => {
                    let mut reader = BufReader::new(open()?);
                    let (schema, _) =
                        arrow::json::reader::infer_json_schema_from_seekable(&mut reader, None)
                            .map_err(&perr)?;
                    reader.rewind().map_err(io_err(path))?;
                    Arc::new(schema)
                }
            };
            check_column_names(&schema, path)?;
            let reader = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(BATCH_ROWS)
                // With an explicit schema, a field it does not name is a mismatch, not noise.
                .with_strict_mode(opts.schema.is_some())
                .build(BufReader::new(open()?))
                .map_err(&perr)?;
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(&perr)?;
            (schema, batches)
        }
        SourceFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(open()?).map_err(|e| {
                StoreError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }
            })?;
            let file_schema = builder.schema().clone();
            let reader = builder.with_batch_size(BATCH_ROWS).build()?;
            let batches = reader
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(&perr)?;
            match &opts.schema {
                None => (file_schema, batches),
                Some(spec) => {
                    let names: Vec<String> = file_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    check_names(&names, spec, path)?;
                    let target = spec.to_arrow();
                    // Cast strictly: a value that does not fit the given type is an error.
                    let options = arrow::compute::CastOptions {
                        safe: false,
                        ..Default::default()
                    };
                    let cast = batches
                        .iter()
                        .map(|b| {
                            let columns = b
                                .columns()
                                .iter()
                                .zip(target.fields())
                                .map(|(c, f)| {
                                    arrow::compute::cast_with_options(c, f.data_type(), &options)
                                        .map_err(|e| StoreError::SchemaMismatch {
                                            path: path.to_path_buf(),
                                            problems: vec![format!(
                                                "column `{}` ({}) cannot be read as {}: {e}",
                                                f.name(),
                                                c.data_type(),
                                                f.data_type()
                                            )],
                                        })
                                })
                                .collect::<Result<Vec<_>>>()?;
                            RecordBatch::try_new(target.clone(), columns).map_err(&perr)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (target, cast)
                }
            }
        }
    };
    concat_batches(&schema, &batches).map_err(perr)
}
