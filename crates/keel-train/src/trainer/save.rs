//! Saving: the snapshot of the state, synchronous, background and multi-rank saves, the
//! emergency checkpoint of the last good state.

use super::*;

/// Where the loop ended, for [`Trainer::finish`].
pub(super) struct Ended {
    /// The position reached.
    pub(super) pos: Position,
    /// Completed or interrupted.
    pub(super) status: Status,
    /// The step and (when known yet) the id of the newest regular checkpoint.
    pub(super) last_regular: Option<(u64, Option<CheckpointId>)>,
    /// The last held-out loss and accuracy.
    pub(super) last_eval: Option<(f64, f64)>,
}

pub(super) enum Saver {
    Sync(CheckpointStore, Option<Retention>),
    /// The writer, and the kind and step of the save handed to it last.
    Background(AsyncSaver, Option<(Kind, u64)>),
}

impl std::fmt::Debug for Saver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Saver::Sync(..) => "Saver::Sync",
            Saver::Background(..) => "Saver::Background",
        })
    }
}

/// `kind/name` back into a checkpoint id (`None` for an empty or unknown text).
fn parse_id(text: &str) -> Option<CheckpointId> {
    let (kind, name) = text.split_once('/')?;
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some(CheckpointId {
        kind,
        name: name.to_string(),
    })
}

