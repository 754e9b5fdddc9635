//! When to save: every N steps or epochs, on a wall clock, exponentially, at given steps, or at
//! the optimal interval for the measured save cost and the failure rate (Young/Daly).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Where training is, as policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Optimizer steps taken so far.
    pub step: u64,
    /// The current epoch (1-based once the first epoch ends).
    pub epoch: u64,
    /// This step ended an epoch (`epoch` is the one that ended).
    pub end_of_epoch: bool,
    /// Now, as the trainer's clock says.
    pub now: Instant,
}

/// A rule that says whether to save after a step. Policies compose with [`AnyOf`].
pub trait SavePolicy: Send + std::fmt::Debug {
    /// Save now?
    fn should_save(&mut self, progress: &Progress) -> bool;
    /// A save finished at `progress`, taking `cost` (of the training loop's time).
    fn saved(&mut self, progress: &Progress, cost: Duration) {
        let _ = (progress, cost);
    }
}

/// Every `n` steps.
#[derive(Debug, Clone)]
pub struct EveryNSteps(pub u64);

impl SavePolicy for EveryNSteps {
    fn should_save(&mut self, p: &Progress) -> bool {
        self.0 > 0 && p.step > 0 && p.step.is_multiple_of(self.0)
    }
}

/// At the end of every `n`-th epoch.
#[derive(Debug, Clone)]
pub struct EveryNEpochs(pub u64);

impl SavePolicy for EveryNEpochs {
    fn should_save(&mut self, p: &Progress) -> bool {
        self.0 > 0 && p.end_of_epoch && p.epoch.is_multiple_of(self.0)
    }
}

/// When `interval` has passed since the last save (or since the policy was made).
#[derive(Debug, Clone)]
pub struct WallClock {
    interval: Duration,
    last: Option<Instant>,
}

impl WallClock {
    /// Every `interval` of wall time.
    pub fn new(interval: Duration) -> Self {
        WallClock {
            interval,
            last: None,
        }
    }
}

impl SavePolicy for WallClock {
    fn should_save(&mut self, p: &Progress) -> bool {
        let last = *self.last.get_or_insert(p.now);
        p.now.duration_since(last) >= self.interval
    }
    fn saved(&mut self, p: &Progress, _: Duration) {
        self.last = Some(p.now);
    }
}

/// At the end of epochs 1, 2, 4, 8, ... (dense early, when the loss moves most).
#[derive(Debug, Clone)]
pub struct Exponential {
    next: u64,
}

impl Default for Exponential {
    fn default() -> Self {
        Exponential { next: 1 }
    }
}

impl SavePolicy for Exponential {
    fn should_save(&mut self, p: &Progress) -> bool {
        if p.end_of_epoch && p.epoch >= self.next {
            while self.next <= p.epoch {
                self.next *= 2;
            }
            true
        } else {
            false
        }
    }
}

/// At exactly these steps.
#[derive(Debug, Clone)]
pub struct AtSteps(pub BTreeSet<u64>);

impl SavePolicy for AtSteps {
    fn should_save(&mut self, p: &Progress) -> bool {
        self.0.contains(&p.step)
    }
}

/// Young's optimal checkpoint interval with Daly's higher-order correction, for a save cost
/// `C` and a mean time between failures `M`:
/// `T = sqrt(2CM) * (1 + sqrt(C/2M)/3 + (C/2M)/9) - C` when `C < 2M`, else `T = M`
/// (J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
/// 2006; Young 1974 is the first term, `sqrt(2CM)`).
pub fn daly_interval(cost: Duration, mtbf: Duration) -> Duration {
    let c = cost.as_secs_f64();
    let m = mtbf.as_secs_f64();
    if c <= 0.0 {
        return Duration::ZERO;
    }
    if c >= 2.0 * m {
        return mtbf;
    }
    let ratio = c / (2.0 * m);
    let t = (2.0 * c * m).sqrt() * (1.0 + ratio.sqrt() / 3.0 + ratio / 9.0) - c;
    Duration::from_secs_f64(t.max(0.0))
}

/// Saves at the Young/Daly optimal interval for the measured save cost (a running mean of
/// what saves took) and a given mean time between failures. Until the first save is measured,
/// it uses `initial_cost`.
#[derive(Debug, Clone)]
pub struct YoungDaly {
    mtbf: Duration,
    cost: Duration,
    measured: u32,
    last: Option<Instant>,
}

impl YoungDaly {
    /// For failures every `mtbf` on average, guessing `initial_cost` per save until measured.
    pub fn new(mtbf: Duration, initial_cost: Duration) -> Self {
        YoungDaly {
            mtbf,
            cost: initial_cost,
            measured: 0,
            last: None,
        }
    }

