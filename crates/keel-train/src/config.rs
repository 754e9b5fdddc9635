//! `keel train`'s configuration file (TOML) and the run it describes: the data, the MLP, the
//! optimizer, the schedule, when to save and what to keep.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use keel_ckpt::{
    AnyOf, CheckpointStore, EveryNEpochs, EveryNSteps, Exponential, Goal, Location, Retention,
    SavePolicy, WallClock, YoungDaly,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::TrainError;
use crate::data::Dataset;
use crate::metrics::LogFormat;
use crate::model::Mlp;
use crate::optim::{AdamW, AdamWConfig, SgdConfig, SgdMomentum};
use crate::rng::TrainRng;
use crate::schedule::Schedule;
use crate::shard::OptimizerSharding;
use crate::trainer::{Event, Outcome, StopSignal, TrainSettings, Trainer};

/// A training run as `keel train CONFIG.toml` reads it. Every field has a default: the empty
/// file is the built-in run (784-256-10 MLP, AdamW lr 1e-3, MNIST 10k, 80/20 split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The run's name: its folder under `runs_dir`.
    pub name: String,
    /// Where runs live (relative to the working directory).
    pub runs_dir: PathBuf,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Epochs in all.
    pub epochs: u64,
    /// Rows per step.
    pub batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The data.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// `optimizer_sharding = "replicated"` (the default: every rank holds the whole optimizer
    /// state) or `"sharded"` (ZeRO-1: each rank holds, updates and saves the state of its
    /// share of the parameters; the weights are the same bit for bit). Not part of the
    /// trajectory: a run resumes across the two.
    pub optimizer_sharding: OptimizerSharding,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Metrics log and plot.
    pub log: LogConfig,
}

/// Which data, and the split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `mnist10k` or `digits` (shipped with keel), `idx` (`images` + `labels`) or `csv`.
    pub dataset: DatasetName,
    /// IDX images file (for `idx`), relative to the configuration file.
    pub images: Option<PathBuf>,
    /// IDX labels file (for `idx`).
    pub labels: Option<PathBuf>,
    /// CSV file (for `csv`): pixel values 0..=16 then the label, as the digits set.
    pub csv: Option<PathBuf>,
    /// Share of rows held out for testing.
    pub test_fraction: f64,
    /// Seed of the split (kept apart from the training seed: the held-out set stays the same).
    pub split_seed: u64,
}

/// The MLP: hidden layer sizes (inputs and classes come from the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hidden layer sizes.
    pub hidden: Vec<usize>,
    /// Dropout after each hidden layer in training.
    pub dropout: f32,
}

/// The optimizer and its hyper-parameters. In the file every key is optional: `kind`
/// defaults to `adamw`, each hyper-parameter to the kind's default; one of the other kind is
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "OptimizerTable")]
pub enum OptimizerConfig {
    /// AdamW.
    AdamW(AdamWConfig),
    /// SGD with momentum.
    Sgd(SgdConfig),
}

/// `[optimizer]` as written: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerTable {
    #[serde(default)]
    kind: OptimizerKind,
    lr: Option<f64>,
    beta1: Option<f64>,
    beta2: Option<f64>,
    eps: Option<f64>,
    weight_decay: Option<f64>,
    momentum: Option<f64>,
    nesterov: Option<bool>,
}

/// The optimizers `kind` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OptimizerKind {
    #[default]
    AdamW,
    Sgd,
}

/// Refuses the keys of `given` that are set: they belong to another `kind` of `table`.
fn not_of_kind(table: &str, kind: &str, given: &[(&str, bool)]) -> Result<(), String> {
    match given.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(format!(
            "{table}: `{key}` is not a setting of kind = \"{kind}\""
        )),
        None => Ok(()),
    }
}

impl TryFrom<OptimizerTable> for OptimizerConfig {
    type Error = String;

