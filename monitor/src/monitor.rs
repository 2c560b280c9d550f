//! [`Monitor`]: one model version's monitor. It reads the columns its reference names out of
//! each sampled request's tensors (rows of a batch one by one), fills windows, and when a
//! window closes tests every column against the reference and returns a [`DriftReport`].
//!
//! Single-threaded and synchronous: the server runs one per monitored version on its own
//! thread, fed by a bounded queue, so nothing here is ever on a request's path.
//!
//! Windows are made of panes of `step` rows (or `step` of time): a pane closes when full (or
//! when its time is up), and once `size / step` panes have closed, each closing pane ends a
//! window over the last `size / step` panes (tumbling windows have one pane per window). Time
//! panes keep at most `max_window_rows / panes` rows, a uniform sample (reservoir) of what
//! they saw; quality counts always cover every row.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use nereid_protocol::{bytes_elements, DataType, Tensor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::{MonitorConfig, WindowSpec};
use crate::distribution::{category_of, CategoricalReference, NumericReference};
use crate::profile::ColumnKind;
use crate::quality::{Counts, Expected, QualityReport};
use crate::reference::{Reference, Task};
use crate::report::{
    ColumnHistogram, ColumnReport, DatasetDrift, DriftReport, NumericSummary, ReferenceInfo, Role,
    WindowInfo,
};
use crate::stattest::{run_chosen, ColumnData, ColumnType, Method, TestError};

/// Most distinct categories a column tracks per monitor; later new ones share one bucket.
const MAX_DICTIONARY: usize = 100_000;
/// Bins of a numeric column's histogram on the drift page.
const HISTOGRAM_BINS: usize = 20;
/// Categories drawn per column on the drift page (the rest are summed).
const HISTOGRAM_CATEGORIES: usize = 20;

/// A model tensor as the monitor needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub datatype: DataType,
    /// Elements per row (per request for models that do not batch); `None` when a dimension
    /// is variable.
    pub per_row: Option<usize>,
}

/// The model's inputs and outputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Whether the first dimension is the batch (`max_batch_size > 0`).
    pub batched: bool,
    /// Class labels of outputs that have a `label_filename`.
    pub labels: BTreeMap<String, Vec<String>>,
}

impl Layout {
    /// The layout a `config.pbtxt` declares (`labels`: the class labels of outputs with a
    /// `label_filename`, which the caller reads).
    pub fn from_config(
        config: &nereid_protocol::inference::ModelConfig,
        labels: BTreeMap<String, Vec<String>>,
    ) -> Layout {
        let info = |name: &str, data_type: i32, dims: &[i64]| TensorInfo {
            name: name.to_string(),
            datatype: DataType::from_config(data_type).unwrap_or(DataType::Fp32),
            per_row: dims
                .iter()
                .try_fold(1usize, |n, d| usize::try_from(*d).ok().map(|d| n * d)),
        };
        Layout {
            inputs: config
                .input
                .iter()
                .map(|i| info(&i.name, i.data_type, &i.dims))
                .collect(),
            outputs: config
                .output
                .iter()
                .map(|o| info(&o.name, o.data_type, &o.dims))
                .collect(),
            batched: config.max_batch_size > 0,
            labels,
        }
    }
}

/// Why a monitor cannot be built for a model version.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("monitor: {0}")]
pub struct MonitorError(pub String);

/// A model's prediction for one row, as feedback is compared with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicted {
    /// Index and name of the winning class (`usize::MAX` for a label read from a BYTES output).
    Class {
        index: usize,
        name: Arc<str>,
    },
    Value(f64),
    /// No prediction could be read (NaN scores, a missing output).
    Missing,
}

/// Where the prediction is read from.
#[derive(Debug, Clone)]
pub struct PredictionSource {
    pub output: String,
    pub datatype: DataType,
    pub per_row: usize,
    pub kind: PredictionKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PredictionKind {
    /// One score per class: the prediction is the class with the highest score.
    ClassScores { classes: Vec<Arc<str>> },
    /// One value per row (regression, or a class index / label output).
    Value,
}

enum ColumnRef {
    Numeric(NumericReference),
    Categorical(CategoricalReference),
}

enum Source {
    Input {
        name: String,
        datatype: DataType,
        element: usize,
        per_row: usize,
    },
    Prediction,
}

struct Column {
    name: String,
    role: Role,
    source: Source,
    describe: String,
    reference: ColumnRef,
    expected: Expected,
    method: Option<Method>,
    threshold: Option<f64>,
    /// Categorical columns: categories seen, by id, and whether the reference has each.
    categories: Vec<String>,
    known: Vec<bool>,
    ids: HashMap<String, u32>,
}

impl Column {
    fn column_type(&self) -> ColumnType {
        match self.reference {
            ColumnRef::Numeric(_) => ColumnType::Numeric,
            ColumnRef::Categorical(_) => ColumnType::Categorical,
        }
    }

    fn category_id(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        if self.categories.len() >= MAX_DICTIONARY {
            return self.other_id();
        }
        let known = match &self.reference {
            ColumnRef::Categorical(r) => r.contains(key),
            ColumnRef::Numeric(_) => false,
        };
        let id = self.categories.len() as u32;
        self.categories.push(key.to_string());
        self.known.push(known);
        self.ids.insert(key.to_string(), id);
        id
    }

    /// The shared bucket for categories past [`MAX_DICTIONARY`].
    fn other_id(&mut self) -> u32 {
        const OTHER: &str = "(other new categories)";
        if let Some(&id) = self.ids.get(OTHER) {
            return id;
        }
        let id = self.categories.len() as u32;
        self.categories.push(OTHER.to_string());
        self.known.push(false);
        self.ids.insert(OTHER.to_string(), id);
        id
    }
}

/// One value read from a tensor.
enum Cell<'a> {
    Number(f64),
    Text(&'a [u8]),
    Absent,
}

enum Values {
    Numeric(Vec<f64>),
    Categorical(Vec<u32>),
}

struct Pane {
    start_ms: u64,
    end_ms: u64,
    rows_seen: u64,
    /// Rows kept, set when the pane closes (its numeric values are then sorted in place and
    /// no longer line up row by row).
    kept_rows: usize,
    values: Vec<Values>,
    counts: Vec<Counts>,
}

impl Pane {
    fn kept(&self) -> usize {
        match self.values.first() {
            Some(Values::Numeric(v)) => v.len(),
            Some(Values::Categorical(v)) => v.len(),
            None => 0,
        }
    }
}

/// The tensors of one sampled request.
pub struct Sample<'a> {
    pub inputs: &'a [Tensor],
    pub outputs: &'a [Tensor],
    pub time_ms: u64,
}