    /// The interval it aims at now.
    pub fn interval(&self) -> Duration {
        daly_interval(self.cost, self.mtbf)
    }

    /// The save cost it believes (mean of the measured ones).
    pub fn cost(&self) -> Duration {
        self.cost
    }
}

impl SavePolicy for YoungDaly {
    fn should_save(&mut self, p: &Progress) -> bool {
        let last = *self.last.get_or_insert(p.now);
        p.now.duration_since(last) >= self.interval()
    }
    fn saved(&mut self, p: &Progress, cost: Duration) {
        self.measured += 1;
        // Running mean of the measured costs (the initial guess is dropped).
        self.cost = if self.measured == 1 {
            cost
        } else {
            (self.cost * (self.measured - 1) + cost) / self.measured
        };
        self.last = Some(p.now);
    }
}

/// Saves when any of its policies says so, and tells all of them about each save.
#[derive(Debug, Default)]
pub struct AnyOf(pub Vec<Box<dyn SavePolicy>>);

impl SavePolicy for AnyOf {
    fn should_save(&mut self, p: &Progress) -> bool {
        // Ask every policy (no short cut): stateful ones move on when asked.
        let mut any = false;
        for policy in &mut self.0 {
            any |= policy.should_save(p);
        }
        any
    }
    fn saved(&mut self, p: &Progress, cost: Duration) {
        for policy in &mut self.0 {
            policy.saved(p, cost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: u64, epoch: u64, end: bool, now: Instant) -> Progress {
        Progress {
            step,
            epoch,
            end_of_epoch: end,
            now,
        }
    }

    #[test]
    fn every_n_and_exponential() {
        let now = Instant::now();
        let mut steps = EveryNSteps(3);
        let saved: Vec<u64> = (1..=10)
            .filter(|s| steps.should_save(&at(*s, 0, false, now)))
            .collect();
        assert_eq!(saved, [3, 6, 9]);
        let mut exp = Exponential::default();
        let saved: Vec<u64> = (1..=20)
            .filter(|e| exp.should_save(&at(0, *e, true, now)))
            .collect();
        assert_eq!(saved, [1, 2, 4, 8, 16]);
        let mut epochs = EveryNEpochs(2);
        assert!(!epochs.should_save(&at(5, 2, false, now)));
        assert!(epochs.should_save(&at(5, 2, true, now)));
        assert!(!epochs.should_save(&at(5, 3, true, now)));
    }

    /// Daly's interval: Young's sqrt(2CM) to first order, M when saving costs more than 2M.
    #[test]
    fn daly_matches_the_formula() {
        let c = Duration::from_secs(60);
        let m = Duration::from_secs(24 * 3600);
        let young = (2.0f64 * 60.0 * 86400.0).sqrt();
        let t = daly_interval(c, m).as_secs_f64();
        let ratio: f64 = 60.0 / (2.0 * 86400.0);
        let expected = young * (1.0 + ratio.sqrt() / 3.0 + ratio / 9.0) - 60.0;
        assert!((t - expected).abs() < 1e-6, "{t} vs {expected}");
        // Within a few percent of Young when C << M.
        assert!((t / young - 1.0).abs() < 0.05);
        assert_eq!(
            daly_interval(Duration::from_secs(100), Duration::from_secs(40)),
            Duration::from_secs(40)
        );
    }

    #[test]
    fn young_daly_learns_the_cost() {
        let start = Instant::now();
        let mut policy = YoungDaly::new(Duration::from_secs(3600), Duration::from_secs(1));
        assert!(!policy.should_save(&at(1, 0, false, start)));
        let before = policy.interval();
        policy.saved(&at(1, 0, false, start), Duration::from_secs(4));
        policy.saved(&at(2, 0, false, start), Duration::from_secs(2));
        assert_eq!(policy.cost(), Duration::from_secs(3));
        assert!(policy.interval() > before);
        let later = start + policy.interval();
        assert!(policy.should_save(&at(3, 0, false, later)));
    }

    #[test]
    fn any_of_asks_everyone() {
        let start = Instant::now();
        let mut policy = AnyOf(vec![
            Box::new(EveryNSteps(5)),
            Box::new(Exponential::default()),
            Box::new(WallClock::new(Duration::from_secs(10))),
        ]);
        assert!(policy.should_save(&at(5, 0, false, start)));
        assert!(policy.should_save(&at(6, 1, true, start)));
        assert!(!policy.should_save(&at(7, 1, false, start)));
        assert!(policy.should_save(&at(8, 1, false, start + Duration::from_secs(11))));
    }
}
