//! Reproducible training of dense models with candle-nn: classifiers (softmax regression and
//! MLPs with a softmax output) and regressors (linear regression and MLPs with raw outputs).
//!
//! [`train_classifier`] takes a row-major feature matrix and class labels, [`train_regressor`] a
//! feature matrix and numeric targets; both return a [`TrainedModel`] whose tensors follow the
//! [`crate::model`] naming contract, so what is trained here is exactly what the server loads.
//!
//! Steps: train/validation/test split by seeded shuffle (stratified by class for classifiers) ->
//! standardisation statistics from the training split only (inputs: shipped as
//! `normalize.mean`/`normalize.std`; regression targets: folded into the last layer after
//! training, so the served model predicts in the target's own units) -> weights initialised from
//! a seeded PRNG -> AdamW on cross-entropy (classification) or mean squared error (regression),
//! full batch or seeded mini-batches -> early stopping on validation loss with patience, keeping
//! the best epoch's weights -> metrics on every split, computed through [`DenseModel`] on the raw
//! features (the same path serving takes): loss and accuracy, or MSE, RMSE, MAE and R².
//!
//! Reproducibility: every random choice comes from [`SplitMix64`] streams derived from the seed,
//! and candle's CPU kernels used here are deterministic for a given build and CPU (matrix
//! multiplication parallelises over output blocks, never over the summed dimension), so two runs
//! with the same data, config and seed produce bit-identical weights. Across different CPUs the
//! SIMD kernels chosen at run time may differ, so bit-identity is only promised on one machine.
//!
//! Training runs synchronously on the calling thread (plus candle's own compute threads); callers
//! in async code should move it to a blocking thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::model::{
    layer_bias_name, layer_weight_name, Activation, Architecture, ArchitectureSpec, DenseModel,
    ModelError, OutputActivation, NORMALIZE_MEAN, NORMALIZE_STD,
};

