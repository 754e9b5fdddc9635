//! Checkpoint strategies on the MNIST run: measure what each costs per epoch, then replay the
//! measured costs through a failure simulation to estimate goodput for a mean time between
//! failures (MTBF).
//!
//! The simulation advances a job step by step in simulated time. Failures arrive as a Poisson
//! process (exponential gaps with mean MTBF). A save stalls the loop for the stall measured
//! for that strategy; a synchronous save is committed when it returns, a background save
//! after the measured write time (and the next save waits for it, as `AsyncSaver` does). A
//! failure loses the steps since the last committed checkpoint and costs the measured restart
//! time. Each restart builds the strategy's policy anew, as a new process does; the policies
//! are keel-ckpt's own, fed with simulated clock readings.

use std::time::{Duration, Instant};

use keel_ckpt::{AnyOf, EveryNEpochs, EveryNSteps, Exponential, Progress, SavePolicy, YoungDaly};
use keel_train::{CheckpointConfig, Event, RunOptions, StopSignal, TrainConfig};

/// A strategy to compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    /// Its name in the table.
    pub name: String,
    /// The policy.
    pub rule: Rule,
    /// Saves in the background.
    pub background: bool,
}

/// When a strategy saves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Never (a failure restarts from scratch).
    Never,
    /// At the end of every epoch.
    EveryEpoch,
    /// Every N steps.
    EverySteps(u64),
    /// At the end of epochs 1, 2, 4, 8, ...
    Exponential,
    /// At the Young/Daly interval for the MTBF (seconds) and the measured save cost.
    YoungDaly(f64),
}

impl Rule {
    /// keel-ckpt's policy for the rule (a new one, as a new process makes).
    pub fn policy(self, initial_cost: Duration) -> Box<dyn SavePolicy> {
        match self {
            Rule::Never => Box::new(AnyOf(vec![])),
            Rule::EveryEpoch => Box::new(EveryNEpochs(1)),
            Rule::EverySteps(n) => Box::new(EveryNSteps(n)),
            Rule::Exponential => Box::new(Exponential::default()),
            Rule::YoungDaly(mtbf) => {
                Box::new(YoungDaly::new(Duration::from_secs_f64(mtbf), initial_cost))
            }
        }
    }

    fn checkpoint_config(self, background: bool) -> CheckpointConfig {
        let mut c = CheckpointConfig {
            every_epochs: 0,
            background,
            keep_last: 2,
            keep_best: 0,
            best_metric: keel_train::BestMetric::None,
            ..CheckpointConfig::default()
        };
        match self {
            Rule::Never => {}
            Rule::EveryEpoch => c.every_epochs = 1,
            Rule::EverySteps(n) => c.every_steps = n,
            Rule::Exponential => c.exponential = true,
            Rule::YoungDaly(mtbf) => c.mtbf_secs = Some(mtbf),
        }
        c
    }
}

/// The strategies the report compares, for an MTBF in seconds.
pub fn strategies(mtbf: f64, every_steps: u64) -> Vec<Strategy> {
    let s = |name: &str, rule, background| Strategy {
        name: name.to_string(),
        rule,
        background,
    };
    vec![
        s("none", Rule::Never, false),
        s("every epoch, sync", Rule::EveryEpoch, false),
        s("every epoch, async", Rule::EveryEpoch, true),
        s(
            &format!("every {every_steps} steps, sync"),
            Rule::EverySteps(every_steps),
            false,
        ),
        s(
            &format!("every {every_steps} steps, async"),
            Rule::EverySteps(every_steps),
            true,
        ),
        s("exponential, sync", Rule::Exponential, false),
        s("Young/Daly, sync", Rule::YoungDaly(mtbf), false),
        s("Young/Daly, async", Rule::YoungDaly(mtbf), true),
    ]
}

/// What one strategy cost on the real run.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The strategy.
    pub strategy: Strategy,
    /// Wall time of each epoch (training and evaluation), seconds.
    pub epoch_secs: Vec<f64>,
    /// The loop's stall of each save, seconds.
    pub stalls: Vec<f64>,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
}

/// The median of some values (0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

