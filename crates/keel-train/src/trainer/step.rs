//! One step (each rank's forward and backward pass, the all-reduce, the update, sharded or
//! not) and the held-out evaluation at an epoch's end.

use super::*;

/// How a step went, agreed by every rank.
pub(super) enum Stepped {
    /// The update is done: the global batch's mean loss, the learning rate, its rows.
    Took {
        /// The mean loss over the global batch.
        loss: f32,
        /// The learning rate of the update.
        lr: f64,
        /// The global batch's rows.
        rows: usize,
        /// Where this rank's step went.
        phases: Phases,
    },
    /// A stop was asked for (a signal on some rank) before the step: nothing changed.
    Stopped {
        /// The signal.
        signal: i32,
    },
    /// The step failed on some rank.
    Failed(Box<Failure>),
}

/// An epoch's end: the held-out loss and accuracy, and whether the best metric improved.
pub(super) struct EpochEnd {
    pub(super) eval: (f64, f64),
    pub(super) improved: bool,
}

/// Where one rank's step went: the wall time of each part (for
/// [`TrainSettings::step_times`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Phases {
    /// The batch's rows gathered into tensors.
    pub(super) gather: Duration,
    /// The forward pass and the loss, read back.
    pub(super) forward: Duration,
    /// The backward pass.
    pub(super) backward: Duration,
    /// The gradients' all-reduce (in a world of several) and the optimizer's update.
    pub(super) update: Duration,
}

/// One rank's part of a step: its slice's mean loss and gradients, (in a world of
/// several) the weighted, flattened gradients to all-reduce, and where its time went.
struct LocalStep {
    loss: f32,
    grads: GradStore,
    flat: Option<Vec<f32>>,
    phases: Phases,
}