/// A small, fast, seedable PRNG (Steele et al.'s SplitMix64). Its output is fully defined by the
/// seed on every platform, which is all training needs; it is not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// An independent stream for one purpose (split, init, batching), so that changing how much
    /// randomness one step uses does not change the others.
    pub fn stream(seed: u64, purpose: u64) -> Self {
        let mut mixer = SplitMix64::new(seed ^ purpose.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        SplitMix64::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 24 bits (exactly representable in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `0..n` for `n > 0` (multiply-shift; the bias is below 2^-32 for the sizes used).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

const STREAM_SPLIT: u64 = 1;
const STREAM_INIT: u64 = 2;
const STREAM_BATCHES: u64 = 3;

/// What a model predicts (defined with the reference profiles that record it).
pub use nereid_monitor::Task;

/// What the model learns to predict, row-aligned with the feature matrix.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// Class indices in `0..n_classes`.
    Classes { labels: &'a [u32], n_classes: usize },
    /// `n_outputs` real values per row, row-major.
    Values { values: &'a [f32], n_outputs: usize },
}

impl Targets<'_> {
    pub fn task(&self) -> Task {
        match self {
            Targets::Classes { .. } => Task::Classification,
            Targets::Values { .. } => Task::Regression,
        }
    }

    /// Model outputs per row.
    pub fn outputs(&self) -> usize {
        match *self {
            Targets::Classes { n_classes, .. } => n_classes,
            Targets::Values { n_outputs, .. } => n_outputs,
        }
    }

    /// The targets as a tensor: `u32 [rows]` for classes, `f32 [rows, n_outputs]` for values
    /// (the shapes [`score`] takes).
    pub fn tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        match *self {
            Targets::Classes { labels, .. } => Tensor::from_slice(labels, labels.len(), device),
            Targets::Values { values, n_outputs } => {
                Tensor::from_slice(values, (values.len() / n_outputs.max(1), n_outputs), device)
            }
        }
    }
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Hidden layer widths; empty trains a single layer (architecture `softmax` for classifiers,
    /// `linear` for regressors), otherwise an `mlp` (softmax output for classifiers, raw outputs
    /// for regressors).
    pub hidden: Vec<usize>,
    /// Activation between hidden layers.
    pub activation: Activation,
    /// Maximum number of passes over the training split.
    pub epochs: usize,
    /// AdamW step size.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (0 disables it).
    pub weight_decay: f64,
    /// Rows per optimiser step; `None` uses the whole training split (full batch).
    pub batch_size: Option<usize>,
    /// Stop after this many epochs without a lower validation loss; `None` always runs `epochs`.
    pub patience: Option<usize>,
    /// Seed of every random choice (split, initial weights, batch order).
    pub seed: u64,
    /// Share of the rows (of each class, for classifiers) held out for validation (early stopping).
    pub validation_fraction: f64,
    /// Share of the rows (of each class, for classifiers) held out for the final test metrics.
    pub test_fraction: f64,
    /// Standardise inputs (and regression targets) with training-split statistics; the model
    /// undoes it itself, so clients send raw features and get predictions in the target's units.
    pub standardize: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: Vec::new(),
            activation: Activation::Relu,
            epochs: 500,
            learning_rate: 0.01,
            weight_decay: 0.0,
            batch_size: None,
            patience: Some(50),
            seed: 0,
            validation_fraction: 0.2,
            test_fraction: 0.2,
            standardize: true,
        }
    }
}

impl TrainConfig {
    /// The architecture this config trains for `task`.
    pub fn spec(&self, task: Task) -> ArchitectureSpec {
        match (task, self.hidden.is_empty()) {
            (Task::Classification, true) => ArchitectureSpec::single_layer(Architecture::Softmax),
            (Task::Classification, false) => {
                ArchitectureSpec::mlp(self.activation, OutputActivation::Softmax)
            }
            (Task::Regression, true) => ArchitectureSpec::single_layer(Architecture::Linear),
            (Task::Regression, false) => {
                ArchitectureSpec::mlp(self.activation, OutputActivation::None)
            }
        }
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |msg: String| Err(TrainError::InvalidConfig(msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning_rate must be finite and > 0, got {}",
                self.learning_rate
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be finite and >= 0, got {}",
                self.weight_decay
            ));
        }
        if self.hidden.contains(&0) {
            return bad(format!(
                "hidden layer widths must be > 0, got {:?}",
                self.hidden
            ));
        }
        if self.batch_size == Some(0) {
            return bad("batch_size must be > 0".into());
        }
        for (name, f) in [
            ("validation_fraction", self.validation_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(0.0..1.0).contains(&f) {
                return bad(format!("{name} must be in [0, 1), got {f}"));
            }
        }
        if self.validation_fraction + self.test_fraction >= 1.0 {
            return bad(format!(
                "validation_fraction + test_fraction must be < 1, got {} + {}",
                self.validation_fraction, self.test_fraction
            ));
        }
        Ok(())
    }
}

/// Row indices of each split, in the order they were used.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits rows by a seeded shuffle within each class, so every split keeps the class balance
/// (small data sets otherwise easily lose a class from validation or test).
///
/// Each class gives `round(n * fraction)` rows to validation and to test and the rest to training.
/// Labels must be `< n_classes`.
pub fn stratified_split(
    labels: &[u32],
    n_classes: usize,
    validation_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> Split {
    let mut rng = SplitMix64::stream(seed, STREAM_SPLIT);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (row, &label) in labels.iter().enumerate() {
        if let Some(rows) = by_class.get_mut(label as usize) {
            rows.push(row);
        }
    }
    let mut split = Split::default();
    for mut rows in by_class {
        rng.shuffle(&mut rows);
        let n = rows.len();
        let n_test = ((n as f64 * test_fraction).round() as usize).min(n);
        let n_val = ((n as f64 * validation_fraction).round() as usize).min(n - n_test);
        split.test.extend_from_slice(&rows[..n_test]);
        split
            .validation
            .extend_from_slice(&rows[n_test..n_test + n_val]);
        split.train.extend_from_slice(&rows[n_test + n_val..]);
    }
    // Interleave the classes (matters for mini-batches; harmless otherwise).
    rng.shuffle(&mut split.train);
    rng.shuffle(&mut split.validation);
    rng.shuffle(&mut split.test);
    split
}

/// How well a model does on one split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitMetrics {
    pub rows: usize,
    /// Mean cross-entropy (classification) or mean squared error in the target's units
    /// (regression).
    pub loss: f32,
    pub quality: Quality,
}

/// The task-specific part of [`SplitMetrics`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quality {
    Classification {
        /// Share of rows whose highest-scoring class is the label.
        accuracy: f32,
    },
    Regression {
        /// Root mean squared error.
        rmse: f32,
        /// Mean absolute error.
        mae: f32,
        /// Coefficient of determination over all outputs, `1 - SS_res / SS_tot` (1 when the
        /// targets are constant and predicted exactly, 0 when they are constant and missed).
        r2: f32,
    },
}

impl SplitMetrics {
    /// Accuracy of a classifier; `None` for a regressor.
    pub fn accuracy(&self) -> Option<f32> {
        match self.quality {
            Quality::Classification { accuracy } => Some(accuracy),
            Quality::Regression { .. } => None,
        }
    }

    /// The metrics under their names (`loss`, `accuracy` or `rmse`/`mae`/`r2`), as the run
    /// record and the gate name them.
    pub fn named(&self) -> Vec<(&'static str, f32)> {
        let mut out = vec![("loss", self.loss)];
        match self.quality {
            Quality::Classification { accuracy } => out.push(("accuracy", accuracy)),
            Quality::Regression { rmse, mae, r2 } => {
                out.extend([("rmse", rmse), ("mae", mae), ("r2", r2)])
            }
        }
        out
    }
}