impl Measured {
    /// Median epoch time.
    pub fn epoch(&self) -> f64 {
        median(&self.epoch_secs)
    }
    /// Median stall per save.
    pub fn stall(&self) -> f64 {
        median(&self.stalls)
    }
    /// Saves per epoch, measured.
    pub fn saves_per_epoch(&self) -> f64 {
        self.stalls.len() as f64 / self.epoch_secs.len().max(1) as f64
    }
    /// The loop's time in saves per epoch (measured stalls; the save overhead).
    pub fn overhead(&self) -> f64 {
        self.stalls.iter().sum::<f64>() / self.epoch_secs.len().max(1) as f64
    }
}

/// `config` for `strategy`: its own run folder under `runs_dir`, the strategy's checkpoint
/// settings, `epochs` epochs, no plot.
pub fn strategy_config(
    config: &TrainConfig,
    strategy: &Strategy,
    epochs: u64,
    runs_dir: &std::path::Path,
) -> TrainConfig {
    let mut config = config.clone();
    config.epochs = epochs;
    config.runs_dir = runs_dir.to_path_buf();
    config.name = format!("strategy-{}", strategy.name.replace([' ', ',', '/'], "-"));
    config.checkpoint = strategy.rule.checkpoint_config(strategy.background);
    config.log.plot = false;
    config
}

/// Trains `config` (its checkpoint settings replaced by the strategy's) for `epochs` epochs
/// from scratch under `runs_dir` and records epoch times and save stalls.
pub fn measure(
    config: &TrainConfig,
    strategy: &Strategy,
    epochs: u64,
    runs_dir: &std::path::Path,
) -> Result<Measured, keel_train::TrainError> {
    let config = strategy_config(config, strategy, epochs, runs_dir);
    let mut epoch_secs = Vec::new();
    let mut stalls = Vec::new();
    let mut steps_per_epoch = 0;
    let mut mark = Instant::now();
    config.run(
        &RunOptions::default(),
        &StopSignal::new(),
        &mut |event| match event {
            Event::Plan {
                steps_per_epoch: s, ..
            } => {
                steps_per_epoch = *s;
                mark = Instant::now();
            }
            Event::Evaluated { .. } => {
                epoch_secs.push(mark.elapsed().as_secs_f64());
                mark = Instant::now();
            }
            // The policy's saves (not the final save after the last epoch).
            Event::Saved {
                stall,
                by_policy: true,
                ..
            } => stalls.push(stall.as_secs_f64()),
            _ => {}
        },
    )?;
    Ok(Measured {
        strategy: strategy.clone(),
        epoch_secs,
        stalls,
        steps_per_epoch,
    })
}

/// The measured costs a simulation replays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Compute time of one step (the epoch's time without its save stalls, per step).
    pub step: f64,
    /// The loop's stall per save.
    pub stall: f64,
    /// For background saves: time from hand-over to commit (the synchronous save time).
    pub commit_delay: f64,
    /// Time from a failure to training again (load and verify the checkpoint, start-up).
    pub restart: f64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
}

/// Goodput statistics over the simulated trials.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goodput {
    /// Mean of useful compute time / wall time.
    pub mean: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Mean failures per job.
    pub failures: f64,
}

/// A small deterministic generator for the simulation (xorshift64*).
#[derive(Debug)]
struct Xorshift(u64);

