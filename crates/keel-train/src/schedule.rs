//! Learning-rate schedules: a pure function of the step, so resuming needs only the step.

use serde::{Deserialize, Serialize};

/// How the learning rate moves with the step. In the file every key is optional: `kind`
/// defaults to `constant`; a key of another kind is refused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(
    tag = "kind",
    rename_all = "lowercase",
    deny_unknown_fields,
    try_from = "ScheduleTable"
)]
pub enum Schedule {
    /// The optimizer's learning rate throughout.
    #[default]
    Constant,
    /// Linear warm-up over `warmup_steps`, then cosine decay to `min_lr` at the last step
    /// (PyTorch's `CosineAnnealingLR` after a `LinearLR` warm-up).
    Cosine {
        /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
        #[serde(default)]
        warmup_steps: u64,
        /// The learning rate at the end.
        #[serde(default)]
        min_lr: f64,
    },
    /// Multiplies the rate by `gamma` every `every_steps` steps (`StepLR`).
    Step {
        /// Period in steps.
        every_steps: u64,
        /// Factor.
        gamma: f64,
    },
}

/// `[schedule]` as written: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleTable {
    #[serde(default)]
    kind: ScheduleKind,
    warmup_steps: Option<u64>,
    min_lr: Option<f64>,
    every_steps: Option<u64>,
    gamma: Option<f64>,
}

/// The schedules `kind` names.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ScheduleKind {
    #[default]
    Constant,
    Cosine,
    Step,
}

impl TryFrom<ScheduleTable> for Schedule {
    type Error = String;

    fn try_from(t: ScheduleTable) -> Result<Self, String> {
        let (kind, others): (&str, &[(&str, bool)]) = match t.kind {
            ScheduleKind::Constant => (
                "constant",
                &[
                    ("warmup_steps", t.warmup_steps.is_some()),
                    ("min_lr", t.min_lr.is_some()),
                    ("every_steps", t.every_steps.is_some()),
                    ("gamma", t.gamma.is_some()),
                ],
            ),
            ScheduleKind::Cosine => (
                "cosine",
                &[
                    ("every_steps", t.every_steps.is_some()),
                    ("gamma", t.gamma.is_some()),
                ],
            ),
            ScheduleKind::Step => (
                "step",
                &[
                    ("warmup_steps", t.warmup_steps.is_some()),
                    ("min_lr", t.min_lr.is_some()),
                ],
            ),
        };
        if let Some((key, _)) = others.iter().find(|(_, set)| *set) {
            return Err(format!(
                "schedule: `{key}` is not a setting of kind = \"{kind}\""
            ));
        }
        Ok(match t.kind {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Cosine => Schedule::Cosine {
                warmup_steps: t.warmup_steps.unwrap_or(0),
                min_lr: t.min_lr.unwrap_or(0.0),
            },
            ScheduleKind::Step => {
                let needs = |key: &str| format!("schedule: kind = \"step\" needs {key}");
                Schedule::Step {
                    every_steps: t.every_steps.ok_or_else(|| needs("every_steps"))?,
                    gamma: t.gamma.ok_or_else(|| needs("gamma"))?,
                }
            }
        })
    }
}

impl Schedule {
    /// Checks the parameters: `min_lr` finite and >= 0, `every_steps` at least 1, `gamma`
    /// finite and >= 0. Returns the field at fault and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Cosine { min_lr, .. } if !(min_lr.is_finite() && min_lr >= 0.0) => Err((
                "min_lr",
                format!("min_lr must be a finite number >= 0, got {min_lr}"),
            )),
            Schedule::Cosine { .. } => Ok(()),
            Schedule::Step { every_steps: 0, .. } => {
                Err(("every_steps", "every_steps must be at least 1".to_string()))
            }
            Schedule::Step { gamma, .. } if !(gamma.is_finite() && gamma >= 0.0) => Err((
                "gamma",
                format!("gamma must be a finite number >= 0, got {gamma}"),
            )),
            Schedule::Step { .. } => Ok(()),
        }
    }

    /// The learning rate for the step with 0-based index `step` of `total_steps`, from the
    /// base rate `lr`.
    pub fn lr_at(&self, lr: f64, step: u64, total_steps: u64) -> f64 {
        match *self {
            Schedule::Constant => lr,
            Schedule::Cosine {
                warmup_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return lr * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Step { every_steps, gamma } => {
                lr * gamma.powi((step / every_steps.max(1)).min(i32::MAX as u64) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(Schedule::Constant.lr_at(0.1, 500, 1000), 0.1);
        let cosine = Schedule::Cosine {
            warmup_steps: 10,
            min_lr: 0.0,
        };
        assert_eq!(cosine.lr_at(1.0, 0, 110), 0.1);
        assert_eq!(cosine.lr_at(1.0, 9, 110), 1.0);
        assert_eq!(cosine.lr_at(1.0, 10, 110), 1.0);
        assert!((cosine.lr_at(1.0, 60, 110) - 0.5).abs() < 1e-12);
        assert!(cosine.lr_at(1.0, 110, 110).abs() < 1e-12);
        let step = Schedule::Step {
            every_steps: 100,
            gamma: 0.5,
        };
        assert_eq!(step.lr_at(1.0, 99, 0), 1.0);
        assert_eq!(step.lr_at(1.0, 250, 0), 0.25);
    }
}
