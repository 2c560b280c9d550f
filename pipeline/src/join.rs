//! Feature views and point-in-time-correct joins that build training sets.
//!
//! A [`FeatureView`] names a dataset of feature rows keyed by entity key column(s) and stamped
//! with an event time (and optionally the time each row became available, `created_timestamp`).
//! [`point_in_time_join`] takes a label table (entity keys, a timestamp per row, labels) and, for
//! each label row and each view, picks the latest feature row of that entity whose event time is
//! at or before the label row's time (and whose `created_timestamp`, if configured, is too: a
//! value that arrived late was not known then), optionally no older than the view's TTL. Rows
//! without such a feature row get nulls. Nothing from the label row's future can leak in.
//!
//! Data flow: label dataset version + feature dataset versions (resolved to ids) -> per view a
//! hash map from the entity key (Arrow's row format, so any key types and several key columns
//! work) to the view's rows sorted by time -> one `take` per feature column -> the label columns
//! plus the features, stored by [`build_training_set`] as a new dataset version whose parents are
//! the inputs and whose derivation is the resolved [`JoinSpec`].
//!
//! Times: timestamps of any unit and time zone compare as instants (UTC); dates are midnight
//! UTC; integer columns are seconds since the Unix epoch; strings are parsed as ISO 8601 /
//! RFC 3339. Among feature rows with equal times the later one in the file wins.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, cast_with_options, take, CastOptions};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use crate::store::{Committed, Derivation, FeatureStore, StoreError};
use crate::util::parse_duration;

/// Feature rows keyed by entity and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureView {
    /// Name of the view (used as the column prefix when `prefix` is set).
    pub name: String,
    /// Dataset reference of the feature rows (`NAME`, `NAME@SEQ`, id prefix, ...).
    pub source: String,
    /// Entity key column(s); the label table has columns of the same names.
    pub entities: Vec<String>,
    /// Event-time column of the feature rows.
    pub timestamp: String,
    /// Column holding when each row became available; rows not yet available at a label's time
    /// are not used for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp: Option<String>,
    /// Feature columns to take; empty takes every column that is not a key or a time.
    #[serde(default)]
    pub features: Vec<String>,
    /// Feature rows older than this (relative to the label time) are not used, e.g. `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Name output columns `<view>__<feature>` instead of `<feature>`.
    #[serde(default)]
    pub prefix: bool,
}

/// A training-set build: label rows joined with feature views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Dataset reference of the entity/label table.
    pub labels: String,
    /// Time column of the label table.
    pub label_timestamp: String,
    pub views: Vec<FeatureView>,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid join: {0}")]
    Invalid(String),

    #[error("{table} has no column `{column}` (columns: {})", available.join(", "))]
    MissingColumn {
        table: String,
        column: String,
        available: Vec<String>,
    },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

type Result<T, E = JoinError> = std::result::Result<T, E>;

/// Per-view counts of a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewReport {
    pub view: String,
    /// Feature dataset version used.
    pub version: String,
    /// Label rows that got feature values.
    pub matched: u64,
    /// Label rows whose entity had no feature row at or before the label time.
    pub unmatched: u64,
    /// Label rows whose latest eligible feature row was older than the TTL.
    pub expired: u64,
}

/// A joined table and what happened per view.
#[derive(Debug, Clone)]
pub struct JoinResult {
    pub batch: RecordBatch,
    pub views: Vec<ViewReport>,
    /// The spec with every dataset reference replaced by the full version id it resolved to.
    pub resolved: JoinSpec,
    /// Label version id followed by the feature version ids.
    pub parents: Vec<String>,
}

fn column<'a>(batch: &'a RecordBatch, table: &str, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| JoinError::MissingColumn {
            table: table.to_string(),
            column: name.to_string(),
            available: batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
        })
}

