//! A small convolutional network on the 8x8 digits, trained with keel-train's loop and saved
//! with keel-ckpt: Ctrl-C saves and stops, running again resumes, a best checkpoint is kept
//! by held-out accuracy, and checkpoints go to a local folder or `s3://bucket/prefix`.
//!
//! ```sh
//! cargo run --release -p digits-convnet -- runs/convnet      # Ctrl-C, then run again
//! ```

use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use keel_ckpt::{AnyOf, CheckpointStore, EveryNEpochs, Goal, Retention, WallClock};
use keel_train::{
    AdamW, AdamWConfig, Dataset, Event, Model, Outcome, Schedule, StopSignal, TrainError, TrainRng,
    TrainSettings, Trainer, dropout, linear_init,
};

/// conv 3x3 (1 -> 8 channels, padding 1) -> ReLU -> 2x2 max pool -> dropout -> linear 128 -> 10.
#[derive(Debug)]
pub struct ConvNet {
    kernel: Var,
    kernel_bias: Var,
    head: (Var, Var),
    dropout: f32,
}

impl ConvNet {
    /// Initialised from the trainer's generator (as PyTorch's `nn.Conv2d`: uniform in
    /// `±1/sqrt(fan_in)`).
    pub fn new(device: &Device, rng: &mut TrainRng) -> candle_core::Result<Self> {
        let bound = 1.0 / 3.0; // fan_in = 1 channel * 3 * 3
        let kernel = Tensor::from_vec(rng.uniform(8 * 9, -bound, bound), (8, 1, 3, 3), device)?;
        let kernel_bias = Tensor::from_vec(rng.uniform(8, -bound, bound), 8, device)?;
        Ok(ConvNet {
            kernel: Var::from_tensor(&kernel)?,
            kernel_bias: Var::from_tensor(&kernel_bias)?,
            head: linear_init(8 * 4 * 4, 10, device, rng)?,
            dropout: 0.1,
        })
    }
}

impl Model for ConvNet {
    fn forward(&self, xs: &Tensor, train: bool, rng: &mut TrainRng) -> candle_core::Result<Tensor> {
        let batch = xs.dim(0)?;
        let h = xs
            .reshape((batch, 1, 8, 8))?
            .conv2d(&self.kernel, 1, 1, 1, 1)?;
        let h = h
            .broadcast_add(&self.kernel_bias.reshape((1, 8, 1, 1))?)?
            .relu()?;
        let h = h.max_pool2d(2)?.flatten_from(1)?;
        let h = if train {
            dropout(&h, self.dropout, rng)?
        } else {
            h
        };
        let (weight, bias) = &self.head;
        h.matmul(&weight.t()?)?.broadcast_add(bias)
    }

    fn parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("conv.weight".into(), self.kernel.clone()),
            ("conv.bias".into(), self.kernel_bias.clone()),
            ("head.weight".into(), self.head.0.clone()),
            ("head.bias".into(), self.head.1.clone()),
        ]
    }
}

/// Trains (or resumes) into the store at `location` for `epochs` epochs.
pub fn train(
    location: &str,
    epochs: u64,
    stop: &StopSignal,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Result<Outcome, TrainError> {
    let (train, test) = Dataset::digits()?.split(0.2, 0)?;
    let device = Device::Cpu;
    let seed = 2024;
    let mut rng = TrainRng::new(seed);
    let model = ConvNet::new(&device, &mut rng)?;
    let config = AdamWConfig {
        lr: 3e-3,
        ..AdamWConfig::default()
    };
    let optimizer = AdamW::named(model.parameters(), config)?;
    let settings = TrainSettings {
        epochs,
        batch_size: 32,
        schedule: Schedule::Cosine {
            warmup_steps: 20,
            min_lr: 1e-4,
        },
        // Every epoch, and at least every 30 s of wall time.
        policy: Box::new(AnyOf(vec![
            Box::new(EveryNEpochs(1)),
            Box::new(WallClock::new(Duration::from_secs(30))),
        ])),
        save_async: true,
        retention: Some(Retention {
            keep_last: 2,
            keep_best: 1,
            best_metric: Some(("test_accuracy".into(), Goal::Max)),
            ..Retention::default()
        }),
        best_metric: Some(("test_accuracy".into(), Goal::Max)),
        // Anything that changes the trajectory: a checkpoint of another setup is refused.
        trajectory: serde_json::json!({"model": "digits-convnet", "seed": seed, "epochs": epochs}),
        ..TrainSettings::new(seed, config.lr)
    };
    let store = CheckpointStore::open(location)?;
    Trainer::new(model, optimizer, rng, device, store, settings).run(&train, &test, stop, observer)
}

fn main() -> std::process::ExitCode {
    let location = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/digits-convnet".into());
    let stop = match StopSignal::install() {
        Ok(stop) => stop,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut observer = |event: &Event<'_>| match event {
        Event::Resumed { id, step, .. } => eprintln!("resuming from {id} (step {step})"),
        Event::Evaluated {
            epoch,
            test_accuracy,
            ..
        } => {
            eprintln!(
                "epoch {epoch}: held-out accuracy {:.1}%",
                test_accuracy * 100.0
            )
        }
        _ => {}
    };
    match train(&location, 20, &stop, &mut observer) {
        Ok(outcome) => {
            println!(
                "{:?} at step {}; checkpoints in {location} (latest {})",
                outcome.status,
                outcome.step,
                outcome
                    .checkpoint
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_the_digits_and_resumes_after_a_stop() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().display().to_string();
        let stop = StopSignal::new();
        let outcome = train(&location, 12, &stop, &mut |event| {
            if let Event::Step(row) = event
                && row.step == 100
            {
                stop.request(2);
            }
        })
        .unwrap();
        assert_eq!(outcome.step, 100);
        let mut resumed_at = None;
        let outcome = train(&location, 12, &StopSignal::new(), &mut |event| {
            if let Event::Resumed { step, .. } = event {
                resumed_at = Some(*step);
            }
        })
        .unwrap();
        assert_eq!(resumed_at, Some(100));
        assert_eq!(outcome.epoch, 12);
        let accuracy = outcome.test_accuracy.unwrap();
        assert!(accuracy > 0.9, "held-out accuracy {accuracy}");
    }
}
