//! Writes Fisher's Iris data (as shipped by the `linfa-datasets` crate) as a CSV file that
//! `nereid features ingest` turns into the `iris` dataset of the feature store:
//!
//! ```text
//! cargo run --release -p nereid-pipeline --example export_iris -- iris.csv
//! ```
//!
//! Columns `sepal_length, sepal_width, petal_length, petal_width` (cm, f64) and `species`
//! (`setosa`, `versicolor`, `virginica`), rows in linfa's order. The values are printed in their
//! shortest round-trip form, so reading the CSV back gives exactly linfa's numbers, and the
//! sorted species names give the same class indices as linfa's targets: a model trained from the
//! feature store sees the same data as `examples/train_iris.rs`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};

/// linfa's targets 0, 1, 2 in Fisher's order.
const SPECIES: [&str; 3] = ["setosa", "versicolor", "virginica"];
const COLUMNS: [&str; 4] = ["sepal_length", "sepal_width", "petal_length", "petal_width"];
/// The feature order linfa documents; checked so a reordering upstream cannot go unnoticed.
const LINFA_FEATURES: [&str; 4] = ["sepal length", "sepal width", "petal length", "petal width"];

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: export_iris OUT.csv");
        return ExitCode::FAILURE;
    };
    match run(&out) {
        Ok(rows) => {
            println!("wrote {rows} rows to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: &std::path::Path) -> Result<usize, Box<dyn std::error::Error>> {
    let dataset = linfa_datasets::iris();
    if dataset.feature_names() != LINFA_FEATURES {
        return Err(format!(
            "linfa's iris features are {:?}, expected {LINFA_FEATURES:?}",
            dataset.feature_names()
        )
        .into());
    }
    let records = &dataset.records;
    let mut columns: Vec<(&str, ArrayRef)> = COLUMNS
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let values: Vec<f64> = records.column(j).iter().copied().collect();
            (*name, Arc::new(Float64Array::from(values)) as ArrayRef)
        })
        .collect();
    let species = dataset
        .targets
        .iter()
        .map(|&t| {
            SPECIES
                .get(t)
                .copied()
                .ok_or(format!("iris target {t} outside 0..3"))
        })
        .collect::<Result<Vec<&str>, String>>()?;
    columns.push(("species", Arc::new(StringArray::from(species))));
    let batch = RecordBatch::try_from_iter(columns)?;
    let file = std::fs::File::create(out)?;
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    writer.write(&batch)?;
    Ok(batch.num_rows())
}