/// Scores `model` on inputs `x` against targets `y` (`u32 [rows]` class indices for
/// classification, `f32 [rows, outputs]` values for regression), through the served forward pass.
pub fn score(
    model: &DenseModel,
    x: &Tensor,
    y: &Tensor,
    task: Task,
) -> candle_core::Result<SplitMetrics> {
    let rows = x.dim(0)?;
    match task {
        Task::Classification => {
            let logits = model.logits(x)?;
            let loss = scalar(&candle_nn::loss::cross_entropy(&logits, y)?)?;
            let correct = logits
                .argmax(D::Minus1)?
                .eq(y)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()?;
            Ok(SplitMetrics {
                rows,
                loss,
                quality: Quality::Classification {
                    accuracy: correct / rows as f32,
                },
            })
        }
        Task::Regression => {
            let predicted = model.forward(x)?.flatten_all()?.to_vec1::<f32>()?;
            let expected = y.flatten_all()?.to_vec1::<f32>()?;
            if predicted.len() != expected.len() {
                candle_core::bail!(
                    "the model gives {} outputs for {rows} rows, the targets have {}",
                    predicted.len(),
                    expected.len()
                );
            }
            // f64 sums: errors of large targets must not lose their small differences.
            let n = expected.len().max(1) as f64;
            let mean = expected.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let (mut squared, mut absolute, mut total) = (0f64, 0f64, 0f64);
            for (&p, &t) in predicted.iter().zip(&expected) {
                let e = f64::from(p) - f64::from(t);
                squared += e * e;
                absolute += e.abs();
                total += (f64::from(t) - mean).powi(2);
            }
            let mse = squared / n;
            let r2 = if total > 0.0 {
                1.0 - squared / total
            } else if squared == 0.0 {
                1.0
            } else {
                0.0
            };
            Ok(SplitMetrics {
                rows,
                loss: mse as f32,
                quality: Quality::Regression {
                    rmse: mse.sqrt() as f32,
                    mae: (absolute / n) as f32,
                    r2: r2 as f32,
                },
            })
        }
    }
}

/// Final metrics of a trained model (validation and test are absent when their split is empty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub train: SplitMetrics,
    pub validation: Option<SplitMetrics>,
    pub test: Option<SplitMetrics>,
}

/// Losses after one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f32,
    pub validation_loss: Option<f32>,
}

/// The result of a training run.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    pub task: Task,
    /// Architecture to name in `config.pbtxt` (see [`ArchitectureSpec::to_parameters`]).
    pub spec: ArchitectureSpec,
    /// Weights under the [`crate::model`] names, ready for `model.safetensors`.
    pub tensors: HashMap<String, Tensor>,
    pub metrics: Metrics,
    /// Epochs actually run (fewer than configured when early stopping fired).
    pub epochs_run: usize,
    /// Epoch whose weights were kept (lowest validation loss, or training loss without validation).
    pub best_epoch: usize,
    pub history: Vec<EpochRecord>,
    pub split: Split,
    pub input_features: usize,
    pub output_features: usize,
}