/// What observing a sample produced.
#[derive(Debug, Default)]
pub struct Observed {
    /// Windows that closed (usually none, at most a few).
    pub reports: Vec<DriftReport>,
    /// The prediction of each row, when the monitor knows where predictions are.
    pub predictions: Vec<Predicted>,
}

pub struct Monitor {
    model: String,
    version: u64,
    config: MonitorConfig,
    reference: ReferenceInfo,
    task: Task,
    columns: Vec<Column>,
    prediction: Option<PredictionSource>,
    batched: bool,
    /// Closed panes of the current window (at most `panes - 1` are kept between windows).
    closed: VecDeque<Pane>,
    open: Pane,
    windows: u64,
    rng: SmallRng,
}

impl Monitor {
    /// Builds the monitor of `model` version `version` from its reference and settings.
    pub fn new(
        model: &str,
        version: u64,
        reference: &Reference,
        config: &MonitorConfig,
        layout: &Layout,
    ) -> Result<Monitor, MonitorError> {
        let fail = |message: String| MonitorError(message);
        let mut columns = Vec::new();
        for mapping in reference.input_columns() {
            let input = layout
                .inputs
                .iter()
                .find(|i| i.name == mapping.name)
                .ok_or_else(|| {
                    fail(format!(
                        "reference.json maps input '{}', which the model does not have",
                        mapping.name
                    ))
                })?;
            let per_row = input.per_row.ok_or_else(|| {
                fail(format!(
                    "input '{}' has a variable shape, so its elements cannot be mapped to columns",
                    input.name
                ))
            })?;
            if per_row != mapping.columns.len() {
                return Err(fail(format!(
                    "reference.json maps {} columns to input '{}', whose rows have {per_row} elements",
                    mapping.columns.len(),
                    input.name
                )));
            }
            for (element, name) in mapping.columns.iter().enumerate() {
                let profile = reference.column(name).ok_or_else(|| {
                    fail(format!("column '{name}' is not in the reference profile"))
                })?;
                let categorical = config.categorical.iter().any(|c| c == name)
                    || profile.kind == ColumnKind::Categorical;
                let describe = if per_row == 1 && !layout.batched {
                    input.name.clone()
                } else {
                    format!("{}[{element}]", input.name)
                };
                columns.push(build_column(
                    name,
                    Role::Feature,
                    Source::Input {
                        name: input.name.clone(),
                        datatype: input.datatype,
                        element,
                        per_row,
                    },
                    describe,
                    profile,
                    categorical,
                    config,
                    input.datatype,
                )?);
            }
        }
        for name in config
            .categorical
            .iter()
            .chain(config.column_tests.keys())
            .chain(config.column_thresholds.keys())
        {
            let prediction_name = prediction_output(reference, config, layout);
            if !columns.iter().any(|c| &c.name == name)
                && prediction_name.as_deref() != Some(name.as_str())
            {
                return Err(fail(format!(
                    "the monitor settings name column '{name}', which is neither a monitored feature nor the prediction output"
                )));
            }
        }

        let prediction = match prediction_output(reference, config, layout) {
            None => None,
            Some(output) => {
                let info = layout
                    .outputs
                    .iter()
                    .find(|o| o.name == output)
                    .ok_or_else(|| {
                        fail(format!(
                            "the prediction output '{output}' is not an output of the model"
                        ))
                    })?;
                let per_row = info.per_row.ok_or_else(|| {
                    fail(format!(
                        "output '{output}' has a variable shape, so predictions cannot be read from it"
                    ))
                })?;
                let classes = if reference.classes.is_empty() {
                    layout.labels.get(&output).cloned().unwrap_or_default()
                } else {
                    reference.classes.clone()
                };
                let kind = if per_row > 1 {
                    if !classes.is_empty() && classes.len() != per_row {
                        return Err(fail(format!(
                            "output '{output}' has {per_row} scores per row but there are {} classes",
                            classes.len()
                        )));
                    }
                    let classes = if classes.is_empty() {
                        (0..per_row).map(|i| i.to_string()).collect()
                    } else {
                        classes
                    };
                    PredictionKind::ClassScores {
                        classes: classes.into_iter().map(Arc::from).collect(),
                    }
                } else {
                    PredictionKind::Value
                };
                Some(PredictionSource {
                    output,
                    datatype: info.datatype,
                    per_row,
                    kind,
                })
            }
        };
        if let (Some(source), Some(profile)) = (&prediction, reference.prediction_column()) {
            let categorical = matches!(source.kind, PredictionKind::ClassScores { .. })
                || source.datatype == DataType::Bytes
                || profile.kind == ColumnKind::Categorical
                || config.categorical.iter().any(|c| c == &source.output);
            let describe = match source.kind {
                PredictionKind::ClassScores { .. } => format!("argmax of {}", source.output),
                PredictionKind::Value => source.output.clone(),
            };
            let mut column = build_column(
                &source.output,
                Role::Prediction,
                Source::Prediction,
                describe,
                profile,
                categorical,
                config,
                source.datatype,
            )?;
            column.name = source.output.clone();
            columns.push(column);
        }
        let panes = config.window.panes().max(1);
        let reference_rows = reference.profile.rows;
        Ok(Monitor {
            model: model.to_string(),
            version,
            config: config.clone(),
            reference: ReferenceInfo {
                dataset_version: reference.dataset_version.clone(),
                rows: reference_rows,
            },
            task: reference.task,
            prediction,
            batched: layout.batched,
            closed: VecDeque::with_capacity(panes as usize),
            open: empty_pane(&columns, 0, 0, pane_capacity(config)),
            columns,
            windows: 0,
            rng: SmallRng::seed_from_u64(version ^ 0x006d_6f6e_6974_6f72),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn task(&self) -> Task {
        self.task
    }

    /// The prediction of each row of a request, without observing it (replaying a log).
    pub fn predictions_of(&self, inputs: &[Tensor], outputs: &[Tensor]) -> Vec<Predicted> {
        let Some(source) = &self.prediction else {
            return Vec::new();
        };
        let Some(tensor) = outputs.iter().find(|t| t.name == source.output) else {
            return Vec::new();
        };
        let byte_elements: HashMap<&str, Vec<&[u8]>> = outputs
            .iter()
            .filter(|t| t.datatype == DataType::Bytes)
            .map(|t| (t.name.as_str(), bytes_elements(&t.data).flatten().collect()))
            .collect();
        (0..self.rows_of(inputs, outputs))
            .map(|row| read_prediction(source, tensor, row, &byte_elements))
            .collect()
    }

    pub fn prediction(&self) -> Option<&PredictionSource> {
        self.prediction.as_ref()
    }

    /// Names of the monitored columns, features first.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Adds a sampled request's rows; returns the reports of windows that closed.
    pub fn observe(&mut self, sample: &Sample<'_>) -> Observed {
        let mut observed = Observed::default();
        if let WindowSpec::Time { .. } = self.config.window {
            observed.reports.extend(self.advance_to(sample.time_ms));
        }
        let rows = self.rows_of(sample.inputs, sample.outputs);
        let prediction_tensor = self
            .prediction
            .as_ref()
            .and_then(|p| sample.outputs.iter().find(|t| t.name == p.output));
        let byte_elements: HashMap<&str, Vec<&[u8]>> = sample
            .inputs
            .iter()
            .chain(sample.outputs)
            .filter(|t| t.datatype == DataType::Bytes)
            .map(|t| (t.name.as_str(), bytes_elements(&t.data).flatten().collect()))
            .collect();
        // Each column's tensor, found once per request rather than per row.
        let tensors: Vec<Option<&Tensor>> = self
            .columns
            .iter()
            .map(|c| match &c.source {
                Source::Input { name, .. } => sample
                    .inputs
                    .iter()
                    .find(|t| &t.name == name && t.device.is_none()),
                Source::Prediction => None,
            })
            .collect();
        for row in 0..rows {
            let predicted = match (&self.prediction, prediction_tensor) {
                (Some(source), Some(tensor)) => {
                    read_prediction(source, tensor, row, &byte_elements)
                }
                _ => Predicted::Missing,
            };
            if self.open.rows_seen == 0 {
                self.open.start_ms = sample.time_ms;
                if let WindowSpec::Time { step, .. } = self.config.window {
                    let step = step.as_millis() as u64;
                    self.open.start_ms = sample.time_ms / step * step;
                    self.open.end_ms = self.open.start_ms + step;
                }
            }
            self.add_row(&tensors, row, &predicted, &byte_elements);
            if let WindowSpec::Rows { step, .. } = self.config.window {
                self.open.end_ms = sample.time_ms;
                if self.open.rows_seen >= step {
                    observed.reports.extend(self.close_pane());
                }
            }
            if self.prediction.is_some() {
                observed.predictions.push(predicted);
            }
        }
        observed
    }

    /// Closes time panes that ended before `now_ms` (call it when no samples arrive).
    pub fn tick(&mut self, now_ms: u64) -> Vec<DriftReport> {
        match self.config.window {
            WindowSpec::Time { .. } => self.advance_to(now_ms),
            WindowSpec::Rows { .. } => Vec::new(),
        }
    }

    /// When the open time pane ends (for the monitor thread's wake-up), if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.config.window {
            WindowSpec::Time { .. } if self.open.rows_seen > 0 || !self.closed.is_empty() => {
                Some(self.open.end_ms)
            }
            _ => None,
        }
    }

    /// Rows in a request: the batch dimension, or 1 for models that do not batch.
    fn rows_of(&self, inputs: &[Tensor], outputs: &[Tensor]) -> usize {
        if !self.batched {
            return 1;
        }
        inputs
            .iter()
            .chain(outputs)
            .find_map(|t| t.shape.first().copied())
            .map_or(0, |b| b.max(0) as usize)
    }

    fn advance_to(&mut self, now_ms: u64) -> Vec<DriftReport> {
        let mut reports = Vec::new();
        let WindowSpec::Time { step, .. } = self.config.window else {
            return reports;
        };
        let step = step.as_millis() as u64;
        let panes = self.config.window.panes();
        // Empty panes past a whole window carry nothing: skip them in one go.
        let mut skipped = 0;
        while (self.open.rows_seen > 0 || !self.closed.is_empty()) && now_ms >= self.open.end_ms {
            let next_start = self.open.end_ms;
            reports.extend(self.close_pane());
            skipped += 1;
            self.open.start_ms = next_start;
            self.open.end_ms = next_start + step;
            if skipped > panes {
                self.closed.clear();
                break;
            }
        }
        reports
    }

    fn add_row(
        &mut self,
        tensors: &[Option<&Tensor>],
        row: usize,
        predicted: &Predicted,
        byte_elements: &HashMap<&str, Vec<&[u8]>>,
    ) {
        self.open.rows_seen += 1;
        // Reservoir sampling for time panes past their share of `max_window_rows`.
        let slot = match self.config.window {
            WindowSpec::Time { .. } => {
                let cap = (self.config.max_window_rows
                    / self.config.window.panes().max(1) as usize)
                    .max(1);
                let kept = self.open.kept();
                if kept < cap {
                    None
                } else {
                    let j = self.rng.random_range(0..self.open.rows_seen) as usize;
                    if j < cap {
                        Some(Some(j))
                    } else {
                        Some(None)
                    }
                }
            }
            WindowSpec::Rows { .. } => None,
        };
        for (index, column) in self.columns.iter_mut().enumerate() {
            let cell = match &column.source {
                Source::Input {
                    name,
                    datatype,
                    element,
                    per_row,
                } => match tensors[index] {
                    Some(tensor) => read_cell(
                        tensor,
                        *datatype,
                        row * per_row + element,
                        byte_elements.get(name.as_str()),
                    ),
                    None => Cell::Absent,
                },
                Source::Prediction => match predicted {
                    Predicted::Class { name, .. } => Cell::Text(name.as_bytes()),
                    Predicted::Value(v) => Cell::Number(*v),
                    Predicted::Missing => Cell::Absent,
                },
            };
            let counts = &mut self.open.counts[index];
            counts.rows += 1;
            let value = match (&column.reference, cell) {
                (ColumnRef::Numeric(_), Cell::Absent) => {
                    counts.missing += 1;
                    Stored::Numeric(f64::NAN)
                }
                (ColumnRef::Categorical(_), Cell::Absent) => {
                    counts.missing += 1;
                    Stored::Category(NO_CATEGORY)
                }
                (ColumnRef::Numeric(r), Cell::Number(v)) => {
                    if v.is_nan() {
                        counts.missing += 1;
                    } else if !v.is_finite() || v < r.min || v > r.max {
                        counts.out_of_range += 1;
                    }
                    Stored::Numeric(v)
                }
                (ColumnRef::Numeric(r), Cell::Text(bytes)) => {
                    match std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                    {
                        Some(v) => {
                            if v.is_nan() {
                                counts.missing += 1;
                            } else if !v.is_finite() || v < r.min || v > r.max {
                                counts.out_of_range += 1;
                            }
                            Stored::Numeric(v)
                        }
                        None => {
                            counts.wrong_type += 1;
                            Stored::Numeric(f64::NAN)
                        }
                    }
                }
                (ColumnRef::Categorical(_), Cell::Number(v)) => {
                    if v.is_nan() {
                        counts.missing += 1;
                        Stored::Category(NO_CATEGORY)
                    } else {
                        let id = column.category_id(&category_of(v));
                        if !column.known[id as usize] {
                            counts.unseen += 1;
                        }
                        Stored::Category(id)
                    }
                }
                (ColumnRef::Categorical(_), Cell::Text(bytes)) => {
                    match std::str::from_utf8(bytes) {
                        Ok(text) => {
                            let id = column.category_id(text);
                            if !column.known[id as usize] {
                                counts.unseen += 1;
                            }
                            Stored::Category(id)
                        }
                        Err(_) => {
                            counts.wrong_type += 1;
                            Stored::Category(NO_CATEGORY)
                        }
                    }
                }
            };
            store(&mut self.open.values[index], value, slot);
        }
    }

    /// Closes the open pane; returns a report when that completes a window.
    fn close_pane(&mut self) -> Option<DriftReport> {
        let fresh = empty_pane(
            &self.columns,
            self.open.end_ms,
            self.open.end_ms,
            pane_capacity(&self.config),
        );
        let mut pane = std::mem::replace(&mut self.open, fresh);
        // Each pane is sorted once, here; a window then merges its panes' sorted runs.
        pane.kept_rows = pane.kept();
        for values in &mut pane.values {
            if let Values::Numeric(v) = values {
                v.retain(|x| x.is_finite());
                v.sort_unstable_by(f64::total_cmp);
            }
        }
        self.closed.push_back(pane);
        let panes = self.config.window.panes().max(1) as usize;
        if self.closed.len() < panes {
            return None;
        }
        let report = self.evaluate();
        while self.closed.len() >= panes {
            self.closed.pop_front();
        }
        report
    }

    /// Tests the window made of the closed panes.
    fn evaluate(&mut self) -> Option<DriftReport> {
        let rows: u64 = self.closed.iter().map(|p| p.rows_seen).sum();
        if rows == 0 {
            return None;
        }
        self.windows += 1;
        let window_index = self.windows;
        let rows_tested: usize = self.closed.iter().map(|p| p.kept_rows).sum();
        let start_ms = self.closed.front().map_or(0, |p| p.start_ms);
        let end_ms = self.closed.back().map_or(0, |p| p.end_ms);
        let mut reports = Vec::with_capacity(self.columns.len());
        for (index, column) in self.columns.iter().enumerate() {
            let mut counts = Counts::default();
            for pane in &self.closed {
                counts.add(&pane.counts[index]);
            }
            let quality = QualityReport::new(&counts, &column.expected);
            let seed = window_index.wrapping_mul(1_000_003) ^ index as u64;
            reports.push(match &column.reference {
                ColumnRef::Numeric(reference) => {
                    let runs: Vec<&[f64]> = self
                        .closed
                        .iter()
                        .filter_map(|pane| match &pane.values[index] {
                            Values::Numeric(v) => Some(&v[..]),
                            Values::Categorical(_) => None,
                        })
                        .collect();
                    let current = merge_sorted(&runs);
                    let data = ColumnData::Numeric {
                        reference,
                        current: &current,
                    };
                    let mut report = column_report(column, &data, quality, seed);
                    report.histogram = numeric_histogram(reference, &current);
                    report.summary = summary(reference, &current);
                    report
                }
                ColumnRef::Categorical(reference) => {
                    let mut by_id: HashMap<u32, u64> = HashMap::new();
                    for pane in &self.closed {
                        if let Values::Categorical(v) = &pane.values[index] {
                            for id in v.iter().filter(|id| **id != NO_CATEGORY) {
                                *by_id.entry(*id).or_default() += 1;
                            }
                        }
                    }
                    let mut current: Vec<(String, u64)> = by_id
                        .into_iter()
                        .map(|(id, n)| (column.categories[id as usize].clone(), n))
                        .collect();
                    current.sort_by(|a, b| a.0.cmp(&b.0));
                    let data = ColumnData::Categorical {
                        reference,
                        current: &current,
                    };
                    let mut report = column_report(column, &data, quality, seed);
                    report.histogram = categorical_histogram(reference, &current);
                    report
                }
            });
        }
        let features: Vec<&ColumnReport> = reports
            .iter()
            .filter(|c| c.role == Role::Feature && c.test.is_some())
            .collect();
        let drifted = features.iter().filter(|c| c.drift()).count();
        let share = if features.is_empty() {
            0.0
        } else {
            drifted as f64 / features.len() as f64
        };
        let prediction_drift = reports
            .iter()
            .find(|c| c.role == Role::Prediction)
            .and_then(|c| c.test.as_ref())
            .map(|t| t.drift);
        Some(DriftReport {
            model: self.model.clone(),
            version: self.version,
            window: WindowInfo {
                index: window_index,
                spec: self.config.window.describe(),
                start_ms,
                end_ms,
                rows,
                rows_tested: rows_tested as u64,
            },
            reference: self.reference.clone(),
            dataset_drift: DatasetDrift {
                columns: features.len(),
                drifted,
                share,
                drift_share: self.config.drift_share,
                drift: !features.is_empty() && share >= self.config.drift_share,
            },
            prediction_drift,
            quality_failures: reports.iter().filter(|c| c.quality.failed()).count(),
            columns: reports,
        })
    }
}

/// One ascending vector from ascending runs (each pane sorted when it closed).
fn merge_sorted(runs: &[&[f64]]) -> Vec<f64> {
    let mut merged: Vec<f64> = runs.first().map_or_else(Vec::new, |r| r.to_vec());
    for run in runs.iter().skip(1) {
        let mut out = Vec::with_capacity(merged.len() + run.len());
        let (mut i, mut j) = (0, 0);
        while i < merged.len() && j < run.len() {
            if merged[i] <= run[j] {
                out.push(merged[i]);
                i += 1;
            } else {
                out.push(run[j]);
                j += 1;
            }
        }
        out.extend_from_slice(&merged[i..]);
        out.extend_from_slice(&run[j..]);
        merged = out;
    }
    merged
}

/// What a row leaves in a pane: every column keeps a value per kept row (NaN or
/// [`NO_CATEGORY`] when it could not be read), so reservoir slots line up across columns.
enum Stored {
    Numeric(f64),
    Category(u32),
}

/// The category id of a missing or unreadable categorical value.
const NO_CATEGORY: u32 = u32::MAX;

/// `slot`: `None` appends; `Some(Some(i))` replaces row `i` (reservoir); `Some(None)` drops.
fn store(values: &mut Values, value: Stored, slot: Option<Option<usize>>) {
    match (values, value) {
        (Values::Numeric(v), Stored::Numeric(x)) => match slot {
            None => v.push(x),
            Some(Some(i)) => v[i] = x,
            Some(None) => {}
        },
        (Values::Categorical(v), Stored::Category(id)) => match slot {
            None => v.push(id),
            Some(Some(i)) => v[i] = id,
            Some(None) => {}
        },
        (Values::Categorical(_), Stored::Numeric(_))
        | (Values::Numeric(_), Stored::Category(_)) => {
            unreachable!("a column stores values of its own type. This is a bug.")
        }
    }
}

fn empty_pane(columns: &[Column], start_ms: u64, end_ms: u64, capacity: usize) -> Pane {
    Pane {
        start_ms,
        end_ms,
        rows_seen: 0,
        kept_rows: 0,
        values: columns
            .iter()
            .map(|c| match c.reference {
                ColumnRef::Numeric(_) => Values::Numeric(Vec::with_capacity(capacity)),
                ColumnRef::Categorical(_) => Values::Categorical(Vec::with_capacity(capacity)),
            })
            .collect(),
        counts: vec![Counts::default(); columns.len()],
    }
}

/// Rows a pane will hold: its step for row windows; time panes grow as rows come (up to their
/// share of `max_window_rows`).
fn pane_capacity(config: &MonitorConfig) -> usize {
    match config.window {
        WindowSpec::Rows { step, .. } => step.min(1 << 16) as usize,
        WindowSpec::Time { .. } => 0,
    }
}

/// The output predictions are read from: the setting, the reference's, or the only output.
fn prediction_output(
    reference: &Reference,
    config: &MonitorConfig,
    layout: &Layout,
) -> Option<String> {
    config
        .prediction
        .clone()
        .or_else(|| reference.prediction.as_ref().map(|p| p.output.clone()))
        .or_else(|| match layout.outputs.as_slice() {
            [only] => Some(only.name.clone()),
            _ => None,
        })
}

#[allow(clippy::too_many_arguments)]
fn build_column(
    name: &str,
    role: Role,
    source: Source,
    describe: String,
    profile: &crate::profile::ColumnProfile,
    categorical: bool,
    config: &MonitorConfig,
    datatype: DataType,
) -> Result<Column, MonitorError> {
    let missing = profile.nulls + profile.numeric.as_ref().map_or(0, |n| n.nan);
    let (reference, expected) = match (&profile.numeric, &profile.categorical) {
        (Some(stats), _) => {
            let numeric = NumericReference::from_stats(stats)
                .ok_or_else(|| {
                    MonitorError(format!("reference column '{name}' has no numeric values"))
                })?
                .rounded_to(datatype);
            if categorical {
                let categories = numeric.as_categories();
                let singletons = categories.counts.iter().filter(|(_, c)| *c == 1.0).count();
                let expected = Expected::categorical(categories.rows, missing, singletons as u64);
                (ColumnRef::Categorical(categories), expected)
            } else {
                let expected = Expected::numeric(numeric.rows, missing);
                (ColumnRef::Numeric(numeric), expected)
            }
        }
        (None, Some(stats)) => {
            let categories = CategoricalReference::from_profile(profile).ok_or_else(|| {
                MonitorError(format!("reference column '{name}' has no categories"))
            })?;
            let singletons = stats.frequencies.iter().filter(|(_, c)| *c == 1).count() as u64;
            let expected = Expected::categorical(profile.count, missing, singletons);
            (ColumnRef::Categorical(categories), expected)
        }
        (None, None) => {
            return Err(MonitorError(format!(
                "reference column '{name}' is neither numeric nor categorical ({})",
                profile.data_type
            )))
        }
    };
    let (method, threshold) = config.test_for(name);
    let column_type = match reference {
        ColumnRef::Numeric(_) => ColumnType::Numeric,
        ColumnRef::Categorical(_) => ColumnType::Categorical,
    };
    if let Some(m) = method {
        if !m.accepts(column_type) {
            return Err(MonitorError(format!(
                "the test '{m}' does not apply to column '{name}', which is {}",
                match column_type {
                    ColumnType::Numeric => "numeric",
                    ColumnType::Categorical => "categorical",
                }
            )));
        }
    }
    Ok(Column {
        name: name.to_string(),
        role,
        source,
        describe,
        reference,
        expected,
        method,
        threshold,
        categories: Vec::new(),
        known: Vec::new(),
        ids: HashMap::new(),
    })
}

fn column_report(
    column: &Column,
    data: &ColumnData<'_>,
    quality: QualityReport,
    seed: u64,
) -> ColumnReport {
    let (test, error) = match run_chosen(column.method, data, column.threshold, seed) {
        Ok(outcome) => (Some(outcome), None),
        Err(TestError::Empty) => (None, Some("no values in this window".to_string())),
        Err(e) => (None, Some(e.to_string())),
    };
    let method_description = test
        .as_ref()
        .map(|t| t.method)
        .or(column.method)
        .map_or("", |m| m.description())
        .to_string();
    ColumnReport {
        name: column.name.clone(),
        role: column.role,
        column_type: column.column_type(),
        source: column.describe.clone(),
        test,
        method_description,
        error,
        quality,
        histogram: ColumnHistogram {
            labels: Vec::new(),
            edges: Vec::new(),
            reference: Vec::new(),
            current: Vec::new(),
        },
        summary: None,
    }
}

fn numeric_histogram(reference: &NumericReference, current: &[f64]) -> ColumnHistogram {
    let lo = current
        .first()
        .copied()
        .unwrap_or(reference.min)
        .min(reference.min);
    let hi = current
        .last()
        .copied()
        .unwrap_or(reference.max)
        .max(reference.max);
    let (lo, hi) = if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let width = (hi - lo) / HISTOGRAM_BINS as f64;
    let edges: Vec<f64> = (0..=HISTOGRAM_BINS)
        .map(|i| {
            if i == HISTOGRAM_BINS {
                hi
            } else {
                lo + width * i as f64
            }
        })
        .collect();
    let bin = |v: f64| (((v - lo) / width) as usize).min(HISTOGRAM_BINS - 1);
    // Reference shares from its cumulative weights at the edges (no pass over its points).
    let total: f64 = reference.weights.iter().sum();
    let r: Vec<f64> = edges
        .windows(2)
        .enumerate()
        .map(|(i, e)| {
            let last = i == HISTOGRAM_BINS - 1;
            reference.mass_below(e[1], last) - reference.mass_below(e[0], false)
        })
        .collect();
    let mut c = vec![0.0; HISTOGRAM_BINS];
    for v in current {
        c[bin(*v)] += 1.0;
    }
    let n = current.len().max(1) as f64;
    ColumnHistogram {
        // Numeric bins are named by their edges (formatting them per window would cost more
        // than the tests).
        labels: Vec::new(),
        edges,
        reference: r.into_iter().map(|x| x / total).collect(),
        current: c.into_iter().map(|x| x / n).collect(),
    }
}

fn categorical_histogram(
    reference: &CategoricalReference,
    current: &[(String, u64)],
) -> ColumnHistogram {
    let r_total: f64 = reference
        .counts
        .iter()
        .map(|(_, c)| c)
        .sum::<f64>()
        .max(1.0);
    let c_total = current.iter().map(|(_, c)| *c).sum::<u64>().max(1) as f64;
    let mut shares: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (k, c) in &reference.counts {
        shares.entry(k).or_default().0 = c / r_total;
    }
    for (k, c) in current {
        shares.entry(k).or_default().1 = *c as f64 / c_total;
    }
    let mut rows: Vec<(&str, (f64, f64))> = shares.into_iter().collect();
    rows.sort_by(|a, b| {
        (b.1 .0.max(b.1 .1))
            .total_cmp(&a.1 .0.max(a.1 .1))
            .then(a.0.cmp(b.0))
    });
    let mut h = ColumnHistogram {
        labels: Vec::new(),
        edges: Vec::new(),
        reference: Vec::new(),
        current: Vec::new(),
    };
    let (mut other_r, mut other_c) = (0.0, 0.0);
    for (i, (k, (r, c))) in rows.into_iter().enumerate() {
        if i < HISTOGRAM_CATEGORIES {
            h.labels.push(k.to_string());
            h.reference.push(r);
            h.current.push(c);
        } else {
            other_r += r;
            other_c += c;
        }
    }
    if other_r > 0.0 || other_c > 0.0 {
        h.labels.push("(other)".into());
        h.reference.push(other_r);
        h.current.push(other_c);
    }
    h
}

fn summary(reference: &NumericReference, current: &[f64]) -> Option<NumericSummary> {
    if current.is_empty() {
        return None;
    }
    let n = current.len() as f64;
    let mean = current.iter().sum::<f64>() / n;
    let std = (current.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Some(NumericSummary {
        reference_mean: reference.mean,
        reference_std: reference.std,
        current_mean: mean,
        current_std: std,
    })
}

/// Reads element `index` of a tensor as a cell.
fn read_cell<'a>(
    tensor: &'a Tensor,
    datatype: DataType,
    index: usize,
    byte_elements: Option<&Vec<&'a [u8]>>,
) -> Cell<'a> {
    if datatype == DataType::Bytes {
        return match byte_elements.and_then(|e| e.get(index)) {
            Some(bytes) => Cell::Text(bytes),
            None => Cell::Absent,
        };
    }
    match read_number(tensor, index) {
        Some(v) => Cell::Number(v),
        None => Cell::Absent,
    }
}

