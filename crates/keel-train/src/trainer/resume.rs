//! Resuming: the newest valid checkpoint, checked against this run (trajectory, data,
//! generator, position, optimizer, tensors) before anything is assigned.

use super::*;

/// Every rank's starting point (a checkpoint, a fresh start, or an error), compared: the
/// ranks must start from the same one (they read one shared store).
pub(super) fn agree_on_start<T>(
    world: &World,
    start: Result<(T, Option<CheckpointId>), TrainError>,
) -> Result<(T, Option<CheckpointId>), TrainError> {
    if world.size() == 1 {
        return start;
    }
    let mine = match &start {
        Ok((_, Some(id))) => format!("resume from {id}"),
        Ok((_, None)) => "start fresh".to_string(),
        Err(error) => format!("error: {}", error_chain(error)),
    };
    let all = world.0.all_gather_bytes(mine.as_bytes())?;
    if all.iter().all(|other| *other == all[0]) {
        return start;
    }
    Err(TrainError::RanksDisagree {
        what: "where to start (do all ranks see the same checkpoint store?)",
        detail: all
            .iter()
            .enumerate()
            .map(|(rank, text)| format!("rank {rank}: {}", String::from_utf8_lossy(text)))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// What a checkpoint records of a dataset: its name, shape and content digest.
pub(super) fn data_record(set: &Dataset) -> Value {
    json!({
        "name": set.name,
        "rows": set.len(),
        "features": set.features,
        "classes": set.classes,
        "blake3": set.digest(),
    })
}

/// `rows x features, classes, blake3 …` of a recorded set, for messages.
fn describe(record: &Value) -> String {
    let get = |k: &str| record.get(k).map_or("?".to_string(), |v| v.to_string());
    format!(
        "{} rows x {} features, {} classes, blake3 {}",
        get("rows"),
        get("features"),
        get("classes"),
        record.get("blake3").and_then(Value::as_str).unwrap_or("?")
    )
}

/// The changes between the data a checkpoint recorded and the data now: one line per set.
fn data_changes(saved: &Value, now: &Value) -> Vec<String> {
    ["train", "test"]
        .into_iter()
        .filter(|set| saved.get(set) != now.get(set))
        .map(|set| {
            let (old, new) = (&saved[set], &now[set]);
            let name = new.get("name").and_then(Value::as_str).unwrap_or(set);
            format!("`{name}`: {} -> {}", describe(old), describe(new))
        })
        .collect()
}

impl<M: Model, O: OptimizerState> Trainer<M, O> {
    /// Each parameter's name, shape and checkpoint dtype, in order.
    fn parameter_info(&self) -> Vec<ParamInfo> {
        self.model
            .parameters()
            .iter()
            .filter_map(|(name, var)| {
                Some(ParamInfo {
                    name: name.clone(),
                    shape: var.dims().to_vec(),
                    dtype: ckpt_dtype(var.dtype())?,
                })
            })
            .collect()
    }

    /// The groups this rank reads of a checkpoint: the model and the optimizer state its
    /// elements need (all of it when replicated); `None` (all groups) when the manifest's
    /// layout does not read, which the resume then reports.
    fn wanted_groups(&self, manifest: &Manifest) -> Option<std::collections::BTreeSet<String>> {
        let state = TrainerState::from_user(&manifest.user).ok()?;
        let total = self.elements();
        let layout = saved_layout(
            state.optimizer.sharding.as_ref(),
            manifest.world_size,
            total,
        )
        .ok()?;
        let mut groups = layout.groups_for(total, self.optimizer.owned().as_ref());
        groups.insert("model".to_string());
        Some(groups)
    }

    /// The newest checkpoint that verifies, as [`CheckpointStore::latest_valid`] finds it,
    /// keeping only the groups this rank needs ([`CheckpointStore::load_groups`]: every file
    /// is still verified).
    fn latest_valid(&self) -> Result<Resume, CkptError> {
        let listed = self.store.list()?;
        let mut skipped = Vec::new();
        for listed in listed.iter().rev() {
            match listed.status {
                // Not keel's: not a checkpoint at all.
                keel_ckpt::Status::Foreign => continue,
                keel_ckpt::Status::Readable => {}
                _ => {
                    let problem = listed.problem.clone().unwrap_or_default();
                    skipped.push((listed.id.clone(), problem));
                    continue;
                }
            }
            let wanted = listed.manifest.as_ref().and_then(|m| self.wanted_groups(m));
            let loaded = match &wanted {
                Some(wanted) => self.store.load_groups(&listed.id, |g| wanted.contains(g)),
                None => self.store.load(&listed.id),
            };
            match loaded {
                Ok((manifest, snapshot)) => {
                    return Ok(Resume {
                        id: listed.id.clone(),
                        manifest,
                        snapshot,
                        skipped,
                    });
                }
                Err(error) => skipped.push((listed.id.clone(), error.to_string())),
            }
        }
        Err(CkptError::NoValidCheckpoint {
            root: self.store.location(),
            skipped,
        })
    }

    /// The position to start from, and the checkpoint resumed (none for a fresh start).
    pub(super) fn resume(
        &mut self,
        batches: u64,
        observer: &mut dyn FnMut(&Event<'_>),
    ) -> Result<(Position, Option<CheckpointId>), TrainError> {
        if self.settings.fresh {
            let listed = self.store.list()?;
            if !listed.is_empty() {
                return Err(TrainError::FreshNotEmpty {
                    location: self.store.location(),
                    checkpoints: listed.len(),
                });
            }
            observer(&Event::Fresh {
                why: "a fresh start was asked for".into(),
            });
            return Ok((Position::default(), None));
        }
        let resume = match self.latest_valid() {
            Ok(resume) => resume,
            Err(CkptError::NoValidCheckpoint { skipped, .. }) => {
                let listed = self.store.list()?;
                observer(&Event::Fresh {
                    why: if listed.is_empty() && skipped.is_empty() {
                        format!("no checkpoint in {}", self.store.location())
                    } else {
                        // Every one that was tried is named with its reason: a fresh start
                        // over damaged checkpoints must say which and why.
                        let reasons: Vec<String> = skipped
                            .iter()
                            .map(|(id, why)| format!("{id}: {why}"))
                            .collect();
                        format!(
                            "none of the {} checkpoint(s) in {} verifies ({})",
                            listed.len().max(skipped.len()),
                            self.store.location(),
                            reasons.join("; ")
                        )
                    },
                });
                return Ok((Position::default(), None));
            }
            Err(error) => return Err(error.into()),
        };
        let id = resume.id.clone();
        let bad = |reason: String| TrainError::BadCheckpoint {
            checkpoint: id.clone(),
            reason,
        };
        let state = TrainerState::from_user(&resume.snapshot.user).map_err(&bad)?;
        let differences =
            json_differences(&state.trajectory, &self.settings.trajectory, &|_| false);
        if !differences.is_empty() {
            return Err(TrainError::Incompatible {
                checkpoint: id,
                differences: differences
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        match &state.data {
            Some(saved) => {
                let changes = data_changes(saved, &self.data);
                if !changes.is_empty() {
                    return Err(TrainError::DataChanged {
                        checkpoint: id,
                        changes: changes.join("; "),
                    });
                }
            }
            None => observer(&Event::Warning(format!(
                "checkpoint {id} records no digest of its data (written by an older keel): \
                 resuming without checking that the data is the same"
            ))),
        }
        let rng_state = &state.rng;
        let rng = TrainRng::from_state(rng_state).map_err(bad)?;
        let ours = self.rng.state();
        if (&rng_state.seed, rng_state.stream) != (&ours.seed, ours.stream) {
            return Err(bad(
                "its random generator was seeded differently from this run's".into(),
            ));
        }
        let batch = state.batch;
        let (step, epoch) = (resume.manifest.step, resume.manifest.epoch);
        if resume.snapshot.step != step || resume.snapshot.epoch != epoch {
            return Err(bad(format!(
                "its snapshot (step {}, epoch {}) and manifest (step {step}, epoch {epoch}) disagree",
                resume.snapshot.step, resume.snapshot.epoch
            )));
        }
        if batch >= batches {
            return Err(bad(format!(
                "its data position (batch {batch} of epoch {epoch}) is outside an epoch of \
                 {batches} batches ({} rows in batches of {})",
                self.data["train"]["rows"], self.settings.batch_size
            )));
        }
        if epoch
            .checked_mul(batches)
            .and_then(|s| s.checked_add(batch))
            != Some(step)
        {
            return Err(bad(format!(
                "its step {step} is not epoch {epoch} x {batches} batches + batch {batch}"
            )));
        }
        let optimizer = &state.optimizer;
        if optimizer.kind != self.optimizer.kind() {
            return Err(bad(format!(
                "its optimizer is \"{}\", this run's {}",
                optimizer.kind,
                self.optimizer.kind()
            )));
        }
        let steps = optimizer.steps;
        if steps != step {
            return Err(bad(format!(
                "its optimizer took {steps} steps, its manifest says step {step}"
            )));
        }
        let saved_world = state.world_size;
        if saved_world != self.world.size() as u64 {
            // The data position is global and the state replicated: training goes on where it
            // stopped, with no sample skipped or repeated (not bit for bit: the gradients
            // are summed in another order).
            observer(&Event::Warning(format!(
                "checkpoint {id} was written by {saved_world} rank(s), this run has {}: resuming \
                 at its global data position (step {step}), not bit for bit",
                self.world.size()
            )));
        }
        let best = state.best.as_ref().and_then(|b| b.value);

        // Load everything before changing anything.
        let model_group = resume
            .snapshot
            .groups
            .get("model")
            .ok_or_else(|| bad("no `model` tensors".into()))?;
        let mut values = Vec::new();
        for (name, var) in self.model.parameters() {
            let saved = model_group
                .get(&name)
                .ok_or_else(|| bad(format!("parameter `{name}` is missing")))?;
            if saved.shape != var.dims() || Some(saved.dtype) != ckpt_dtype(var.dtype()) {
                return Err(bad(format!(
                    "parameter `{name}` is {:?} {:?}, the model's {:?} {:?}",
                    saved.dtype,
                    saved.shape,
                    var.dtype(),
                    var.dims()
                )));
            }
            let value = load_tensor(&name, saved, &self.device).map_err(&bad)?;
            values.push((var, value));
        }
        // The moments of whatever layout was saved (replicated, or shards of any world
        // size), put together for the elements this rank holds now.
        let layout = saved_layout(
            optimizer.sharding.as_ref(),
            resume.manifest.world_size,
            self.elements(),
        )
        .map_err(&bad)?;
        let owned = self.optimizer.owned();
        let tensors = assemble(
            &self.parameter_info(),
            &layout,
            &resume.snapshot.groups,
            owned.as_ref(),
        )
        .map_err(&bad)?;
        let mut state = BTreeMap::new();
        for (name, tensor) in &tensors {
            state.insert(
                name.clone(),
                load_tensor(name, tensor, &self.device).map_err(&bad)?,
            );
        }
        self.optimizer.load_state(steps, &state).map_err(bad)?;
        for (var, value) in values {
            var.set(&value)?;
        }
        self.rng = rng;
        let changes = environment_changes(
            resume.manifest.environment.as_ref(),
            resume.manifest.device.as_ref(),
            self.settings.environment.as_ref(),
            self.settings.device_probe.as_ref(),
        );
        let pos = Position {
            step,
            epoch,
            batch,
            best,
            eval: resume
                .manifest
                .metrics
                .get("test_loss")
                .copied()
                .zip(resume.manifest.metrics.get("test_accuracy").copied()),
        };
        observer(&Event::Resumed {
            id: &resume.id,
            step: pos.step,
            epoch: pos.epoch,
            batch: pos.batch,
            skipped: &resume.skipped,
            environment_changes: &changes,
        });
        Ok((pos, Some(resume.id)))
    }
}