impl<M: Model, O: OptimizerState> Trainer<M, O> {
    /// The step at `pos`, its global batch the rows of this epoch's `order` at `pos.batch`:
    /// this rank's part (none when a stop was asked for), the stop agreement (an error
    /// anywhere beats a signal anywhere; every rank stops after the same step), then the
    /// update and its agreement. The error is the communicator's.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        order: &[u32],
        pos: Position,
        batches: u64,
        total_steps: u64,
        stop: &StopSignal,
    ) -> Result<Stepped, TrainError> {
        let signal = stop.requested();
        let rng_before = self.rng.clone();
        let lr = self
            .settings
            .schedule
            .lr_at(self.settings.lr, pos.step, total_steps);
        // pos.batch < batches (checked on resume), so the product is below the rows.
        let from = (pos.batch as usize).saturating_mul(self.settings.batch_size);
        let to = from
            .saturating_add(self.settings.batch_size)
            .min(order.len());
        let rows = order.get(from..to).unwrap_or_default();
        // This rank's part of the step, caught: no rank leaves before the agreement.
        let local = match signal {
            Some(_) => Ok(None),
            None if lr.is_finite() && lr >= 0.0 => self.local_step(x, y, rows, &pos).map(Some),
            None => Err(TrainError::Setting(format!(
                "the schedule gives learning rate {lr} at step {}",
                pos.step + 1
            ))),
        };
        let code = match (&local, signal) {
            (Err(_), _) => STEP_FAILED,
            (Ok(_), Some(signal)) => (signal.max(1) as u64).min(STEP_FAILED - 1),
            (Ok(_), None) => 0,
        };
        let agreed = self.world.0.all_reduce_max_u64(code)?;
        let local = match local {
            Ok(Some(local)) if agreed == 0 => local,
            local if agreed >= STEP_FAILED => {
                let cause = self.world.failure(local, pos.step + 1)?;
                return Ok(Stepped::Failed(Box::new(Failure {
                    held: pos,
                    rng: rng_before,
                    failed_step: pos.step + 1,
                    cause,
                })));
            }
            _ => {
                // The step another rank did not take is not taken here either.
                self.rng = rng_before;
                return Ok(Stepped::Stopped {
                    signal: i32::try_from(agreed).unwrap_or(i32::MAX),
                });
            }
        };
        let mut phases = local.phases;
        let updating = Instant::now();
        let update = self.global_update(local, rows.len(), lr, pos.step + 1)?;
        phases.update = updating.elapsed();
        let updated_here = update.is_ok();
        Ok(match self.world.agree(update, pos.step + 1)? {
            Ok(loss) => Stepped::Took {
                loss,
                lr,
                rows: rows.len(),
                phases,
            },
            Err(cause) => {
                // A rank whose update went through holds the agreed state after the step
                // (the same update every rank computed); the others the state before it.
                // Rank 0 saves what it holds.
                let (held, rng) = if updated_here {
                    (pos.after_step(batches), self.rng.clone())
                } else {
                    (pos, rng_before)
                };
                Stepped::Failed(Box::new(Failure {
                    held,
                    rng,
                    failed_step: pos.step + 1,
                    cause,
                }))
            }
        })
    }

    /// The end of an epoch (`pos` is after its last step): the held-out loss and accuracy
    /// over the `n` rows of all ranks (this rank's slice `x`, `y`), reported and added to the
    /// step's `metrics`, and whether the best metric improved (`pos.best` then holds it). A failed evaluation is the state
    /// after the step to save; the outer error is the communicator's.
    pub(super) fn end_epoch(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        n: usize,
        pos: &mut Position,
        metrics: &mut BTreeMap<String, f64>,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Result<EpochEnd, Box<Failure>>, TrainError> {
        let (test_loss, test_accuracy) = match self.evaluate(x, y, n, pos.step)? {
            Ok(v) => v,
            Err(cause) => {
                return Ok(Err(Box::new(Failure {
                    held: *pos,
                    rng: self.rng.clone(),
                    failed_step: pos.step + 1,
                    cause,
                })));
            }
        };
        observer(&Event::Evaluated {
            epoch: pos.epoch,
            test_loss,
            test_accuracy,
        });
        metrics.insert("test_loss".into(), test_loss);
        metrics.insert("test_accuracy".into(), test_accuracy);
        let mut improved = false;
        if let Some((metric, goal)) = &self.settings.best_metric
            && let Some(&value) = metrics.get(metric)
            && !value.is_nan()
            && pos.best.is_none_or(|b| goal.better(value, b))
        {
            pos.best = Some(value);
            improved = true;
        }
        Ok(Ok(EpochEnd {
            eval: (test_loss, test_accuracy),
            improved,
        }))
    }

    /// This rank's forward and backward pass over its slice of the global batch `rows`. In a
    /// world of one, the whole batch with the trainer's generator (as a single process always
    /// trained); in a larger one, the rank's slice ([`rank_rows`]) with a generator of its own
    /// for the step (drawn from the trainer's, which so advances alike on every rank), and the
    /// gradients flattened and weighted for the all-reduce.
    fn local_step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        rows: &[u32],
        pos: &Position,
    ) -> Result<LocalStep, TrainError> {
        let (rank, size) = (self.world.rank(), self.world.size());
        if size == 1 {
            let mut rng = std::mem::replace(&mut self.rng, TrainRng::new(0));
            let result = self.forward_backward(x, y, rows, &mut rng, pos);
            self.rng = rng;
            let (loss, grads, phases) = result?;
            return Ok(LocalStep {
                loss,
                grads,
                flat: None,
                phases,
            });
        }
        let mut rng = TrainRng::with_stream(self.rng.next_u64(), rank as u64 + 1);
        let mine = &rows[rank_rows(rows.len(), rank, size)];
        let (loss, grads, phases) = if mine.is_empty() {
            // A batch with fewer rows than ranks: this rank adds nothing, with weight 0.
            (0.0, GradStore::default(), Phases::default())
        } else {
            self.forward_backward(x, y, mine, &mut rng, pos)?
        };
        let flat = flatten_weighted(&self.model.parameters(), &grads, mine.len(), loss)?;
        Ok(LocalStep {
            loss,
            grads,
            flat: Some(flat),
            phases,
        })
    }

    /// The mean loss over `rows`, its gradients and where the time went.
    fn forward_backward(
        &self,
        x: &Tensor,
        y: &Tensor,
        rows: &[u32],
        rng: &mut TrainRng,
        pos: &Position,
    ) -> Result<(f32, GradStore, Phases), TrainError> {
        let started = Instant::now();
        let index = Tensor::from_slice(rows, rows.len(), &self.device)?;
        let xs = x.index_select(&index, 0)?;
        let ys = y.index_select(&index, 0)?;
        let gathered = Instant::now();
        let logits = self.model.forward(&xs, true, rng)?;
        let mut loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
        if self.settings.nan_at_step == Some(pos.step + 1) {
            loss = (loss * f64::NAN)?;
        }
        let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                step: pos.step + 1,
                epoch: pos.epoch,
                batch: pos.batch,
                loss: value,
            });
        }
        let forwarded = Instant::now();
        let grads = loss.backward()?;
        let phases = Phases {
            gather: gathered - started,
            forward: forwarded - gathered,
            backward: forwarded.elapsed(),
            update: Duration::ZERO,
        };
        Ok((value, grads, phases))
    }

    /// The update every rank applies: in a larger world the ranks' weighted gradients summed
    /// in one all-reduce and divided by the global batch's `rows` (the mean over the batch),
    /// then the optimizer step. Returns the batch's mean loss. The outer error is the
    /// communicator's; the inner one this rank's (agreed on by the caller).
    fn global_update(
        &mut self,
        local: LocalStep,
        rows: usize,
        lr: f64,
        step: u64,
    ) -> Result<Result<f32, TrainError>, TrainError> {
        let LocalStep {
            loss,
            mut grads,
            flat,
            ..
        } = local;
        let loss = match flat {
            None => loss,
            Some(mut flat) => {
                self.world.0.all_reduce_sum_f32(&mut flat)?;
                match rebuild_mean(&self.model.parameters(), &flat, rows, &mut grads) {
                    Ok(loss) => loss,
                    Err(error) => return Ok(Err(error.into())),
                }
            }
        };
        self.optimizer.set_lr(lr);
        if !self.sharded() {
            return Ok(self
                .optimizer
                .update(&grads)
                .map(|()| loss)
                .map_err(TrainError::from));
        }
        // Sharded: each rank computes its share; only when every share is good does any rank
        // assign its state, so a failure anywhere leaves every rank with the state before
        // the step. Then every rank's updated share is all-gathered into the parameters.
        let computed = self
            .optimizer
            .shard_update(&grads)
            .map_err(TrainError::from);
        let values = match self.world.agree(computed, step)? {
            Ok(values) => values,
            Err(cause) => {
                self.optimizer.finish_shard_update(false);
                return Ok(Err(cause));
            }
        };
        self.optimizer.finish_shard_update(true);
        let ranges = partition(self.elements(), self.world.size());
        gather_parameters(&self.world, &self.model.parameters(), &ranges, &values)?;
        Ok(Ok(loss))
    }

    /// Held-out loss and accuracy over the `n` rows of all ranks: each rank its slice `x`,
    /// `y` in batches of 1,000 rows, the sums all-reduced. The outer error is the
    /// communicator's; the inner one is agreed (every rank has it or none).
    fn evaluate(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        n: usize,
        step: u64,
    ) -> Result<Result<(f64, f64), TrainError>, TrainError> {
        let local = if self.world.size() == 1 {
            let mut rng = std::mem::replace(&mut self.rng, TrainRng::new(0));
            let sums = self.evaluate_slice(x, y, &mut rng);
            self.rng = rng;
            sums
        } else {
            // The replicated generator stays as it is on every rank.
            self.evaluate_slice(x, y, &mut self.rng.clone())
        };
        let (loss_sum, correct) = match self.world.agree(local, step)? {
            Ok(sums) => sums,
            Err(cause) => return Ok(Err(cause)),
        };
        let mut sums = [loss_sum, correct as f64];
        self.world.0.all_reduce_sum_f64(&mut sums)?;
        Ok(Ok((sums[0] / n as f64, sums[1] / n as f64)))
    }

    /// The summed loss (mean per batch times its rows) and the correct predictions over
    /// this rank's held-out slice.
    fn evaluate_slice(
        &self,
        x: &Tensor,
        y: &Tensor,
        rng: &mut TrainRng,
    ) -> Result<(f64, u64), TrainError> {
        let n = x.dim(0)?;
        let mut loss_sum = 0.0f64;
        let mut correct = 0u64;
        let mut from = 0;
        while from < n {
            let len = 1000.min(n - from);
            let xs = x.narrow(0, from, len)?;
            let ys = y.narrow(0, from, len)?;
            let logits = self.model.forward(&xs, false, rng)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &ys)?.to_scalar::<f32>()?;
            loss_sum += f64::from(loss) * len as f64;
            let predicted = logits.argmax(1)?;
            correct += predicted
                .eq(&ys)?
                .to_dtype(DType::U32)?
                .sum_all()?
                .to_scalar::<u32>()? as u64;
            from += len;
        }
        Ok((loss_sum, correct))
    }
}