/// An instant in microseconds since the Unix epoch for every row (null stays null).
pub fn to_micros(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let (raw, factor) = match array.data_type() {
        // The stored integer is UTC-based whatever the zone; read it raw and scale.
        DataType::Timestamp(unit, _) => {
            let factor = match unit {
                TimeUnit::Second => 1_000_000.0,
                TimeUnit::Millisecond => 1_000.0,
                TimeUnit::Microsecond => 1.0,
                TimeUnit::Nanosecond => 0.001,
            };
            (cast(array, &DataType::Int64)?, factor)
        }
        DataType::Date32 => (cast(array, &DataType::Int64)?, 86_400.0 * 1e6),
        DataType::Date64 => (cast(array, &DataType::Int64)?, 1_000.0),
        t if t.is_integer() => (cast_with_options(array, &DataType::Int64, &strict)?, 1e6),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let ts = cast_with_options(
                array,
                &DataType::Timestamp(TimeUnit::Microsecond, None),
                &strict,
            )?;
            (cast(&ts, &DataType::Int64)?, 1.0)
        }
        other => {
            return Err(JoinError::Invalid(format!(
                "a {other} column cannot be a time column (use a timestamp, date, integer seconds or ISO 8601 strings)"
            )))
        }
    };
    let raw = raw.as_primitive::<Int64Type>();
    Ok(raw
        .iter()
        .map(|v| {
            v.map(|v| {
                if factor >= 1.0 {
                    v.saturating_mul(factor as i64)
                } else {
                    v.div_euclid((1.0 / factor) as i64)
                }
            })
        })
        .collect())
}

/// The point-in-time join of `labels` with each view's `features` (in-memory; see module docs).
/// `views` pairs each view with its feature table.
pub fn point_in_time_join(
    labels: &RecordBatch,
    label_timestamp: &str,
    views: &[(FeatureView, RecordBatch)],
) -> Result<(RecordBatch, Vec<ViewReport>)> {
    let label_times = to_micros(column(labels, "the label table", label_timestamp)?)?;
    let mut fields: Vec<Arc<Field>> = labels.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = labels.columns().to_vec();
    let mut reports = Vec::new();

    for (view, features) in views {
        let table = format!("feature view `{}`", view.name);
        if view.entities.is_empty() {
            return Err(JoinError::Invalid(format!("{table} has no entity columns")));
        }
        let ttl_us = match &view.ttl {
            Some(ttl) => Some(
                i64::try_from(parse_duration(ttl).map_err(JoinError::Invalid)?.as_micros())
                    .unwrap_or(i64::MAX),
            ),
            None => None,
        };

        // Keys of both tables in Arrow's row format, label keys cast to the feature key types.
        let mut sort_fields = Vec::new();
        let mut feature_keys = Vec::new();
        let mut label_keys = Vec::new();
        for key in &view.entities {
            let fk = column(features, &table, key)?.clone();
            let lk = column(labels, "the label table", key)?;
            let lk = if lk.data_type() == fk.data_type() {
                lk.clone()
            } else {
                cast_with_options(
                    lk,
                    fk.data_type(),
                    &CastOptions {
                        safe: false,
                        ..Default::default()
                    },
                )
                .map_err(|e| {
                    JoinError::Invalid(format!(
                        "entity column `{key}` is {} in the label table but {} in {table}: {e}",
                        lk.data_type(),
                        fk.data_type()
                    ))
                })?
            };
            sort_fields.push(SortField::new(fk.data_type().clone()));
            feature_keys.push(fk);
            label_keys.push(lk);
        }
        let converter = RowConverter::new(sort_fields)?;
        let frows = converter.convert_columns(&feature_keys)?;
        let lrows = converter.convert_columns(&label_keys)?;
        let key_null = |cols: &[ArrayRef], i: usize| cols.iter().any(|c| c.is_null(i));

        let event = to_micros(column(features, &table, &view.timestamp)?)?;
        let created = match &view.created_timestamp {
            Some(c) => Some(to_micros(column(features, &table, c)?)?),
            None => None,
        };

        // entity -> [(event time, available-from time, row)], sorted.
        let mut by_key: HashMap<&[u8], Vec<(i64, i64, u32)>> = HashMap::new();
        for (row, ev) in event.iter().enumerate() {
            let Some(ev) = *ev else { continue };
            if key_null(&feature_keys, row) {
                continue;
            }
            // A row without a created time is taken to be known from its event time on.
            let avail = created
                .as_ref()
                .and_then(|c| c[row])
                .map_or(ev, |c| c.max(ev));
            let row = u32::try_from(row)
                .map_err(|_| JoinError::Invalid(format!("{table} has too many rows")))?;
            by_key
                .entry(frows.row(row as usize).data())
                .or_default()
                .push((ev, avail, row));
        }
        for rows in by_key.values_mut() {
            rows.sort_unstable();
        }

        let mut report = ViewReport {
            view: view.name.clone(),
            version: view.source.clone(),
            matched: 0,
            unmatched: 0,
            expired: 0,
        };
        let mut indices: Vec<Option<u32>> = Vec::with_capacity(labels.num_rows());
        for (i, t) in label_times.iter().enumerate() {
            let found = match t {
                Some(t) if !key_null(&label_keys, i) => by_key
                    .get(lrows.row(i).data())
                    .and_then(|rows| {
                        // Rows with event time <= t, latest first; the first one already
                        // available at t is the answer.
                        let end = rows.partition_point(|(ev, _, _)| *ev <= *t);
                        rows[..end].iter().rev().find(|(_, avail, _)| *avail <= *t)
                    })
                    .map(|&(ev, _, row)| (*t, ev, row)),
                _ => None,
            };
            indices.push(match found {
                None => {
                    report.unmatched += 1;
                    None
                }
                Some((t, ev, _)) if ttl_us.is_some_and(|ttl| t.saturating_sub(ev) > ttl) => {
                    report.expired += 1;
                    None
                }
                Some((_, _, row)) => {
                    report.matched += 1;
                    Some(row)
                }
            });
        }
        let indices = UInt32Array::from(indices);

        let wanted: Vec<String> = if view.features.is_empty() {
            features
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| {
                    !view.entities.contains(n)
                        && *n != view.timestamp
                        && Some(n) != view.created_timestamp.as_ref()
                })
                .collect()
        } else {
            view.features.clone()
        };
        for name in &wanted {
            let source = column(features, &table, name)?;
            let out_name = if view.prefix {
                format!("{}__{name}", view.name)
            } else {
                name.clone()
            };
            if fields.iter().any(|f| *f.name() == out_name) {
                return Err(JoinError::Invalid(format!(
                    "output column `{out_name}` of {table} already exists; set `prefix = true` on the view or pick other features"
                )));
            }
            columns.push(take(source.as_ref(), &indices, None)?);
            fields.push(Arc::new(Field::new(
                out_name,
                source.data_type().clone(),
                true,
            )));
        }
        reports.push(report);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    Ok((batch, reports))
}