/// Element `index` of a fixed-size tensor as f64.
pub fn read_number(tensor: &Tensor, index: usize) -> Option<f64> {
    if tensor.datatype == DataType::Fp32 {
        // The common case, without the general path's copy.
        let b = tensor.data.get(index * 4..index * 4 + 4)?;
        return Some(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
    let size = tensor.datatype.element_size()?;
    let bytes = tensor.data.get(index * size..(index + 1) * size)?;
    let mut raw = [0u8; 8];
    raw[..size].copy_from_slice(bytes);
    Some(match tensor.datatype {
        DataType::Bool | DataType::Uint8 => f64::from(raw[0]),
        DataType::Int8 => f64::from(raw[0] as i8),
        DataType::Uint16 => f64::from(u16::from_le_bytes([raw[0], raw[1]])),
        DataType::Int16 => f64::from(i16::from_le_bytes([raw[0], raw[1]])),
        DataType::Fp16 => f64::from(half::f16::from_le_bytes([raw[0], raw[1]])),
        DataType::Bf16 => f64::from(half::bf16::from_le_bytes([raw[0], raw[1]])),
        DataType::Uint32 => f64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])),
        DataType::Int32 => f64::from(i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])),
        DataType::Fp32 => f64::from(f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])),
        DataType::Uint64 => u64::from_le_bytes(raw) as f64,
        DataType::Int64 => i64::from_le_bytes(raw) as f64,
        DataType::Fp64 => f64::from_le_bytes(raw),
        DataType::Bytes => return None,
    })
}