    fn try_from(t: OptimizerTable) -> Result<Self, String> {
        Ok(match t.kind {
            OptimizerKind::AdamW => {
                not_of_kind(
                    "optimizer",
                    "adamw",
                    &[
                        ("momentum", t.momentum.is_some()),
                        ("nesterov", t.nesterov.is_some()),
                    ],
                )?;
                let d = AdamWConfig::default();
                OptimizerConfig::AdamW(AdamWConfig {
                    lr: t.lr.unwrap_or(d.lr),
                    beta1: t.beta1.unwrap_or(d.beta1),
                    beta2: t.beta2.unwrap_or(d.beta2),
                    eps: t.eps.unwrap_or(d.eps),
                    weight_decay: t.weight_decay.unwrap_or(d.weight_decay),
                })
            }
            OptimizerKind::Sgd => {
                not_of_kind(
                    "optimizer",
                    "sgd",
                    &[
                        ("beta1", t.beta1.is_some()),
                        ("beta2", t.beta2.is_some()),
                        ("eps", t.eps.is_some()),
                    ],
                )?;
                let d = SgdConfig::default();
                OptimizerConfig::Sgd(SgdConfig {
                    lr: t.lr.unwrap_or(d.lr),
                    momentum: t.momentum.unwrap_or(d.momentum),
                    weight_decay: t.weight_decay.unwrap_or(d.weight_decay),
                    nesterov: t.nesterov.unwrap_or(d.nesterov),
                })
            }
        })
    }
}

/// The data sets `data.dataset` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    /// The 10,000-image MNIST subset shipped with keel.
    Mnist10k,
    /// `mnist10k` by its older name (kept apart: it is recorded as written).
    Mnist,
    /// The 8x8 digits shipped with keel.
    Digits,
    /// IDX files (`images`, `labels`).
    Idx,
    /// A digits CSV file (`csv`).
    Csv,
}

impl DatasetName {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist10k => "mnist10k",
            DatasetName::Mnist => "mnist",
            DatasetName::Digits => "digits",
            DatasetName::Idx => "idx",
            DatasetName::Csv => "csv",
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The metric that picks the `best` checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Held-out accuracy (higher is better).
    TestAccuracy,
    /// Held-out loss (lower is better).
    TestLoss,
    /// No `best` checkpoint (`""` in the file).
    #[serde(rename = "")]
    None,
}

/// When to save and what to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// The store: a folder (NFS too), a `file://` URL or `s3://bucket/prefix`; default
    /// `RUN/checkpoints`.
    pub dir: Option<Location>,
    /// Save every N steps (0: off).
    pub every_steps: u64,
    /// Save at the end of every N-th epoch (0: off).
    pub every_epochs: u64,
    /// Save when this many seconds passed since the last save.
    pub every_secs: Option<f64>,
    /// Save at the end of epochs 1, 2, 4, 8, ...
    pub exponential: bool,
    /// Save at the Young/Daly interval for this mean time between failures (seconds) and the
    /// measured save cost.
    pub mtbf_secs: Option<f64>,
    /// Write checkpoints on a background thread.
    pub background: bool,
    /// Keep the newest N regular (and interrupted, emergency) checkpoints; 0 keeps all.
    pub keep_last: usize,
    /// Keep the best N `best` checkpoints; 0 keeps all.
    pub keep_best: usize,
    /// The metric that picks the best checkpoint: `test_accuracy` or `test_loss` (empty: none).
    pub best_metric: BestMetric,
}

/// Metrics log and plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `csv` (metrics.csv) or `jsonl` (metrics.jsonl).
    pub metrics: LogFormat,
    /// Draw `loss.svg` at the end.
    pub plot: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: "mnist-mlp".into(),
            runs_dir: PathBuf::from("runs"),
            seed: 42,
            epochs: 5,
            batch_size: 64,
            device: "cpu".into(),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::AdamW(AdamWConfig::default()),
            optimizer_sharding: OptimizerSharding::Replicated,
            schedule: Schedule::Constant,
            checkpoint: CheckpointConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetName::Mnist10k,
            images: None,
            labels: None,
            csv: None,
            test_fraction: 0.2,
            split_seed: 0,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            hidden: vec![256],
            dropout: 0.0,
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: None,
            every_steps: 0,
            every_epochs: 1,
            every_secs: None,
            exponential: false,
            mtbf_secs: None,
            background: true,
            keep_last: 3,
            keep_best: 1,
            best_metric: BestMetric::TestAccuracy,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            metrics: LogFormat::Csv,
            plot: true,
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where a run writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPaths {
    /// `runs_dir/name`.
    pub run_dir: PathBuf,
    /// The checkpoint store's location.
    pub checkpoints: Location,
    /// The metrics log.
    pub metrics: PathBuf,
    /// The loss plot, when drawn.
    pub plot: Option<PathBuf>,
}