impl TrainedModel {
    /// Writes the weights as a safetensors file (not fsynced; [`crate::publish`] does that).
    pub fn save_safetensors(&self, path: &Path) -> Result<(), TrainError> {
        candle_core::safetensors::save(&self.tensors, path).map_err(|source| TrainError::Save {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The trained model as the server would run it.
    pub fn to_dense_model(&self) -> Result<DenseModel, ModelError> {
        DenseModel::from_tensors(self.tensors.clone(), self.spec)
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training data: {0}")]
    InvalidInput(String),

    #[error("invalid training config: {0}")]
    InvalidConfig(String),

    #[error("training diverged at epoch {epoch} (loss {loss}); try a lower learning rate")]
    Diverged { epoch: usize, loss: f32 },

    #[error("cannot write {}: {source}", path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },

    #[error(transparent)]
    Model(#[from] ModelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One trainable dense layer, `[out, in]` weight as in the file format.
struct TrainLayer {
    weight: Var,
    bias: Var,
}

fn forward_logits(
    layers: &[TrainLayer],
    activation: Activation,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    let last = layers.len() - 1;
    for (i, layer) in layers.iter().enumerate() {
        h = h
            .matmul(&layer.weight.as_tensor().t()?)?
            .broadcast_add(layer.bias.as_tensor())?;
        if i < last {
            h = activation.apply(&h)?;
        }
    }
    Ok(h)
}

/// Trains a classifier on `features` (row-major, `n_features` per row) and `labels` in
/// `0..n_classes`.
pub fn train_classifier(
    features: &[f32],
    n_features: usize,
    labels: &[u32],
    n_classes: usize,
    cfg: &TrainConfig,
) -> Result<TrainedModel, TrainError> {
    train(
        features,
        n_features,
        Targets::Classes { labels, n_classes },
        cfg,
    )
}

/// Trains a regressor on `features` (row-major, `n_features` per row) and `values`
/// (row-major, `n_outputs` per row).
pub fn train_regressor(
    features: &[f32],
    n_features: usize,
    values: &[f32],
    n_outputs: usize,
    cfg: &TrainConfig,
) -> Result<TrainedModel, TrainError> {
    train(
        features,
        n_features,
        Targets::Values { values, n_outputs },
        cfg,
    )
}

/// Trains a model for `targets` on `features` (row-major, `n_features` per row).
pub fn train(
    features: &[f32],
    n_features: usize,
    targets: Targets<'_>,
    cfg: &TrainConfig,
) -> Result<TrainedModel, TrainError> {
    train_observed(features, n_features, targets, cfg, &mut |_| {})
}

/// [`train`], calling `on_epoch` after each epoch (for progress reporting).
pub fn train_observed(
    features: &[f32],
    n_features: usize,
    targets: Targets<'_>,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<TrainedModel, TrainError> {
    cfg.validate()?;
    let rows = validate_data(features, n_features, &targets)?;
    let task = targets.task();
    let n_outputs = targets.outputs();
    let device = Device::Cpu;

    let split = match targets {
        Targets::Classes { labels, n_classes } => stratified_split(
            labels,
            n_classes,
            cfg.validation_fraction,
            cfg.test_fraction,
            cfg.seed,
        ),
        // One "class" for every row: a plain seeded split.
        Targets::Values { .. } => stratified_split(
            &vec![0; rows],
            1,
            cfg.validation_fraction,
            cfg.test_fraction,
            cfg.seed,
        ),
    };
    if split.train.is_empty() {
        return Err(TrainError::InvalidInput(
            "the training split is empty; lower validation_fraction/test_fraction or add rows"
                .into(),
        ));
    }

    let x_all = Tensor::from_slice(features, (rows, n_features), &device)?;
    let y_all = targets.tensor(&device)?;
    let take = |idx: &[usize]| -> candle_core::Result<(Tensor, Tensor)> {
        let len = idx.len();
        let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, len, &device)?;
        Ok((x_all.index_select(&idx, 0)?, y_all.index_select(&idx, 0)?))
    };
    let (x_train_raw, y_train_raw) = take(&split.train)?;

    let mut tensors = HashMap::new();
    let normalize = if cfg.standardize {
        let (mean, std) = standardization(features, n_features, &split.train);
        let mean = Tensor::from_vec(mean, n_features, &device)?;
        let std = Tensor::from_vec(std, n_features, &device)?;
        tensors.insert(NORMALIZE_MEAN.to_string(), mean.clone());
        tensors.insert(NORMALIZE_STD.to_string(), std.clone());
        Some((mean, std))
    } else {
        None
    };
    // Standardise exactly as DenseModel does at serving time (same f32 ops), so training sees
    // the inputs the served model will see.
    let standardize = |x: &Tensor| -> candle_core::Result<Tensor> {
        match &normalize {
            Some((mean, std)) => x.broadcast_sub(mean)?.broadcast_div(std),
            None => Ok(x.clone()),
        }
    };
    // Regression targets are learnt standardised (well-conditioned whatever their units); the
    // scaling is folded back into the last layer below.
    let target_scaling = match targets {
        Targets::Values { values, n_outputs } if cfg.standardize => {
            let (mean, std) = standardization(values, n_outputs, &split.train);
            Some((
                Tensor::from_vec(mean, n_outputs, &device)?,
                Tensor::from_vec(std, n_outputs, &device)?,
            ))
        }
        _ => None,
    };
    let scale_targets = |y: &Tensor| -> candle_core::Result<Tensor> {
        match &target_scaling {
            Some((mean, std)) => y.broadcast_sub(mean)?.broadcast_div(std),
            None => Ok(y.clone()),
        }
    };
    let loss_of = |outputs: &Tensor, y: &Tensor| -> candle_core::Result<Tensor> {
        match task {
            Task::Classification => candle_nn::loss::cross_entropy(outputs, y),
            Task::Regression => candle_nn::loss::mse(outputs, y),
        }
    };
    let x_train = standardize(&x_train_raw)?;
    let y_train = scale_targets(&y_train_raw)?;
    let validation = if split.validation.is_empty() {
        None
    } else {
        let (x, y) = take(&split.validation)?;
        Some((standardize(&x)?, scale_targets(&y)?))
    };

    let spec = cfg.spec(task);
    let layers = init_layers(
        n_features,
        &cfg.hidden,
        n_outputs,
        cfg.activation,
        cfg.seed,
        &device,
    )?;
    let vars: Vec<Var> = layers
        .iter()
        .flat_map(|l| [l.weight.clone(), l.bias.clone()])
        .collect();
    let mut optimizer = AdamW::new(
        vars,
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;

    let mut batch_rng = SplitMix64::stream(cfg.seed, STREAM_BATCHES);
    let mut order: Vec<u32> = (0..split.train.len() as u32).collect();
    let mut history = Vec::new();
    let mut best: Option<(f32, usize, Vec<Tensor>)> = None;
    let mut epochs_since_best = 0;

    for epoch in 1..=cfg.epochs {
        match cfg.batch_size {
            Some(batch) if batch < split.train.len() => {
                batch_rng.shuffle(&mut order);
                for chunk in order.chunks(batch) {
                    let idx = Tensor::from_slice(chunk, chunk.len(), &device)?;
                    let x = x_train.index_select(&idx, 0)?;
                    let y = y_train.index_select(&idx, 0)?;
                    let loss = loss_of(&forward_logits(&layers, cfg.activation, &x)?, &y)?;
                    optimizer.backward_step(&loss)?;
                }
            }
            _ => {
                let loss = loss_of(
                    &forward_logits(&layers, cfg.activation, &x_train)?,
                    &y_train,
                )?;
                optimizer.backward_step(&loss)?;
            }
        }

        let train_loss = scalar(&loss_of(
            &forward_logits(&layers, cfg.activation, &x_train)?,
            &y_train,
        )?)?;
        let validation_loss = match &validation {
            Some((x, y)) => Some(scalar(&loss_of(
                &forward_logits(&layers, cfg.activation, x)?,
                y,
            )?)?),
            None => None,
        };
        let record = EpochRecord {
            epoch,
            train_loss,
            validation_loss,
        };
        on_epoch(&record);
        history.push(record);
        let monitored = validation_loss.unwrap_or(train_loss);
        if !monitored.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: monitored,
            });
        }
        if best.as_ref().is_none_or(|(loss, _, _)| monitored < *loss) {
            // Deep copies: the optimiser updates the Vars' storage in place.
            let weights = layers
                .iter()
                .flat_map(|l| [l.weight.as_tensor().copy(), l.bias.as_tensor().copy()])
                .collect::<candle_core::Result<Vec<_>>>()?;
            best = Some((monitored, epoch, weights));
            epochs_since_best = 0;
        } else {
            epochs_since_best += 1;
            if cfg.patience.is_some_and(|p| epochs_since_best >= p) {
                break;
            }
        }
    }

    let (_, best_epoch, mut weights) =
        best.expect("at least one epoch ran and recorded a finite loss. This is a bug.");
    if let Some((mean, std)) = &target_scaling {
        // y = (W h + b) * std + mean  ==  (W * std[:, None]) h + (b * std + mean).
        let last = weights.len() - 2;
        weights[last] = weights[last].broadcast_mul(&std.unsqueeze(1)?)?;
        weights[last + 1] = weights[last + 1].mul(std)?.add(mean)?;
    }
    for (i, pair) in weights.chunks(2).enumerate() {
        tensors.insert(layer_weight_name(i), pair[0].clone());
        tensors.insert(layer_bias_name(i), pair[1].clone());
    }

    // Metrics through the served model on raw features: this also checks the saved tensors.
    let model = DenseModel::from_tensors(tensors.clone(), spec)?;
    let evaluate = |idx: &[usize]| -> candle_core::Result<Option<SplitMetrics>> {
        if idx.is_empty() {
            return Ok(None);
        }
        let (x, y) = take(idx)?;
        score(&model, &x, &y, task).map(Some)
    };
    let metrics = Metrics {
        train: evaluate(&split.train)?
            .expect("the training split is not empty (checked above). This is a bug."),
        validation: evaluate(&split.validation)?,
        test: evaluate(&split.test)?,
    };

    Ok(TrainedModel {
        task,
        spec,
        tensors,
        metrics,
        epochs_run: history.len(),
        best_epoch,
        history,
        split,
        input_features: n_features,
        output_features: n_outputs,
    })
}

fn scalar(t: &Tensor) -> candle_core::Result<f32> {
    t.to_scalar::<f32>()
}

/// Checks shapes and values; returns the row count.
fn validate_data(
    features: &[f32],
    n_features: usize,
    targets: &Targets<'_>,
) -> Result<usize, TrainError> {
    let bad = |msg: String| Err(TrainError::InvalidInput(msg));
    if n_features == 0 {
        return bad("n_features must be > 0".into());
    }
    if features.is_empty() || features.len() % n_features != 0 {
        return bad(format!(
            "{} feature values is not a non-zero multiple of n_features = {n_features}",
            features.len()
        ));
    }
    let rows = features.len() / n_features;
    match *targets {
        Targets::Classes { labels, n_classes } => {
            if n_classes < 2 {
                return bad(format!(
                    "a classifier needs at least 2 classes, got {n_classes}"
                ));
            }
            if labels.len() != rows {
                return bad(format!("{rows} feature rows but {} labels", labels.len()));
            }
            if let Some((row, label)) = labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l as usize >= n_classes)
            {
                return bad(format!(
                    "row {row} has label {label}, but n_classes = {n_classes}"
                ));
            }
        }
        Targets::Values { values, n_outputs } => {
            if n_outputs == 0 {
                return bad("a regressor needs at least 1 output".into());
            }
            if values.len() != rows * n_outputs {
                return bad(format!(
                    "{rows} feature rows need {} target values ({n_outputs} per row), got {}",
                    rows * n_outputs,
                    values.len()
                ));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return bad(format!(
                    "row {} target {} is {} (targets must be finite)",
                    i / n_outputs,
                    i % n_outputs,
                    values[i]
                ));
            }
        }
    }
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return bad(format!(
            "row {} feature {} is {} (features must be finite)",
            i / n_features,
            i % n_features,
            features[i]
        ));
    }
    if u32::try_from(rows).is_err() {
        return bad(format!("{rows} rows is more than this trainer indexes"));
    }
    Ok(rows)
}

/// Per-feature mean and population standard deviation of the given rows, accumulated in f64.
/// A constant feature gets std 1 so that it is only centred (dividing by ~0 would blow it up).
fn standardization(features: &[f32], n_features: usize, rows: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let n = rows.len() as f64;
    let mut sum = vec![0f64; n_features];
    for &r in rows {
        for (s, &v) in sum
            .iter_mut()
            .zip(&features[r * n_features..(r + 1) * n_features])
        {
            *s += f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let mut sq = vec![0f64; n_features];
    for &r in rows {
        for ((s, &v), m) in sq
            .iter_mut()
            .zip(&features[r * n_features..(r + 1) * n_features])
            .zip(&mean)
        {
            let d = f64::from(v) - m;
            *s += d * d;
        }
    }
    let std = sq
        .iter()
        .map(|s| {
            let std = (s / n).sqrt() as f32;
            if std.is_finite() && std > 1e-6 {
                std
            } else {
                1.0
            }
        })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// Uniform initialisation from the seed: He bounds (`sqrt(6 / fan_in)`) for layers followed by
/// ReLU/GELU, Glorot bounds (`sqrt(6 / (fan_in + fan_out))`) otherwise; biases start at zero.
fn init_layers(
    n_features: usize,
    hidden: &[usize],
    n_outputs: usize,
    activation: Activation,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Vec<TrainLayer>> {
    let mut rng = SplitMix64::stream(seed, STREAM_INIT);
    let sizes: Vec<usize> = std::iter::once(n_features)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(n_outputs))
        .collect();
    let last = sizes.len() - 2;
    sizes
        .windows(2)
        .enumerate()
        .map(|(i, pair)| {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let rectifier = matches!(activation, Activation::Relu | Activation::Gelu);
            let bound = if i < last && rectifier {
                (6.0 / fan_in as f64).sqrt()
            } else {
                (6.0 / (fan_in + fan_out) as f64).sqrt()
            } as f32;
            let values: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect();
            Ok(TrainLayer {
                weight: Var::from_tensor(&Tensor::from_vec(values, (fan_out, fan_in), device)?)?,
                bias: Var::zeros(fan_out, DType::F32, device)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated blobs in 2-D plus one useless constant feature.
    fn blobs(rows_per_class: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let centers = [(0.0f32, 0.0f32), (6.0, 0.0), (0.0, 6.0)];
        let mut rng = SplitMix64::new(seed);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for (class, (cx, cy)) in centers.iter().enumerate() {
            for _ in 0..rows_per_class {
                features.push(cx + rng.next_f32() * 2.0 - 1.0);
                features.push(cy + rng.next_f32() * 2.0 - 1.0);
                features.push(3.0);
                labels.push(class as u32);
            }
        }
        (features, labels)
    }

    fn weights_bits(model: &TrainedModel) -> Vec<(String, Vec<u32>)> {
        let mut names: Vec<&String> = model.tensors.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let values = model.tensors[name]
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("f32 tensor");
                (name.clone(), values.iter().map(|v| v.to_bits()).collect())
            })
            .collect()
    }

    fn mlp_config(seed: u64) -> TrainConfig {
        TrainConfig {
            hidden: vec![8],
            epochs: 60,
            learning_rate: 0.05,
            batch_size: Some(16),
            seed,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn splitmix_is_stable() {
        // Reference values of SplitMix64 with seed 0, so the streams never change silently.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let v = rng.next_f32();
            assert!((0.0..1.0).contains(&v));
            assert!(rng.below(3) < 3);
        }
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let labels: Vec<u32> = (0..150).map(|i| (i / 50) as u32).collect();
        let split = stratified_split(&labels, 3, 0.2, 0.2, 42);
        assert_eq!(
            (split.train.len(), split.validation.len(), split.test.len()),
            (90, 30, 30)
        );
        for (part, per_class) in [
            (&split.train, 30),
            (&split.validation, 10),
            (&split.test, 10),
        ] {
            for class in 0..3 {
                let n = part.iter().filter(|&&r| labels[r] == class).count();
                assert_eq!(n, per_class);
            }
        }
        let mut all: Vec<usize> = split
            .train
            .iter()
            .chain(&split.validation)
            .chain(&split.test)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());
        assert_eq!(split, stratified_split(&labels, 3, 0.2, 0.2, 42));
        assert_ne!(split, stratified_split(&labels, 3, 0.2, 0.2, 43));
    }

    #[test]
    fn same_seed_gives_bit_identical_weights() {
        let (features, labels) = blobs(40, 1);
        let a = train_classifier(&features, 3, &labels, 3, &mlp_config(42)).expect("train a");
        let b = train_classifier(&features, 3, &labels, 3, &mlp_config(42)).expect("train b");
        assert_eq!(weights_bits(&a), weights_bits(&b));
        assert_eq!(a.history, b.history);
        assert_eq!(a.metrics, b.metrics);

        let c = train_classifier(&features, 3, &labels, 3, &mlp_config(43)).expect("train c");
        assert_ne!(weights_bits(&a), weights_bits(&c));
    }

    #[test]
    fn learns_a_separable_problem() {
        let (features, labels) = blobs(40, 2);
        for hidden in [vec![], vec![8, 8]] {
            let cfg = TrainConfig {
                hidden: hidden.clone(),
                epochs: 300,
                learning_rate: 0.05,
                seed: 5,
                ..TrainConfig::default()
            };
            let model = train_classifier(&features, 3, &labels, 3, &cfg).expect("train");
            let test = model.metrics.test.expect("test split");
            assert_eq!(test.rows, 24);
            assert!(
                test.accuracy().expect("classifier") >= 0.95,
                "{hidden:?}: {:?}",
                model.metrics
            );
            assert!(
                model.metrics.train.accuracy().expect("classifier") >= 0.95,
                "{hidden:?}: {:?}",
                model.metrics
            );
            let expected = if hidden.is_empty() {
                Architecture::Softmax
            } else {
                Architecture::Mlp
            };
            assert_eq!(model.spec.architecture, expected);
            assert_eq!(model.history.len(), model.epochs_run);
            assert!(model.best_epoch >= 1 && model.best_epoch <= model.epochs_run);

            // The served model gives probabilities that agree with the training metrics.
            let dense = model.to_dense_model().expect("dense");
            let x = Tensor::from_slice(&features[..3], (1, 3), &Device::Cpu).expect("x");
            let p = dense.forward(&x).expect("fwd").to_vec2::<f32>().expect("v");
            assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(p[0][0] > 0.5, "{p:?}");
        }
    }

    #[test]
    fn standardization_uses_the_training_split_only() {
        let (features, labels) = blobs(20, 3);
        let cfg = TrainConfig {
            epochs: 2,
            seed: 9,
            ..TrainConfig::default()
        };
        let model = train_classifier(&features, 3, &labels, 3, &cfg).expect("train");
        let mean = model.tensors[NORMALIZE_MEAN]
            .to_vec1::<f32>()
            .expect("mean");
        let std = model.tensors[NORMALIZE_STD].to_vec1::<f32>().expect("std");
        let train = &model.split.train;
        let expected_mean0 = train
            .iter()
            .map(|&r| f64::from(features[r * 3]))
            .sum::<f64>()
            / train.len() as f64;
        assert!((f64::from(mean[0]) - expected_mean0).abs() < 1e-5);
        // The constant feature is centred, not divided by zero.
        assert_eq!((mean[2], std[2]), (3.0, 1.0));
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        // Random labels: validation loss soon rises as an MLP memorises noise.
        let (features, _) = blobs(30, 4);
        let mut rng = SplitMix64::new(11);
        let labels: Vec<u32> = (0..90).map(|_| rng.below(3) as u32).collect();
        let cfg = TrainConfig {
            hidden: vec![32],
            epochs: 2000,
            learning_rate: 0.05,
            patience: Some(5),
            seed: 1,
            ..TrainConfig::default()
        };
        let model = train_classifier(&features, 3, &labels, 3, &cfg).expect("train");
        assert!(model.epochs_run < 2000, "ran {}", model.epochs_run);
        assert_eq!(model.epochs_run, model.best_epoch + 5);
        let best = model.history[model.best_epoch - 1]
            .validation_loss
            .expect("validation");
        let kept = model.metrics.validation.expect("validation").loss;
        assert!((best - kept).abs() < 1e-4, "{best} vs {kept}");
    }

    #[test]
    fn rejects_bad_input() {
        let cfg = TrainConfig::default();
        let err = train_classifier(&[1.0, 2.0, 3.0], 2, &[0], 2, &cfg).expect_err("ragged");
        assert!(matches!(err, TrainError::InvalidInput(_)), "{err}");
        let err = train_classifier(&[1.0, 2.0], 2, &[2], 2, &cfg).expect_err("label");
        assert!(err.to_string().contains("label 2"), "{err}");
        let err = train_classifier(&[1.0, f32::NAN], 2, &[0], 2, &cfg).expect_err("nan");
        assert!(err.to_string().contains("finite"), "{err}");
        let bad_cfg = TrainConfig {
            validation_fraction: 0.6,
            test_fraction: 0.5,
            ..TrainConfig::default()
        };
        let err = train_classifier(&[1.0, 2.0], 2, &[0], 2, &bad_cfg).expect_err("fractions");
        assert!(matches!(err, TrainError::InvalidConfig(_)), "{err}");
    }

    /// `y = 1000 * (3 x0 - 2 x1) + 50000 (+ x0 * x1 * 800 when `nonlinear`)`: large target
    /// units, so learning only works if target scaling does.
    fn regression_data(rows: usize, nonlinear: bool, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = SplitMix64::new(seed);
        let mut features = Vec::new();
        let mut values = Vec::new();
        for _ in 0..rows {
            let x0 = rng.next_f32() * 4.0 - 2.0;
            let x1 = rng.next_f32() * 4.0 - 2.0;
            features.extend([x0, x1]);
            let mut y = 1000.0 * (3.0 * x0 - 2.0 * x1) + 50_000.0;
            if nonlinear {
                y += 800.0 * x0 * x1;
            }
            values.push(y);
        }
        (features, values)
    }

    fn regression_metrics(m: &SplitMetrics) -> (f32, f32, f32) {
        match m.quality {
            Quality::Regression { rmse, mae, r2 } => (rmse, mae, r2),
            other => panic!("not regression metrics: {other:?}"),
        }
    }

    #[test]
    fn learns_linear_and_nonlinear_regression_in_the_targets_units() {
        let (features, values) = regression_data(300, false, 1);
        let cfg = TrainConfig {
            epochs: 400,
            learning_rate: 0.05,
            seed: 3,
            ..TrainConfig::default()
        };
        let linear = train_regressor(&features, 2, &values, 1, &cfg).expect("linear");
        assert_eq!(linear.task, Task::Regression);
        assert_eq!(linear.spec.architecture, Architecture::Linear);
        let test = linear.metrics.test.expect("test split");
        assert_eq!(test.rows, 60);
        let (rmse, mae, r2) = regression_metrics(&test);
        assert!(r2 > 0.999, "{:?}", linear.metrics);
        assert!(rmse < 100.0 && mae <= rmse, "{:?}", linear.metrics);
        assert!((test.loss - rmse * rmse).abs() <= 1e-3 * test.loss.max(1.0));

        // The served model answers in the target's units: no rescaling left to the client.
        let dense = linear.to_dense_model().expect("dense");
        let x = Tensor::from_slice(&[1.0f32, -1.0], (1, 2), &Device::Cpu).expect("x");
        let y = dense.forward(&x).expect("fwd").to_vec2::<f32>().expect("v");
        assert!((y[0][0] - 55_000.0).abs() < 200.0, "{y:?}");

        // A linear model cannot fit the interaction; an MLP can.
        let (features, values) = regression_data(400, true, 2);
        let linear = train_regressor(&features, 2, &values, 1, &cfg).expect("linear");
        let mlp_cfg = TrainConfig {
            hidden: vec![32, 32],
            epochs: 600,
            learning_rate: 0.01,
            batch_size: Some(64),
            seed: 3,
            ..TrainConfig::default()
        };
        let mlp = train_regressor(&features, 2, &values, 1, &mlp_cfg).expect("mlp");
        assert_eq!(
            mlp.spec,
            ArchitectureSpec::mlp(Activation::Relu, OutputActivation::None)
        );
        let (linear_rmse, _, _) = regression_metrics(&linear.metrics.test.expect("test"));
        let (mlp_rmse, _, mlp_r2) = regression_metrics(&mlp.metrics.test.expect("test"));
        assert!(mlp_r2 > 0.98, "{:?}", mlp.metrics);
        assert!(
            mlp_rmse < linear_rmse / 2.0,
            "mlp {mlp_rmse} vs linear {linear_rmse}"
        );
    }

    #[test]
    fn regression_is_bit_reproducible_and_scores_like_the_served_model() {
        let (features, values) = regression_data(120, true, 4);
        let cfg = TrainConfig {
            hidden: vec![8],
            epochs: 50,
            batch_size: Some(16),
            seed: 8,
            ..TrainConfig::default()
        };
        let a = train_regressor(&features, 2, &values, 1, &cfg).expect("a");
        let b = train_regressor(&features, 2, &values, 1, &cfg).expect("b");
        assert_eq!(weights_bits(&a), weights_bits(&b));
        assert_eq!(a.metrics, b.metrics);

        // score() on the test rows equals the metrics training reported.
        let dense = a.to_dense_model().expect("dense");
        let rows = &a.split.test;
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&r| features[r * 2..r * 2 + 2].to_vec())
            .collect();
        let y: Vec<f32> = rows.iter().map(|&r| values[r]).collect();
        let x = Tensor::from_vec(x, (rows.len(), 2), &Device::Cpu).expect("x");
        let y = Tensor::from_vec(y, (rows.len(), 1), &Device::Cpu).expect("y");
        let scored = score(&dense, &x, &y, Task::Regression).expect("score");
        assert_eq!(Some(scored), a.metrics.test);
    }

    #[test]
    fn regression_metrics_match_hand_computed_values() {
        // A linear model with identity weights: predictions = inputs.
        let mut tensors = HashMap::new();
        let dev = Device::Cpu;
        tensors.insert(
            layer_weight_name(0),
            Tensor::from_slice(&[1.0f32], (1, 1), &dev).expect("w"),
        );
        tensors.insert(
            layer_bias_name(0),
            Tensor::from_slice(&[0.0f32], 1, &dev).expect("b"),
        );
        let model = DenseModel::from_tensors(
            tensors,
            ArchitectureSpec::single_layer(Architecture::Linear),
        )
        .expect("model");
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0], (4, 1), &dev).expect("x");
        let y = Tensor::from_slice(&[1.0f32, 3.0, 3.0, 2.0], (4, 1), &dev).expect("y");
        let m = score(&model, &x, &y, Task::Regression).expect("score");
        // errors 0, -1, 0, 2: SSE 5, MSE 1.25, MAE 0.75; mean 2.25, SS_tot 2.75.
        assert_eq!(m.rows, 4);
        assert!((m.loss - 1.25).abs() < 1e-6);
        let (rmse, mae, r2) = regression_metrics(&m);
        assert!((rmse - 1.25f32.sqrt()).abs() < 1e-6);
        assert!((mae - 0.75).abs() < 1e-6);
        assert!((r2 - (1.0 - 5.0 / 2.75)).abs() < 1e-6);
        assert_eq!(
            m.named().iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["loss", "rmse", "mae", "r2"]
        );
    }

    #[test]
    fn rejects_bad_regression_targets() {
        let cfg = TrainConfig::default();
        let err = train_regressor(&[1.0, 2.0], 1, &[1.0], 1, &cfg).expect_err("length");
        assert!(err.to_string().contains("need 2 target values"), "{err}");
        let err = train_regressor(&[1.0, 2.0], 1, &[1.0, f32::INFINITY], 1, &cfg).expect_err("inf");
        assert!(err.to_string().contains("targets must be finite"), "{err}");
        let err = train_regressor(&[1.0], 1, &[], 0, &cfg).expect_err("outputs");
        assert!(err.to_string().contains("at least 1 output"), "{err}");
    }

    #[test]
    fn saved_file_loads_as_the_same_model() {
        let (features, labels) = blobs(10, 6);
        let cfg = TrainConfig {
            hidden: vec![4],
            epochs: 5,
            ..TrainConfig::default()
        };
        let model = train_classifier(&features, 3, &labels, 3, &cfg).expect("train");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        model.save_safetensors(&path).expect("save");
        let loaded = DenseModel::load(&path, model.spec, &Device::Cpu).expect("load");
        let x = Tensor::from_slice(&features, (30, 3), &Device::Cpu).expect("x");
        let a = loaded
            .forward(&x)
            .expect("fwd")
            .to_vec2::<f32>()
            .expect("v");
        let b = model
            .to_dense_model()
            .expect("dense")
            .forward(&x)
            .expect("fwd")
            .to_vec2::<f32>()
            .expect("v");
        assert_eq!(a, b);
    }
}
