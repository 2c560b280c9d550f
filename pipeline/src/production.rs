//! Training data from production: the labelled requests a serving version answered (its
//! prediction log joined with feedback, exported by [`crate::monitoring::export_serving_log`])
//! combined with the data the model was trained on, so that a retrained model has seen the
//! distribution it now serves.
//!
//! - `append`: the training data, then every labelled production row;
//! - `window`: the labelled production rows alone (the recent window);
//! - `reweight`: as `append`, with each production row repeated `weight` times, so that recent
//!   data counts more in training without weights in the trainer.
//!
//! The result is a dataset version whose parents are both inputs (lineage), with the training
//! data's columns and types; production rows must carry each of them (features by the
//! reference's names, the label by its name).

use anyhow::{bail, Context};
use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::store::{Committed, Derivation, FeatureStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    Append,
    Window,
    Reweight,
}

impl Combine {
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::Append => "append",
            Combine::Window => "window",
            Combine::Reweight => "reweight",
        }
    }
}

/// What [`combine`] made.
#[derive(Debug)]
pub struct Combined {
    pub committed: Committed,
    pub training_rows: usize,
    pub production_rows: usize,
}

/// Combines dataset versions `training` and `production` into dataset version `name`.
pub fn combine(
    store: &FeatureStore,
    training: &str,
    production: &str,
    how: Combine,
    weight: u32,
    name: &str,
) -> anyhow::Result<Combined> {
    let base_version = store.resolve(training)?;
    let production_version = store.resolve(production)?;
    let base = store.read(&base_version)?;
    let recent = store.read(&production_version)?;
    // Production rows in the training data's columns and types.
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(base.num_columns());
    for field in base.schema().fields() {
        let column = recent.column_by_name(field.name()).with_context(|| {
            format!(
                "production data {} has no column '{}' (it has: {})",
                production_version.short_id(),
                field.name(),
                recent
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        columns.push(cast(column, field.data_type()).with_context(|| {
            format!(
                "production column '{}' cannot be read as {}",
                field.name(),
                field.data_type()
            )
        })?);
    }
    let recent = RecordBatch::try_new(base.schema(), columns)?;
    if recent.num_rows() == 0 {
        bail!(
            "no labelled production rows in {} to train on",
            production_version.short_id()
        );
    }
    let (training_rows, parts): (usize, Vec<RecordBatch>) = match how {
        Combine::Append => (base.num_rows(), vec![base.clone(), recent.clone()]),
        Combine::Window => (0, vec![recent.clone()]),
        Combine::Reweight => {
            if weight == 0 {
                bail!("reweight needs a weight of at least 1");
            }
            let n = u32::try_from(recent.num_rows()).context("too many production rows")?;
            let indices = UInt32Array::from_iter_values((0..weight).flat_map(|_| 0..n));
            let repeated: Vec<ArrayRef> = recent
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<Result<_, _>>()?;
            (
                base.num_rows(),
                vec![base.clone(), RecordBatch::try_new(base.schema(), repeated)?],
            )
        }
    };
    let batch = concat_batches(&base.schema(), &parts)?;
    let production_rows = batch.num_rows() - training_rows;
    let committed = store.commit_batch(
        name,
        &batch,
        &format!(
            "{} of {} training rows ({}) and {} production rows ({})",
            how.as_str(),
            training_rows,
            base_version.short_id(),
            production_rows,
            production_version.short_id()
        ),
        &[base_version.id.clone(), production_version.id.clone()],
        Derivation::Derived {
            how: format!(
                "production data {}: {}{}",
                how.as_str(),
                production_version.id,
                if how == Combine::Reweight {
                    format!(" x{weight}")
                } else {
                    String::new()
                }
            ),
        },
    )?;
    Ok(Combined {
        committed,
        training_rows,
        production_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IngestOptions;

    fn store_with(dir: &std::path::Path) -> FeatureStore {
        let store = FeatureStore::open_or_create(dir.join("store")).expect("store");
        std::fs::write(dir.join("train.csv"), "x,y,label\n1.0,2.0,a\n3.0,4.0,b\n").expect("csv");
        store
            .ingest(&dir.join("train.csv"), &IngestOptions::new("train"))
            .expect("ingest");
        // Production rows: other column order, an extra column, integers where training had
        // floats.
        std::fs::write(
            dir.join("prod.csv"),
            "request_id,label,y,x,prediction\nr1,b,5,6,a\nr2,a,7,8,a\nr3,b,9,10,b\n",
        )
        .expect("csv");
        store
            .ingest(&dir.join("prod.csv"), &IngestOptions::new("prod"))
            .expect("ingest");
        store
    }

    fn column(store: &FeatureStore, c: &Committed, name: &str) -> Vec<String> {
        let batch = store.read(&c.version).expect("read");
        let array = batch.column_by_name(name).expect("column");
        let text = cast(array, &arrow::datatypes::DataType::Utf8).expect("cast");
        let text = text
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("strings");
        text.iter().map(|v| v.unwrap_or("").to_string()).collect()
    }

    #[test]
    fn append_window_and_reweight_keep_the_training_schema_and_lineage() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with(dir.path());
        let a = combine(&store, "train", "prod", Combine::Append, 1, "a").expect("append");
        assert_eq!((a.training_rows, a.production_rows), (2, 3));
        assert_eq!(
            column(&store, &a.committed, "x"),
            ["1.0", "3.0", "6.0", "8.0", "10.0"]
        );
        assert_eq!(
            column(&store, &a.committed, "label"),
            ["a", "b", "b", "a", "b"]
        );
        let schema: Vec<String> = a
            .committed
            .version
            .schema
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(schema, ["x", "y", "label"]);
        let parents = &a.committed.version.parents;
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0], store.resolve("train").expect("train").id);
        assert_eq!(parents[1], store.resolve("prod").expect("prod").id);

        let w = combine(&store, "train", "prod", Combine::Window, 1, "w").expect("window");
        assert_eq!((w.training_rows, w.production_rows), (0, 3));
        assert_eq!(column(&store, &w.committed, "y"), ["5.0", "7.0", "9.0"]);

        let r = combine(&store, "train", "prod", Combine::Reweight, 2, "r").expect("reweight");
        assert_eq!((r.training_rows, r.production_rows), (2, 6));
        assert_eq!(
            column(&store, &r.committed, "x"),
            ["1.0", "3.0", "6.0", "8.0", "10.0", "6.0", "8.0", "10.0"]
        );
    }

    #[test]
    fn production_data_without_a_training_column_is_refused_with_its_name() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store_with(dir.path());
        std::fs::write(dir.path().join("bad.csv"), "x,label\n1,a\n").expect("csv");
        store
            .ingest(&dir.path().join("bad.csv"), &IngestOptions::new("bad"))
            .expect("ingest");
        let err = combine(&store, "train", "bad", Combine::Append, 1, "c").expect_err("no y");
        assert!(err.to_string().contains("has no column 'y'"), "{err}");
    }
}