/// What `keel train` adds on top of the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Start from scratch.
    pub fresh: bool,
    /// Fault injection: the loss of this step becomes NaN.
    pub nan_at_step: Option<u64>,
    /// Recorded in checkpoints and compared on resume (`keel hash --json`).
    pub environment: Option<serde_json::Value>,
    /// Recorded in checkpoints and compared on resume (`keel probe --json`).
    pub device_probe: Option<serde_json::Value>,
}

/// The device a name asks for: `cpu`, `cuda` (GPU 0) or `cuda:N`. CUDA needs a keel built with
/// the `cuda` feature.
pub fn parse_device(name: &str) -> Result<Device, TrainError> {
    let fail = |reason: String| TrainError::Device {
        device: name.to_string(),
        reason,
    };
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| fail("expected `cpu`, `cuda` or `cuda:N`".into()))?,
        None => return Err(fail("expected `cpu`, `cuda` or `cuda:N`".into())),
    };
    if !cfg!(feature = "cuda") {
        return Err(fail(
            "this keel was built without CUDA support; build it with `--features cuda` \
             (needs the CUDA toolkit) or train with `--device cpu`"
                .into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| fail(e.to_string()))
}

/// The largest configuration file keel reads: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A setting that is out of range: its key path in the file (`["optimizer", "lr"]`) and why.
type Bad = (Vec<&'static str>, String);

fn bad(path: &[&'static str], message: impl Into<String>) -> Bad {
    (path.to_vec(), message.into())
}

/// The byte offset of the value at `keys` in the TOML `text` (of the deepest table on the way
/// when the value itself is not written: a default).
fn locate(text: &str, keys: &[&str]) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut found = None;
    for key in keys {
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == key) else {
            break;
        };
        found = Some(value.span().start);
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found
}

impl TrainConfig {
    /// Reads a configuration file; errors name the file, line and column. The file is opened,
    /// checked to be a regular file of at most [`MAX_CONFIG_BYTES`], then read.
    pub fn from_path(path: &Path) -> Result<Self, TrainError> {
        let (file, _) = crate::data::open_regular(path, MAX_CONFIG_BYTES)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_CONFIG_BYTES), &mut bytes)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let before = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            let (line, column) = line_column(&before, valid);
            TrainError::Config {
                path: path.to_path_buf(),
                line,
                column,
                message: format!("not UTF-8 text: {}", e.utf8_error()),
            }
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses configuration text (`path` names it in errors and anchors relative data paths).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, TrainError> {
        let mut config: TrainConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            TrainError::Config {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for file in [
            &mut config.data.images,
            &mut config.data.labels,
            &mut config.data.csv,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        config.check().map_err(|(keys, message)| {
            // A key not written (a default) is placed at the deepest table written on the
            // way, else at the start of the file.
            let (line, column) = line_column(text, locate(text, &keys).unwrap_or(0));
            TrainError::Config {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        Ok(config)
    }

    /// Every setting in range, so that a run can neither panic, allocate without bound nor
    /// compute a non-finite update: returns the key at fault and why.
    fn check(&self) -> Result<(), Bad> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            return Err(bad(
                &["name"],
                format!(
                    "name `{}`: use letters, digits, `-`, `_` and `.` (it names a folder)",
                    self.name
                ),
            ));
        }
        if self.epochs == 0 {
            return Err(bad(&["epochs"], "epochs must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(bad(&["batch_size"], "batch_size must be at least 1"));
        }
        let data = &self.data;
        let (features, classes) = match data.dataset {
            DatasetName::Mnist10k | DatasetName::Mnist => (784, 10),
            DatasetName::Digits => (64, 10),
            DatasetName::Idx | DatasetName::Csv => (1, 1),
        };
        let needs: &[(&'static str, &Option<PathBuf>)] = match data.dataset {
            DatasetName::Idx => &[("images", &data.images), ("labels", &data.labels)],
            DatasetName::Csv => &[("csv", &data.csv)],
            _ => &[],
        };
        if let Some((what, _)) = needs.iter().find(|(_, file)| file.is_none()) {
            return Err(bad(
                &["data", "dataset"],
                format!("data.dataset = \"{}\" needs data.{what}", data.dataset),
            ));
        }
        if !(data.test_fraction > 0.0 && data.test_fraction < 1.0) {
            return Err(bad(
                &["data", "test_fraction"],
                format!(
                    "data.test_fraction must be between 0 and 1 (exclusive), got {}",
                    data.test_fraction
                ),
            ));
        }
        if self.model.hidden.contains(&0) {
            return Err(bad(&["model", "hidden"], "model.hidden: a layer of size 0"));
        }
        // The smallest model the data can give (inputs and classes of a custom set are known
        // once it is read; the trainer checks again then).
        let mut sizes = vec![features];
        sizes.extend(&self.model.hidden);
        sizes.push(classes);
        crate::model::check_mlp_size(&sizes)
            .map_err(|e| bad(&["model", "hidden"], format!("model.hidden: {e}")))?;
        if !(0.0..1.0).contains(&self.model.dropout) {
            return Err(bad(
                &["model", "dropout"],
                format!("model.dropout {} is not in [0, 1)", self.model.dropout),
            ));
        }
        let (kind, optimizer) = match self.optimizer {
            OptimizerConfig::AdamW(c) => ("adamw", c.check()),
            OptimizerConfig::Sgd(c) => ("sgd", c.check()),
        };
        optimizer
            .map_err(|(field, e)| bad(&["optimizer", field], format!("optimizer ({kind}): {e}")))?;
        self.schedule
            .check()
            .map_err(|(field, e)| bad(&["schedule", field], format!("schedule: {e}")))?;
        for (key, v) in [
            ("every_secs", self.checkpoint.every_secs),
            ("mtbf_secs", self.checkpoint.mtbf_secs),
        ] {
            if let Some(v) = v
                && !(v > 0.0 && Duration::try_from_secs_f64(v).is_ok())
            {
                return Err(bad(
                    &["checkpoint", key],
                    format!("checkpoint.{key} must be a positive number of seconds, got {v}"),
                ));
            }
        }
        Ok(())
    }

    /// Where this run writes.
    pub fn paths(&self) -> RunPaths {
        let run_dir = self.runs_dir.join(&self.name);
        let metrics = run_dir.join(match self.log.metrics {
            LogFormat::Csv => "metrics.csv",
            LogFormat::Jsonl => "metrics.jsonl",
        });
        RunPaths {
            checkpoints: self
                .checkpoint
                .dir
                .clone()
                .unwrap_or_else(|| Location::local(run_dir.join("checkpoints"))),
            plot: self.log.plot.then(|| run_dir.join("loss.svg")),
            metrics,
            run_dir,
        }
    }

    /// The data's files, or the shipped set's name.
    fn data_name(&self) -> String {
        let files: Vec<&Option<PathBuf>> = match self.data.dataset {
            DatasetName::Idx => vec![&self.data.images, &self.data.labels],
            DatasetName::Csv => vec![&self.data.csv],
            _ => vec![],
        };
        let files: Vec<String> = files
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .collect();
        if files.is_empty() {
            self.data.dataset.to_string()
        } else {
            files.join(" and ")
        }
    }

    /// The data, split into training and held-out sets.
    pub fn datasets(&self) -> Result<(Dataset, Dataset), TrainError> {
        let missing = |what: &str| {
            TrainError::Setting(format!(
                "data.dataset = \"{}\" needs data.{what}",
                self.data.dataset
            ))
        };
        let data = match self.data.dataset {
            DatasetName::Mnist10k | DatasetName::Mnist => Dataset::mnist10k()?,
            DatasetName::Digits => Dataset::digits()?,
            DatasetName::Idx => Dataset::from_idx(
                self.data
                    .images
                    .as_deref()
                    .ok_or_else(|| missing("images"))?,
                self.data
                    .labels
                    .as_deref()
                    .ok_or_else(|| missing("labels"))?,
            )?,
            DatasetName::Csv => {
                Dataset::from_digits_csv(self.data.csv.as_deref().ok_or_else(|| missing("csv"))?)?
            }
        };
        data.split(self.data.test_fraction, self.data.split_seed)
    }

    /// The settings that change the trajectory: a checkpoint written with other values is not
    /// resumed.
    pub fn trajectory(&self) -> serde_json::Value {
        let mut t = json!({
            "seed": self.seed,
            "batch_size": self.batch_size,
            "data": self.data,
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.schedule,
        });
        if !matches!(self.schedule, Schedule::Constant) {
            // The schedule spans the whole run.
            t["epochs"] = json!(self.epochs);
        }
        t
    }

    fn policy(&self) -> Box<dyn SavePolicy> {
        let c = &self.checkpoint;
        let mut all: Vec<Box<dyn SavePolicy>> = Vec::new();
        if c.every_steps > 0 {
            all.push(Box::new(EveryNSteps(c.every_steps)));
        }
        if c.every_epochs > 0 {
            all.push(Box::new(EveryNEpochs(c.every_epochs)));
        }
        if let Some(secs) = c.every_secs {
            all.push(Box::new(WallClock::new(Duration::from_secs_f64(secs))));
        }
        if c.exponential {
            all.push(Box::new(Exponential::default()));
        }
        if let Some(mtbf) = c.mtbf_secs {
            all.push(Box::new(YoungDaly::new(
                Duration::from_secs_f64(mtbf),
                Duration::from_secs(1),
            )));
        }
        Box::new(AnyOf(all))
    }

    fn best_metric(&self) -> Option<(String, Goal)> {
        match self.checkpoint.best_metric {
            BestMetric::None => None,
            BestMetric::TestLoss => Some(("test_loss".into(), Goal::Min)),
            BestMetric::TestAccuracy => Some(("test_accuracy".into(), Goal::Max)),
        }
    }

    /// Builds the model, optimizer and trainer this configuration describes and runs it:
    /// resumes from the newest valid checkpoint unless `options.fresh`.
    pub fn run(
        &self,
        options: &RunOptions,
        stop: &StopSignal,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Outcome, TrainError> {
        self.run_on(
            std::sync::Arc::new(keel_dist::Single),
            options,
            stop,
            observer,
        )
    }

    /// [`TrainConfig::run`] as one rank of `world` (data parallel, see
    /// [`Trainer::with_world`]): every rank of the job calls it with the same configuration.
    pub fn run_on(
        &self,
        world: std::sync::Arc<dyn keel_dist::Collective>,
        options: &RunOptions,
        stop: &StopSignal,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Outcome, TrainError> {
        let device = parse_device(&self.device)?;
        let (train, test) = self.datasets()?;
        let paths = self.paths();
        let store = CheckpointStore::at(&paths.checkpoints)?;
        let mut sizes = vec![train.features];
        sizes.extend(&self.model.hidden);
        sizes.push(train.classes.max(test.classes));
        crate::model::check_mlp_size(&sizes).map_err(|e| {
            TrainError::Setting(format!(
                "{}: {} features and {} classes: {e}",
                self.data_name(),
                train.features,
                train.classes.max(test.classes)
            ))
        })?;
        let mut rng = TrainRng::new(self.seed);
        let model = Mlp::new(&sizes, self.model.dropout, &device, &mut rng)?;
        let best_metric = self.best_metric();
        let retention = Retention {
            keep_last: self.checkpoint.keep_last,
            keep_best: self.checkpoint.keep_best,
            keep_every: None,
            best_metric: best_metric.clone(),
        };
        let settings = |lr: f64| TrainSettings {
            seed: self.seed,
            epochs: self.epochs,
            batch_size: self.batch_size,
            schedule: self.schedule,
            lr,
            policy: self.policy(),
            save_async: self.checkpoint.background,
            retention: Some(retention.clone()),
            best_metric: best_metric.clone(),
            fresh: options.fresh,
            trajectory: self.trajectory(),
            metrics: Some((paths.metrics.clone(), self.log.metrics)),
            plot: paths.plot.clone(),
            environment: options.environment.clone(),
            device_probe: options.device_probe.clone(),
            nan_at_step: options.nan_at_step,
            optimizer_sharding: self.optimizer_sharding,
            step_times: crate::trainer::step_times_from_env(),
        };
        let parameters = crate::model::Model::parameters(&model);
        match self.optimizer {
            OptimizerConfig::AdamW(config) => {
                let optimizer = AdamW::named(parameters, config)?;
                Trainer::new(model, optimizer, rng, device, store, settings(config.lr))
                    .with_world(world)
                    .run(&train, &test, stop, observer)
            }
            OptimizerConfig::Sgd(config) => {
                let optimizer = SgdMomentum::named(parameters, config)?;
                Trainer::new(model, optimizer, rng, device, store, settings(config.lr))
                    .with_world(world)
                    .run(&train, &test, stop, observer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_run() {
        let config = TrainConfig::from_toml("", Path::new("train.toml")).unwrap();
        assert_eq!(config, TrainConfig::default());
        assert_eq!(
            config.paths().checkpoints,
            Location::local("runs/mnist-mlp/checkpoints")
        );
    }

    #[test]
    fn sections_parse_and_relative_paths_follow_the_file() {
        let text = r#"
name = "sgd-digits"
epochs = 3
[data]
dataset = "csv"
csv = "data/digits.csv"
[optimizer]
kind = "sgd"
lr = 0.05
momentum = 0.8
[schedule]
kind = "cosine"
warmup_steps = 10
[checkpoint]
every_steps = 50
dir = "s3://bucket/runs/x"
"#;
        let config = TrainConfig::from_toml(text, Path::new("conf/train.toml")).unwrap();
        assert_eq!(config.data.csv, Some(PathBuf::from("conf/data/digits.csv")));
        assert_eq!(
            config.optimizer,
            OptimizerConfig::Sgd(SgdConfig {
                lr: 0.05,
                momentum: 0.8,
                ..SgdConfig::default()
            })
        );
        assert_eq!(config.paths().checkpoints.to_string(), "s3://bucket/runs/x");
        assert!(!config.paths().checkpoints.is_local());
        assert_eq!(config.trajectory()["epochs"], 3);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err =
            TrainConfig::from_toml("epochs = 3\n[model]\nhiden = [128]\n", Path::new("t.toml"))
                .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("t.toml:3:1: unknown field `hiden`"),
            "{text}"
        );
        let err = TrainConfig::from_toml("[optimizer]\nkind = \"adam\"\n", Path::new("t.toml"))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.toml:2:8: unknown variant `adam`"),
            "{err}"
        );
        let err = TrainConfig::from_toml(
            "[optimizer]\nkind = \"adamw\"\nlr = \"fast\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("t.toml:"), "{err}");
        let err = TrainConfig::from_toml("name = \"../x\"\n", Path::new("t.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.toml:1:8: name `../x`: use letters, digits, `-`, `_` and `.` (it names a folder)"
        );
    }

    /// `optimizer_sharding` reads `replicated` (the default) and `sharded`; anything else is
    /// refused at its line and column; it stays out of the trajectory (a run resumes across
    /// the two layouts).
    #[test]
    fn optimizer_sharding_parses_and_stays_out_of_the_trajectory() {
        let sharded =
            TrainConfig::from_toml("optimizer_sharding = \"sharded\"\n", Path::new("t.toml"))
                .unwrap();
        assert_eq!(sharded.optimizer_sharding, OptimizerSharding::Sharded);
        assert_eq!(
            TrainConfig::default().optimizer_sharding,
            OptimizerSharding::Replicated
        );
        assert_eq!(sharded.trajectory(), TrainConfig::default().trajectory());
        let err = TrainConfig::from_toml(
            "epochs = 2\noptimizer_sharding = \"zero3\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "t.toml:2:22: unknown variant `zero3`, expected `replicated` or `sharded`"
            ),
            "{err}"
        );
    }

    /// Issue #16: `[optimizer]` with only `lr = 3e-4` failed with "missing field `kind`" at
    /// 1:1, though every key is optional. Each table parses with any one of its keys alone,
    /// and a kind's defaults fill the rest.
    #[test]
    fn every_key_is_optional_each_table_with_one_key() {
        for text in [
            "name = \"x\"\n",
            "runs_dir = \"r\"\n",
            "seed = 1\n",
            "epochs = 2\n",
            "batch_size = 8\n",
            "device = \"cpu\"\n",
            "optimizer_sharding = \"sharded\"\n",
            "[data]\ndataset = \"digits\"\n",
            "[data]\ntest_fraction = 0.5\n",
            "[data]\nsplit_seed = 3\n",
            "[model]\nhidden = [32]\n",
            "[model]\ndropout = 0.1\n",
            "[optimizer]\nkind = \"sgd\"\n",
            "[optimizer]\nlr = 3e-4\n",
            "[optimizer]\nbeta1 = 0.8\n",
            "[optimizer]\nbeta2 = 0.99\n",
            "[optimizer]\neps = 1e-6\n",
            "[optimizer]\nweight_decay = 0.0\n",
            "[schedule]\nkind = \"cosine\"\n",
            "[checkpoint]\ndir = \"/nfs/ckpt\"\n",
            "[checkpoint]\nevery_steps = 10\n",
            "[checkpoint]\nevery_epochs = 2\n",
            "[checkpoint]\nevery_secs = 60.0\n",
            "[checkpoint]\nexponential = true\n",
            "[checkpoint]\nmtbf_secs = 3600.0\n",
            "[checkpoint]\nbackground = false\n",
            "[checkpoint]\nkeep_last = 1\n",
            "[checkpoint]\nkeep_best = 2\n",
            "[checkpoint]\nbest_metric = \"\"\n",
            "[log]\nmetrics = \"jsonl\"\n",
            "[log]\nplot = false\n",
        ] {
            if let Err(error) = TrainConfig::from_toml(text, Path::new("t.toml")) {
                panic!("{text:?}: {error}");
            }
        }
        let parse = |text: &str| TrainConfig::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(
            parse("[optimizer]\nlr = 3e-4\n").optimizer,
            OptimizerConfig::AdamW(AdamWConfig {
                lr: 3e-4,
                ..AdamWConfig::default()
            })
        );
        assert_eq!(
            parse("[optimizer]\nmomentum = 0.5\nkind = \"sgd\"\n").optimizer,
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.5,
                ..SgdConfig::default()
            })
        );
        assert_eq!(
            parse("[schedule]\nkind = \"cosine\"\n").schedule,
            Schedule::Cosine {
                warmup_steps: 0,
                min_lr: 0.0
            }
        );
        assert_eq!(
            parse("[checkpoint]\nbest_metric = \"test_loss\"\n").best_metric(),
            Some(("test_loss".into(), Goal::Min))
        );
        assert_eq!(
            parse("[checkpoint]\nbest_metric = \"\"\n").best_metric(),
            None
        );
        // The trajectory records what it always did: the optimizer's kind and every value.
        assert_eq!(
            parse("[optimizer]\nlr = 3e-4\n").trajectory()["optimizer"],
            json!({"kind": "adamw", "lr": 3e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01})
        );
        assert_eq!(parse("").trajectory()["data"]["dataset"], "mnist10k");
    }

    /// A key of another kind, a kind that needs a key, an unknown data set or metric: each
    /// refused with a line and column.
    #[test]
    fn kinds_data_sets_and_metrics_are_refused_with_position() {
        for (text, want) in [
            (
                "[optimizer]\nmomentum = 0.5\n",
                "optimizer: `momentum` is not a setting of kind = \"adamw\"",
            ),
            (
                "[optimizer]\nkind = \"sgd\"\nbeta2 = 0.9\n",
                "optimizer: `beta2` is not a setting of kind = \"sgd\"",
            ),
            (
                "[schedule]\nwarmup_steps = 10\n",
                "schedule: `warmup_steps` is not a setting of kind = \"constant\"",
            ),
            (
                "[schedule]\nkind = \"step\"\ngamma = 0.5\n",
                "schedule: kind = \"step\" needs every_steps",
            ),
            (
                "[data]\ndataset = \"imagenet\"\n",
                "t.toml:2:11: unknown variant `imagenet`, expected one of `mnist10k`",
            ),
            (
                "[checkpoint]\nbest_metric = \"f1\"\n",
                "t.toml:2:15: unknown variant `f1`",
            ),
            (
                "[checkpoint]\ndir = \"gs://bucket/x\"\n",
                "t.toml:2:7: invalid checkpoint location `gs://bucket/x`",
            ),
        ] {
            let err = refused(text);
            assert!(
                err.starts_with("t.toml:") && !err.starts_with("t.toml: ") && err.contains(want),
                "{err}\nwanted {want}"
            );
        }
    }

    /// Every configuration error has a line and column, also text that is not UTF-8.
    #[test]
    fn text_that_is_not_utf8_is_placed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        fs_err::write(&path, b"epochs = 2\nname = \"\xff\"\n").unwrap();
        let err = TrainConfig::from_path(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:2:9: not UTF-8 text", path.display())),
            "{err}"
        );
    }

    fn refused(text: &str) -> String {
        TrainConfig::from_toml(text, Path::new("t.toml"))
            .unwrap_err()
            .to_string()
    }

    /// Hardening issue #13: NaN/Inf `lr`, `eps = 0` with `beta2 = 1`, negative rates, NaN
    /// weight decay and momentum outside [0, 1] were accepted and trained to NaN weights; each
    /// is refused at parse with the value's line and column.
    #[test]
    fn non_finite_or_out_of_range_optimizer_settings_are_refused_with_position() {
        for (text, want) in [
            (
                "[optimizer]\nkind = \"adamw\"\nlr = nan\n",
                "t.toml:3:6: optimizer (adamw): lr must be a finite number >= 0, got NaN",
            ),
            (
                "[optimizer]\nkind = \"adamw\"\nlr = inf\n",
                "t.toml:3:6: optimizer (adamw): lr must be a finite number >= 0, got inf",
            ),
            (
                "[optimizer]\nkind = \"adamw\"\nlr = -0.1\n",
                "t.toml:3:6: optimizer (adamw): lr must be",
            ),
            (
                "[optimizer]\nkind = \"adamw\"\neps = 0.0\nbeta2 = 1.0\n",
                "t.toml:4:9: optimizer (adamw): beta2 must be in [0, 1), got 1",
            ),
            (
                "[optimizer]\nkind = \"adamw\"\neps = 0.0\n",
                "t.toml:3:7: optimizer (adamw): eps must be a finite number > 0, got 0",
            ),
            (
                "[optimizer]\nkind = \"adamw\"\nweight_decay = nan\n",
                "t.toml:3:16: optimizer (adamw): weight_decay must be",
            ),
            (
                "[optimizer]\nkind = \"sgd\"\nmomentum = 1.5\n",
                "t.toml:3:12: optimizer (sgd): momentum must be in [0, 1], got 1.5",
            ),
            (
                "[schedule]\nkind = \"step\"\nevery_steps = 10\ngamma = nan\n",
                "t.toml:4:9: schedule: gamma must be",
            ),
            (
                "[schedule]\nkind = \"step\"\nevery_steps = 0\ngamma = 0.5\n",
                "t.toml:3:15: schedule: every_steps must be at least 1",
            ),
        ] {
            let err = refused(text);
            assert!(err.starts_with(want), "{err}\nwanted {want}");
        }
    }

    /// Hardening issue #13: `batch_size = 0`, `epochs = 0`, an eval split of 0 or 1, a hidden
    /// width of 10^9 (aborted on allocation) and a wall-clock interval too long for a
    /// `Duration` (a panic) are refused at parse, naming the value's line and column.
    #[test]
    fn sizes_that_cannot_train_are_refused_with_position() {
        for (text, want) in [
            (
                "batch_size = 0\n",
                "t.toml:1:14: batch_size must be at least 1",
            ),
            ("epochs = 0\n", "t.toml:1:10: epochs must be at least 1"),
            (
                "[data]\ntest_fraction = 0.0\n",
                "t.toml:2:17: data.test_fraction must be between 0 and 1",
            ),
            (
                "[data]\ntest_fraction = 1.0\n",
                "t.toml:2:17: data.test_fraction",
            ),
            (
                "[model]\nhidden = [1000000000]\n",
                "t.toml:2:10: model.hidden: an MLP of sizes [784, 1000000000, 10] has",
            ),
            (
                "[model]\nhidden = [0]\n",
                "t.toml:2:10: model.hidden: a layer of size 0",
            ),
            (
                "[checkpoint]\nevery_secs = 1e300\n",
                "t.toml:2:14: checkpoint.every_secs must be a positive number",
            ),
            (
                "[data]\ndataset = \"idx\"\n",
                "t.toml:2:11: data.dataset = \"idx\" needs data.images",
            ),
        ] {
            let err = refused(text);
            assert!(err.starts_with(want), "{err}\nwanted {want}");
        }
        let err = refused("epochs = -3\n");
        assert!(err.starts_with("t.toml:1:10: "), "{err}");
        let hidden = format!("[model]\nhidden = [{}]\n", vec!["1"; 100].join(", "));
        assert!(
            refused(&hidden).contains("an MLP of 101 layers"),
            "{}",
            refused(&hidden)
        );
    }

    /// Hardening issue #13: a configuration path that is a device (`/dev/zero`) is refused
    /// before it is read, and so is a data file that is one.
    #[test]
    fn config_or_data_that_is_not_a_regular_file_is_refused() {
        if !Path::new("/dev/zero").exists() {
            return;
        }
        let err = TrainConfig::from_path(Path::new("/dev/zero")).unwrap_err();
        assert!(
            err.to_string().starts_with("/dev/zero: not a regular file"),
            "{err}"
        );
        let config = TrainConfig::from_toml(
            "[data]\ndataset = \"csv\"\ncsv = \"/dev/zero\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let err = config.datasets().unwrap_err();
        assert!(
            err.to_string().starts_with("/dev/zero: not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        if cfg!(feature = "cuda") {
            return;
        }
        let err = parse_device("cuda:1").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("device `cuda:1`: this keel was built without CUDA support")
        );
        assert!(
            parse_device("tpu")
                .unwrap_err()
                .to_string()
                .contains("expected `cpu`")
        );
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
    }
}