fn read_prediction(
    source: &PredictionSource,
    tensor: &Tensor,
    row: usize,
    byte_elements: &HashMap<&str, Vec<&[u8]>>,
) -> Predicted {
    if tensor.device.is_some() {
        return Predicted::Missing;
    }
    match &source.kind {
        PredictionKind::ClassScores { classes } => {
            let mut best: Option<(usize, f64)> = None;
            for k in 0..source.per_row {
                match read_number(tensor, row * source.per_row + k) {
                    Some(v) if !v.is_nan() => {
                        if best.is_none_or(|(_, b)| v > b) {
                            best = Some((k, v));
                        }
                    }
                    _ => return Predicted::Missing,
                }
            }
            match best.and_then(|(index, _)| Some((index, classes.get(index)?))) {
                Some((index, name)) => Predicted::Class {
                    index,
                    name: Arc::clone(name),
                },
                None => Predicted::Missing,
            }
        }
        PredictionKind::Value if source.datatype == DataType::Bytes => {
            match byte_elements
                .get(source.output.as_str())
                .and_then(|e| e.get(row))
                .and_then(|b| std::str::from_utf8(b).ok())
            {
                Some(text) => Predicted::Class {
                    index: usize::MAX,
                    name: Arc::from(text),
                },
                None => Predicted::Missing,
            }
        }
        PredictionKind::Value => match read_number(tensor, row) {
            Some(v) if !v.is_nan() => Predicted::Value(v),
            _ => Predicted::Missing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{categorical_stats, reference_numeric_stats, ColumnProfile, Profile};
    use nereid_protocol::encode_bytes_elements;
    use std::time::Duration;

    /// A reference with numeric `x` (0..=9) fed by FP32 input `X`, categorical `c` (a, b)
    /// fed by BYTES input `C`, and predictions of classes no/yes from output `P`.
    fn setup(window: WindowSpec) -> Monitor {
        setup_with(window, DataType::Fp32)
    }

    fn setup_with(window: WindowSpec, x_type: DataType) -> Monitor {
        let values: Vec<f64> = (0..100).map(|i| f64::from(i % 10)).collect();
        let counts: BTreeMap<&str, u64> = [("a", 60), ("b", 40)].into_iter().collect();
        let predictions: BTreeMap<&str, u64> = [("no", 50), ("yes", 50)].into_iter().collect();
        let categorical = |name: &str, counts: &BTreeMap<&str, u64>| ColumnProfile {
            name: name.into(),
            data_type: "Utf8".into(),
            kind: ColumnKind::Categorical,
            count: 100,
            nulls: 0,
            numeric: None,
            categorical: Some(categorical_stats(counts, 100)),
            temporal: None,
        };
        let reference = Reference {
            format: 2,
            task: Task::Classification,
            dataset_version: "d".into(),
            input_name: String::new(),
            features: Vec::new(),
            label: String::new(),
            classes: vec!["no".into(), "yes".into()],
            profile: Profile {
                rows: 100,
                columns: vec![
                    ColumnProfile {
                        name: "x".into(),
                        data_type: "Float64".into(),
                        kind: ColumnKind::Numeric,
                        count: 100,
                        nulls: 0,
                        numeric: Some(reference_numeric_stats(&values)),
                        categorical: None,
                        temporal: None,
                    },
                    categorical("c", &counts),
                    categorical("predicted", &predictions),
                ],
            },
            inputs: vec![
                crate::reference::InputColumns {
                    name: "X".into(),
                    columns: vec!["x".into()],
                },
                crate::reference::InputColumns {
                    name: "C".into(),
                    columns: vec!["c".into()],
                },
            ],
            prediction: Some(crate::reference::PredictionReference {
                output: "P".into(),
                column: "predicted".into(),
            }),
        };
        let info = |name: &str, datatype, per_row| TensorInfo {
            name: name.into(),
            datatype,
            per_row: Some(per_row),
        };
        let layout = Layout {
            inputs: vec![info("X", x_type, 1), info("C", DataType::Bytes, 1)],
            outputs: vec![info("P", DataType::Fp32, 2)],
            batched: true,
            labels: BTreeMap::new(),
        };
        let config = MonitorConfig {
            window,
            max_window_rows: 10,
            ..MonitorConfig::default()
        };
        Monitor::new("m", 1, &reference, &config, &layout).expect("monitor")
    }

    /// One request of `xs.len()` rows.
    fn request(xs: &[f32], cs: &[&str], yes: &[f32]) -> (Vec<Tensor>, Vec<Tensor>) {
        let n = xs.len() as i64;
        let scores: Vec<f32> = yes.iter().flat_map(|y| [1.0 - y, *y]).collect();
        (
            vec![
                Tensor::from_f32("X", vec![n, 1], xs),
                Tensor::new("C", DataType::Bytes, vec![n, 1], encode_bytes_elements(cs)),
            ],
            vec![Tensor::from_f32("P", vec![n, 2], &scores)],
        )
    }

    fn observe(m: &mut Monitor, xs: &[f32], cs: &[&str], yes: &[f32], t: u64) -> Observed {
        let (inputs, outputs) = request(xs, cs, yes);
        m.observe(&Sample {
            inputs: &inputs,
            outputs: &outputs,
            time_ms: t,
        })
    }

    #[test]
    fn rows_of_a_batch_count_one_by_one_and_windows_slide() {
        let mut m = setup(WindowSpec::Rows { size: 4, step: 2 });
        // 3 rows: the first pane (2 rows) closes, but a window needs two panes.
        let o = observe(
            &mut m,
            &[1.0, 2.0, 3.0],
            &["a", "b", "a"],
            &[0.9, 0.2, 0.6],
            0,
        );
        assert!(o.reports.is_empty());
        assert_eq!(o.predictions.len(), 3);
        assert!(
            matches!(&o.predictions[0], Predicted::Class { index: 1, name } if &**name == "yes")
        );
        assert!(
            matches!(&o.predictions[1], Predicted::Class { index: 0, name } if &**name == "no")
        );
        // Rows 4 to 6 close panes at rows 4 and 6: windows 1 (rows 1-4) and 2 (rows 3-6).
        let o = observe(
            &mut m,
            &[4.0, 5.0, 6.0],
            &["a", "b", "b"],
            &[0.1, 0.1, 0.1],
            1,
        );
        assert_eq!(o.reports.len(), 2);
        let r = &o.reports[0];
        assert_eq!(
            (r.window.index, r.window.rows, r.window.rows_tested),
            (1, 4, 4)
        );
        assert_eq!(r.window.spec, "sliding, 4 rows every 2 rows");
        assert_eq!(r.columns.len(), 3);
        assert_eq!(r.columns[2].role, Role::Prediction);
        assert_eq!(
            r.columns[0].summary.as_ref().map(|s| s.current_mean),
            Some(2.5)
        );
        let r = &o.reports[1];
        assert_eq!((r.window.index, r.window.rows), (2, 4));
        assert_eq!(
            r.columns[0].summary.as_ref().map(|s| s.current_mean),
            Some(4.5)
        );
        // Two more rows close the next window, which overlaps the last by two rows.
        let o = observe(&mut m, &[7.0, 8.0], &["a", "a"], &[0.9, 0.9], 2);
        assert_eq!(o.reports.len(), 1);
        assert_eq!(o.reports[0].window.index, 3);
        assert_eq!(
            o.reports[0].columns[0]
                .summary
                .as_ref()
                .map(|s| s.current_mean),
            Some(6.5)
        );
    }

    #[test]
    fn quality_counts_missing_out_of_range_unseen_and_wrong_type() {
        let mut m = setup(WindowSpec::Rows { size: 6, step: 6 });
        let o = observe(
            &mut m,
            &[1.0, f32::NAN, 42.0, f32::INFINITY, 3.0, 4.0],
            &["a", "b", "zzz", "a", "a", "b"],
            &[0.9, f32::NAN, 0.2, 0.3, 0.9, 0.1],
            0,
        );
        let r = &o.reports[0];
        let x = &r.columns[0].quality;
        assert_eq!((x.rows, x.missing.count), (6, 1));
        assert_eq!(x.out_of_range.as_ref().map(|c| c.count), Some(2));
        // 2 of 6 outside the range of 100 reference values: p = 0.0056, not yet below 0.001.
        let p = x.out_of_range.as_ref().map_or(1.0, |c| c.p_value);
        assert!(p < 0.01 && p > 0.001, "{x:?}");
        let c = &r.columns[1].quality;
        assert_eq!(c.unseen_categories.as_ref().map(|c| c.count), Some(1));
        let p = &r.columns[2].quality;
        assert_eq!(p.missing.count, 1, "NaN scores have no prediction");
        // The tests ran on the finite values (1, 42, 3, 4), as Evidently drops NaN and infinities.
        assert_eq!(
            r.columns[0].summary.as_ref().map(|s| s.current_mean),
            Some(12.5)
        );
        assert!(o.predictions.contains(&Predicted::Missing));
    }

    #[test]
    fn numbers_that_do_not_parse_are_the_wrong_type() {
        // A numeric column fed from a BYTES input: "1.5" is a number, "abc" is not.
        let mut m = setup_with(WindowSpec::Rows { size: 2, step: 2 }, DataType::Bytes);
        let (mut inputs, outputs) = request(&[0.0, 0.0], &["a", "b"], &[0.5, 0.5]);
        inputs[0] = Tensor::new(
            "X",
            DataType::Bytes,
            vec![2, 1],
            encode_bytes_elements(["1.5", "abc"]),
        );
        let o = m.observe(&Sample {
            inputs: &inputs,
            outputs: &outputs,
            time_ms: 0,
        });
        let x = &o.reports[0].columns[0];
        assert_eq!(x.quality.wrong_type.count, 1);
        assert!(x.quality.wrong_type.failed);
        assert_eq!(x.summary.as_ref().map(|s| s.current_mean), Some(1.5));
    }

    #[test]
    fn time_windows_close_on_time_and_keep_a_uniform_sample() {
        let mut m = setup(WindowSpec::Time {
            size: Duration::from_secs(1),
            step: Duration::from_secs(1),
        });
        for t in 0..100u64 {
            assert!(
                observe(&mut m, &[(t % 10) as f32], &["a"], &[0.5], 10_000 + t)
                    .reports
                    .is_empty()
            );
        }
        assert_eq!(m.next_deadline_ms(), Some(11_000));
        assert!(m.tick(10_999).is_empty());
        let reports = m.tick(11_000);
        assert_eq!(reports.len(), 1);
        let w = &reports[0].window;
        assert_eq!((w.start_ms, w.end_ms, w.rows), (10_000, 11_000, 100));
        assert_eq!(w.rows_tested, 10, "max_window_rows keeps a sample of 10");
        // Nothing arrives for a minute: no empty windows are reported.
        assert!(m.tick(71_000).is_empty());
    }
}