impl Xorshift {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((v >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.next_f64().ln()
    }
}

/// Simulates `trials` jobs of `epochs` epochs under `rule` with background saves or not.
/// Goodput is useful compute time over wall time; a job is cut off at 50x its compute time.
pub fn simulate(
    rule: Rule,
    background: bool,
    costs: Costs,
    epochs: u64,
    mtbf: f64,
    trials: usize,
    seed: u64,
) -> Goodput {
    let total = epochs * costs.steps_per_epoch;
    let useful = total as f64 * costs.step;
    let base = Instant::now();
    let mut rng = Xorshift(seed.max(1));
    let mut goodputs = Vec::with_capacity(trials);
    let mut failures_sum = 0usize;
    for _ in 0..trials {
        let mut t = 0.0f64;
        let mut committed = 0u64;
        let mut pending: Option<(u64, f64)> = None;
        let mut step = 0u64;
        let mut next_failure = rng.exponential(mtbf);
        let mut policy = rule.policy(Duration::from_secs_f64(costs.stall.max(1e-6)));
        let mut failures = 0usize;
        // A job that has not finished in 50x its compute time (MTBF far below the save
        // interval) is stopped there: its goodput is reported as below 2%.
        let limit = useful * 50.0;
        while step < total && t < limit {
            let mut end = t + costs.step;
            let mut save = false;
            let epoch = (step + 1) / costs.steps_per_epoch;
            let progress = Progress {
                step: step + 1,
                epoch,
                end_of_epoch: (step + 1).is_multiple_of(costs.steps_per_epoch),
                now: base + Duration::from_secs_f64(end),
            };
            if policy.should_save(&progress) {
                save = true;
                if background && let Some((_, at)) = pending {
                    end = end.max(at); // the next save waits for the one in flight
                }
                end += costs.stall;
            }
            if let Some((s, at)) = pending
                && at <= end.min(next_failure)
            {
                committed = s;
                pending = None;
            }
            if end > next_failure {
                failures += 1;
                t = next_failure + costs.restart;
                step = committed;
                pending = None;
                policy = rule.policy(Duration::from_secs_f64(costs.stall.max(1e-6)));
                next_failure = t + rng.exponential(mtbf);
                continue;
            }
            t = end;
            step += 1;
            if save {
                let done = Progress {
                    now: base + Duration::from_secs_f64(t),
                    ..progress
                };
                policy.saved(&done, Duration::from_secs_f64(costs.stall));
                if background {
                    if let Some((s, _)) = pending {
                        committed = s;
                    }
                    pending = Some((step, t + costs.commit_delay));
                } else {
                    committed = step;
                }
            }
        }
        failures_sum += failures;
        goodputs.push(useful / t.max(useful));
    }
    goodputs.sort_by(f64::total_cmp);
    let pick = |q: f64| goodputs[((goodputs.len() - 1) as f64 * q).round() as usize];
    Goodput {
        mean: goodputs.iter().sum::<f64>() / goodputs.len() as f64,
        p10: pick(0.1),
        p90: pick(0.9),
        failures: failures_sum as f64 / trials as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COSTS: Costs = Costs {
        step: 0.01,
        stall: 0.05,
        commit_delay: 0.2,
        restart: 1.0,
        steps_per_epoch: 100,
    };

    /// Without failures goodput is compute / (compute + stalls): every epoch saves once.
    #[test]
    fn without_failures_goodput_is_the_stall_overhead() {
        let g = simulate(Rule::EveryEpoch, false, COSTS, 10, 1e15, 5, 1);
        assert!((g.mean - 10.0 / 10.5).abs() < 1e-9, "{g:?}");
        assert_eq!(g.failures, 0.0);
        let none = simulate(Rule::Never, false, COSTS, 10, 1e15, 5, 1);
        assert!((none.mean - 1.0).abs() < 1e-9);
    }

    /// With failures every few epochs, never saving loses far more than saving every epoch.
    #[test]
    fn saving_pays_when_failures_are_frequent() {
        let never = simulate(Rule::Never, false, COSTS, 20, 5.0, 200, 7);
        let every = simulate(Rule::EveryEpoch, false, COSTS, 20, 5.0, 200, 7);
        let daly = simulate(Rule::YoungDaly(5.0), false, COSTS, 20, 5.0, 200, 7);
        assert!(every.mean > 2.0 * never.mean, "{never:?} {every:?}");
        assert!(daly.mean > 0.5 && every.mean > 0.5, "{daly:?} {every:?}");
        assert!(every.failures > 1.0);
        // The same seed replays the same failures.
        assert_eq!(
            every,
            simulate(Rule::EveryEpoch, false, COSTS, 20, 5.0, 200, 7)
        );
    }

    /// A background save that has not committed when the failure hits does not count.
    #[test]
    fn uncommitted_background_saves_are_lost() {
        let slow_commit = Costs {
            commit_delay: 1e9,
            ..COSTS
        };
        let g = simulate(Rule::EverySteps(10), true, slow_commit, 5, 2.0, 50, 3);
        let never = simulate(Rule::Never, false, slow_commit, 5, 2.0, 50, 3);
        assert!(g.mean <= never.mean + 1e-9, "{g:?} vs {never:?}");
    }
}