/// Saves, then prunes by `retention`. A prune that fails after the save committed is a
/// warning, not a failed save: the checkpoint is there.
fn save_and_prune(
    store: &CheckpointStore,
    kind: Kind,
    snapshot: &Snapshot,
    retention: Option<&Retention>,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Result<CheckpointId, TrainError> {
    let id = store.save(kind, snapshot)?;
    if let Some(retention) = retention
        && let Err(error) = store.prune_after(retention, &id)
    {
        observer(&Event::Warning(format!(
            "checkpoint {id} is saved, but pruning older checkpoints failed: {}",
            error_chain(&error)
        )));
    }
    Ok(id)
}

/// Reports a failed background save: when the checkpoint it was writing did commit (the
/// error came after, from pruning older ones), a warning and the checkpoint; otherwise a
/// failed save.
fn background_failed(
    store: &CheckpointStore,
    error: CkptError,
    in_flight: Option<(Kind, u64)>,
    observer: &mut dyn FnMut(&Event<'_>),
) -> Option<CheckpointId> {
    let committed = in_flight.and_then(|(kind, step)| {
        store.list().ok()?.into_iter().find_map(|listed| {
            (listed.id.kind == kind && listed.manifest.as_ref()?.step == step).then_some(listed.id)
        })
    });
    match committed {
        Some(id) => {
            observer(&Event::Warning(format!(
                "checkpoint {id} is saved, but what came after failed: {}",
                error_chain(&error)
            )));
            Some(id)
        }
        None => {
            observer(&Event::SaveFailed(error_chain(&error)));
            None
        }
    }
}

impl<M: Model, O: OptimizerState> Trainer<M, O> {
    /// The end of a run (all epochs done, or stopped): the final (or interrupted) state
    /// saved unless the last policy save holds it, after the background save in flight; the
    /// loss plot; the outcome.
    pub(super) fn finish(
        &mut self,
        ended: Ended,
        saver: Saver,
        log: Option<&MetricsLog>,
        train_name: &str,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Outcome, TrainError> {
        let Ended {
            pos,
            status,
            last_regular,
            last_eval,
        } = ended;
        let (world, size, sharded) = (self.world.clone(), self.world.size(), self.sharded());
        // The final (or interrupted) state; saved synchronously after the one in flight.
        let kind = match status {
            Status::Completed => Kind::Regular,
            Status::Interrupted { .. } => Kind::Interrupted,
        };
        // The last background save is the policy's regular one when it saved at this step (a
        // `best` one goes first); when it failed, the state is saved again below.
        let background_last = match saver {
            Saver::Background(saver, in_flight) => match saver.finish() {
                Ok(id) => Ok(id),
                Err(error) => background_failed(&self.store, error, in_flight, observer)
                    .map(Some)
                    .ok_or(()),
            },
            Saver::Sync(..) => Ok(None),
        };
        let saved_here = match (last_regular, background_last) {
            (Some((step, id)), Ok(background)) if step == pos.step => id.or(background),
            _ => None,
        };
        // Rank 0 knows whether the final state is saved already (a background save's id
        // comes back to it alone): every rank goes by its answer.
        let saved_here = if size == 1 {
            saved_here
        } else {
            let mut name = saved_here
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
                .into_bytes();
            world.0.broadcast_bytes(0, &mut name)?;
            parse_id(&String::from_utf8_lossy(&name))
        };
        let checkpoint = if let (Some(id), Kind::Regular) = (&saved_here, kind) {
            Some(id.clone())
        } else {
            let mut metrics = BTreeMap::new();
            if let Some((l, a)) = last_eval {
                metrics.insert("test_loss".to_string(), l);
                metrics.insert("test_accuracy".to_string(), a);
            }
            let started = Instant::now();
            let id = if size == 1 && !sharded {
                let snapshot = self.snapshot(&pos, &self.rng, metrics)?;
                save_and_prune(
                    &self.store,
                    kind,
                    &snapshot,
                    self.settings.retention.as_ref(),
                    observer,
                )?
            } else {
                let mut saver = Saver::Sync(self.store.clone(), self.settings.retention.clone());
                self.save_agreed(kind, &pos, &self.rng, metrics, &mut saver, observer)??
                    .ok_or_else(|| TrainError::LeadSaveFailed {
                        kind,
                        step: pos.step,
                        reason: "no checkpoint was named".into(),
                    })?
            };
            observer(&Event::Saved {
                kind,
                step: pos.step,
                stall: started.elapsed(),
                background: false,
                by_policy: false,
            });
            Some(id)
        };
        if let (Some(plot), Some(log)) = (&self.settings.plot, log) {
            plot_loss(
                log.rows(),
                plot,
                &format!("{train_name} ({})", self.optimizer.kind()),
            )?;
        }
        Ok(Outcome {
            status,
            step: pos.step,
            epoch: pos.epoch,
            checkpoint,
            test_accuracy: last_eval.map(|e| e.1),
            test_loss: last_eval.map(|e| e.0),
        })
    }

    fn snapshot(
        &self,
        pos: &Position,
        rng: &TrainRng,
        metrics: BTreeMap<String, f64>,
    ) -> Result<Snapshot, TrainError> {
        // No checkpoint records non-finite weights or optimizer state as a good state.
        let finite = |name: &str, t: keel_ckpt::Tensor| match first_non_finite(&t) {
            None => Ok(t),
            Some(value) => Err(TrainError::NonFiniteState {
                tensor: name.to_string(),
                step: pos.step,
                value,
            }),
        };
        let mut model = BTreeMap::new();
        for (name, var) in self.model.parameters() {
            let tensor = finite(&name, to_ckpt(&name, var.as_tensor())?)?;
            model.insert(name, tensor);
        }
        let mut optimizer = BTreeMap::new();
        for (name, tensor) in self.optimizer.state_tensors()? {
            let tensor = finite(&name, to_ckpt(&name, &tensor)?)?;
            optimizer.insert(name, tensor);
        }
        let mut groups = BTreeMap::from([("model".to_string(), model)]);
        // Sharded, each rank's share is its own group, and the partition is recorded so
        // that a run of another world size can put the moments together again.
        let sharding = self.sharded().then(|| {
            partition_record(
                self.elements(),
                &partition(self.elements(), self.world.size()),
            )
        });
        if !optimizer.is_empty() {
            let group = match &sharding {
                Some(_) => rank_group("optimizer", self.world.rank()),
                None => "optimizer".to_string(),
            };
            groups.insert(group, optimizer);
        }
        let user = TrainerState {
            keel_train: STATE_VERSION,
            world_size: self.world.size() as u64,
            trajectory: self.settings.trajectory.clone(),
            data: Some(self.data.clone()),
            batch: pos.batch,
            rng: rng.state(),
            optimizer: OptimizerRecord {
                kind: self.optimizer.kind().to_string(),
                steps: self.optimizer.steps(),
                lr: self.optimizer.lr(),
                sharding,
            },
            best: self
                .settings
                .best_metric
                .as_ref()
                .map(|(metric, _)| BestRecord {
                    metric: metric.clone(),
                    value: pos.best,
                }),
        }
        .to_user()?;
        Ok(Snapshot {
            step: pos.step,
            epoch: pos.epoch,
            metrics,
            user,
            environment: self.settings.environment.clone(),
            device: self.settings.device_probe.clone(),
            groups,
        })
    }

    /// Saves; returns the loop's stall and, for a synchronous save, the checkpoint; `None`
    /// when the save failed (reported, not fatal: the previous checkpoints are intact). In a
    /// larger world every rank calls it: the divergence check, rank 0's save, its outcome on
    /// every rank. The error is fatal: diverged ranks or a broken communicator.
    pub(super) fn save(
        &self,
        kind: Kind,
        pos: &Position,
        rng: &TrainRng,
        metrics: &BTreeMap<String, f64>,
        saver: &mut Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Option<(Duration, Option<CheckpointId>)>, TrainError> {
        let started = Instant::now();
        let result = if self.world.size() == 1 && !self.sharded() {
            self.snapshot(pos, rng, metrics.clone())
                .and_then(|snapshot| self.save_here(kind, snapshot, saver, observer))
        } else {
            self.save_agreed(kind, pos, rng, metrics.clone(), saver, observer)?
        };
        Ok(match result {
            Ok(id) => {
                let stall = started.elapsed();
                observer(&Event::Saved {
                    kind,
                    step: pos.step,
                    stall,
                    background: matches!(saver, Saver::Background(..)),
                    by_policy: kind == Kind::Regular,
                });
                Some((stall, id))
            }
            Err(error) => {
                observer(&Event::SaveFailed(error.to_string()));
                None
            }
        })
    }

    /// This process saves `snapshot`: synchronously (the checkpoint), or handed to the
    /// background writer (`None`).
    fn save_here(
        &self,
        kind: Kind,
        snapshot: Snapshot,
        saver: &mut Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Option<CheckpointId>, TrainError> {
        match saver {
            Saver::Sync(store, retention) => Ok(Some(save_and_prune(
                store,
                kind,
                &snapshot,
                retention.as_ref(),
                observer,
            )?)),
            Saver::Background(saver, in_flight) => {
                // The previous background save's outcome comes back here.
                let previous = in_flight.replace((kind, snapshot.step));
                if let Err(error) = saver.save(kind, snapshot) {
                    background_failed(&self.store, error, previous, observer);
                }
                Ok(None)
            }
        }
    }

    /// A save in a world of several ranks. Every rank builds its snapshot and all-gathers its
    /// [`state_digest`]; a rank whose state differs from rank 0's stops every rank
    /// ([`TrainError::Diverged`], the outer error). Rank 0 then saves the replicated state
    /// (a complete checkpoint) and broadcasts the outcome, so every rank returns the same
    /// checkpoint, or the same failure (the inner error), before anyone goes on.
    fn save_agreed(
        &self,
        kind: Kind,
        pos: &Position,
        rng: &TrainRng,
        metrics: BTreeMap<String, f64>,
        saver: &mut Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Result<Option<CheckpointId>, TrainError>, TrainError> {
        let world = &self.world;
        let snapshot = self.snapshot(pos, rng, metrics);
        let mine = match &snapshot {
            Ok(snapshot) => state_digest(snapshot),
            Err(error) => format!("error: {}", error_chain(error)),
        };
        let all: Vec<String> = world
            .0
            .all_gather_bytes(mine.as_bytes())?
            .iter()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .collect();
        let failures: Vec<String> = all
            .iter()
            .enumerate()
            .filter_map(|(rank, text)| {
                text.strip_prefix("error: ")
                    .map(|why| format!("rank {rank}: {why}"))
            })
            .collect();
        let snapshot = match snapshot {
            Err(own) => return Ok(Err(own)),
            Ok(_) if !failures.is_empty() => {
                return Ok(Err(TrainError::RankFailed {
                    step: pos.step,
                    failures: failures.join("; "),
                }));
            }
            Ok(snapshot) => snapshot,
        };
        let differ: Vec<usize> = (1..all.len()).filter(|&r| all[r] != all[0]).collect();
        if !differ.is_empty() {
            return Err(TrainError::Diverged {
                step: pos.step,
                ranks: differ,
                digests: all
                    .iter()
                    .enumerate()
                    .map(|(rank, digest)| format!("rank {rank}: {digest}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if self.sharded() {
            let retention = match saver {
                Saver::Sync(_, retention) => retention.clone(),
                Saver::Background(..) => self.settings.retention.clone(),
            };
            return self.save_shared(kind, snapshot, retention.as_ref(), observer);
        }
        let own = world
            .lead()
            .then(|| self.save_here(kind, snapshot, saver, observer));
        self.lead_outcome(kind, pos.step, own)
    }

    /// A sharded save, one commit across the ranks (keel-ckpt's multi-writer protocol): rank
    /// 0 begins the checkpoint and broadcasts it; every rank writes and fsyncs its own
    /// groups into it (rank 0 the model and its share `optimizer-rank0`, rank `R` its
    /// `optimizer-rank<R>`); a failure on any rank is agreed, and rank 0 then aborts (the
    /// checkpoints before it stay as they are); otherwise every rank's list of files goes to
    /// rank 0, which writes the manifest last, prunes, and broadcasts the outcome.
    fn save_shared(
        &self,
        kind: Kind,
        mut snapshot: Snapshot,
        retention: Option<&Retention>,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<Result<Option<CheckpointId>, TrainError>, TrainError> {
        let world = &self.world;
        let (rank, step) = (world.rank(), snapshot.step);
        let groups: BTreeMap<String, keel_ckpt::TensorGroup> = std::mem::take(&mut snapshot.groups)
            .into_iter()
            .filter(|(group, _)| world.lead() || group_rank(group) == Some(rank))
            .collect();
        let (save, begin_error) = if world.lead() {
            match self.store.begin_shared(kind, step, world.size()) {
                Ok(save) => (Some(save), None),
                Err(error) => (None, Some(error)),
            }
        } else {
            (None, None)
        };
        let mut pending = save
            .as_ref()
            .map(|save| save.pending().to_bytes())
            .unwrap_or_default();
        world.0.broadcast_bytes(0, &mut pending)?;
        let part = if let Some(error) = begin_error {
            Err(TrainError::from(error))
        } else if pending.is_empty() {
            // Rank 0 could not begin: its error comes through the agreement.
            Ok(None)
        } else {
            PendingCheckpoint::from_bytes(&pending)
                .and_then(|pending| self.store.write_part(&pending, rank, &groups))
                .map(Some)
                .map_err(TrainError::from)
        };
        // Dropping `save` on rank 0 (the early return) aborts the pending checkpoint.
        let part = match world.agree(part, step)? {
            Ok(part) => part,
            Err(error) => return Ok(Err(error)),
        };
        let mine = part.map(|part| part.to_bytes()).unwrap_or_default();
        let gathered = world.0.gather_bytes(0, &mine)?;
        let own = world.lead().then(|| {
            let (Some(save), Some(gathered)) = (save, gathered) else {
                return Err(TrainError::LeadSaveFailed {
                    kind,
                    step,
                    reason: "no pending checkpoint to commit".into(),
                });
            };
            let parts = gathered
                .iter()
                .map(|bytes| SharedPart::from_bytes(bytes))
                .collect::<Result<Vec<_>, _>>()?;
            match save.commit_retaining(&snapshot, &parts, retention) {
                Ok(id) => Ok(Some(id)),
                Err(CkptError::Pruning { saved, source }) => {
                    observer(&Event::Warning(format!(
                        "checkpoint {saved} is saved, but pruning older checkpoints failed: {}",
                        error_chain(&*source)
                    )));
                    Ok(Some(saved))
                }
                Err(error) => Err(error.into()),
            }
        });
        self.lead_outcome(kind, step, own)
    }

    /// Rank 0's save outcome (`own` on rank 0, `None` elsewhere) broadcast: every rank
    /// returns rank 0's checkpoint, or its failure as [`TrainError::LeadSaveFailed`].
    fn lead_outcome(
        &self,
        kind: Kind,
        step: u64,
        own: Option<Result<Option<CheckpointId>, TrainError>>,
    ) -> Result<Result<Option<CheckpointId>, TrainError>, TrainError> {
        let mut outcome = match &own {
            Some(Ok(Some(id))) => format!("saved {}", id.name),
            Some(Ok(None)) => "handed over".to_string(),
            Some(Err(error)) => format!("failed {}", error_chain(error)),
            None => String::new(),
        }
        .into_bytes();
        self.world.0.broadcast_bytes(0, &mut outcome)?;
        if let Some(own) = own {
            return Ok(own);
        }
        let outcome = String::from_utf8_lossy(&outcome);
        let failed = |reason: &str| TrainError::LeadSaveFailed {
            kind,
            step,
            reason: reason.to_string(),
        };
        Ok(if let Some(name) = outcome.strip_prefix("saved ") {
            Ok(Some(CheckpointId {
                kind,
                name: name.to_string(),
            }))
        } else if outcome == "handed over" {
            Ok(None)
        } else if let Some(reason) = outcome.strip_prefix("failed ") {
            Err(failed(reason))
        } else {
            Err(failed(&format!("an unreadable outcome {outcome:?}")))
        })
    }

    /// Saves the last good state as an `emergency` checkpoint (rank 0 alone, its outcome on
    /// every rank; every rank its share when sharded) and wraps the failure's cause.
    pub(super) fn emergency(
        &self,
        failure: Failure,
        saver: Saver,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> TrainError {
        let Failure {
            held: pos,
            rng,
            failed_step,
            cause,
        } = failure;
        let rng = &rng;
        if let Saver::Background(saver, in_flight) = saver
            && let Err(error) = saver.finish()
        {
            background_failed(&self.store, error, in_flight, observer);
        }
        // `snapshot` refuses non-finite weights: an emergency checkpoint holds the last state
        // whose loss and weights were finite, or nothing.
        let here = || {
            self.snapshot(&pos, rng, BTreeMap::new())
                .and_then(|snapshot| Ok(self.store.save(Kind::Emergency, &snapshot)?))
        };
        let saved = if self.sharded() {
            // Every rank writes its share of the last good state (the same on every rank: a
            // failed sharded update is undone everywhere).
            let mut saver = Saver::Sync(self.store.clone(), None);
            match self.save_agreed(
                Kind::Emergency,
                &pos,
                rng,
                BTreeMap::new(),
                &mut saver,
                observer,
            ) {
                Ok(Ok(Some(id))) => Ok(id),
                Ok(Ok(None)) => Err(TrainError::LeadSaveFailed {
                    kind: Kind::Emergency,
                    step: pos.step,
                    reason: "no checkpoint was named".into(),
                }),
                Ok(Err(error)) | Err(error) => Err(error),
            }
        } else if self.world.size() == 1 {
            here()
        } else {
            let own = self.world.lead().then(|| here().map(Some));
            match self.lead_outcome(Kind::Emergency, pos.step, own) {
                Ok(Ok(Some(id))) => Ok(id),
                Ok(Ok(None)) => Err(TrainError::LeadSaveFailed {
                    kind: Kind::Emergency,
                    step: pos.step,
                    reason: "no checkpoint was named".into(),
                }),
                Ok(Err(error)) | Err(error) => Err(error),
            }
        };
        TrainError::StepFailed {
            step: failed_step,
            saved_step: pos.step,
            cause: Box::new(cause),
            emergency: saved.map_err(Box::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening issue #13: an error from the store after a save committed (pruning older
    /// checkpoints) was reported as "a checkpoint save failed"; it is a warning naming the
    /// checkpoint, which counts as saved. An error for a save that did not commit stays a
    /// failed save.
    #[test]
    fn prune_failure_after_a_committed_save_is_not_a_failed_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::local(dir.path()).unwrap();
        let snapshot = Snapshot {
            step: 7,
            epoch: 0,
            metrics: BTreeMap::new(),
            user: json!({}),
            environment: None,
            device: None,
            groups: BTreeMap::new(),
        };
        let id = store.save(Kind::Regular, &snapshot).unwrap();
        let mut events = Vec::new();
        let mut observer = |event: &Event<'_>| events.push(format!("{event:?}"));
        let error = || CkptError::Setting("prune exploded".into());
        let found = background_failed(&store, error(), Some((Kind::Regular, 7)), &mut observer);
        assert_eq!(found, Some(id.clone()));
        let missing = background_failed(&store, error(), Some((Kind::Regular, 8)), &mut observer);
        assert_eq!(missing, None);
        assert!(
            events[0].starts_with(&format!("Warning(\"checkpoint {id} is saved, but"))
                && events[0].contains("prune exploded"),
            "{events:?}"
        );
        assert!(events[1].starts_with("SaveFailed("), "{events:?}");
    }
}