/// Resolves the spec's datasets in `store`, joins them, and returns the result (not stored).
pub fn join_in_store(store: &FeatureStore, spec: &JoinSpec) -> Result<JoinResult> {
    if spec.views.is_empty() {
        return Err(JoinError::Invalid(
            "a join needs at least one feature view".into(),
        ));
    }
    let label_version = store.resolve(&spec.labels)?;
    let labels = store.read(&label_version)?;
    let mut resolved = spec.clone();
    resolved.labels = label_version.id.clone();
    let mut parents = vec![label_version.id.clone()];
    let mut inputs = Vec::new();
    for (view, out) in spec.views.iter().zip(resolved.views.iter_mut()) {
        let version = store.resolve(&view.source)?;
        out.source = version.id.clone();
        if !parents.contains(&version.id) {
            parents.push(version.id.clone());
        }
        inputs.push((out.clone(), store.read(&version)?));
    }
    let (batch, views) = point_in_time_join(&labels, &spec.label_timestamp, &inputs)?;
    Ok(JoinResult {
        batch,
        views,
        resolved,
        parents,
    })
}

/// Joins and stores the result as a version of dataset `output`, with the inputs as parents.
pub fn build_training_set(
    store: &FeatureStore,
    spec: &JoinSpec,
    output: &str,
    description: &str,
) -> Result<(Committed, Vec<ViewReport>)> {
    let result = join_in_store(store, spec)?;
    let spec_json = serde_json::to_value(&result.resolved)
        .expect("a JoinSpec serialises to JSON. This is a bug.");
    let committed = store.commit_batch(
        output,
        &result.batch,
        description,
        &result.parents,
        Derivation::Join { spec: spec_json },
    )?;
    Ok((committed, result.views))
}
