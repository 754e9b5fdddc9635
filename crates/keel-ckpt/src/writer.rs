//! Saving in the background: the training loop hands over a snapshot (its own deep copy of
//! the state) and goes on; one writer thread persists it (CheckFreq's snapshot/persist split).

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::CkptError;
use crate::model::{Kind, Snapshot};
use crate::store::{CheckpointId, CheckpointStore, Retention};

struct Job {
    kind: Kind,
    snapshot: Snapshot,
}

type Outcome = (u64, Result<CheckpointId, CkptError>);

/// A background checkpoint writer with at most one save in flight.
///
/// [`AsyncSaver::save`] waits for the previous save (if it is still running) before handing
/// over the next, so memory holds at most two snapshots (the one being written and the new
/// one). A failed background save is returned by the next call to `save`, `wait` or `finish`
/// and leaves no checkpoint that looks valid (the store's commit is atomic); a save that
/// committed but whose prune failed comes back as [`CkptError::Pruning`], not as a failed save.
#[derive(Debug)]
pub struct AsyncSaver {
    sender: Option<mpsc::SyncSender<Job>>,
    results: mpsc::Receiver<Outcome>,
    worker: Option<JoinHandle<()>>,
    in_flight: bool,
}

impl AsyncSaver {
    /// Starts the writer thread for `store`; after each committed save it applies `retention`.
    pub fn new(store: CheckpointStore, retention: Option<Retention>) -> Result<Self, CkptError> {
        // One slot: `save` hands a job over without waiting for the writer thread to be
        // scheduled (the previous job was taken, since its result came back first), so the
        // loop's stall is its own copy of the state and no more.
        let (sender, jobs) = mpsc::sync_channel::<Job>(1);
        let (done, results) = mpsc::channel::<Outcome>();
        let worker = std::thread::Builder::new()
            .name("keel-ckpt-writer".into())
            .spawn(move || {
                for job in jobs {
                    let step = job.snapshot.step;
                    let result = store.save_retaining(job.kind, &job.snapshot, retention.as_ref());
                    if done.send((step, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(AsyncSaver {
            sender: Some(sender),
            results,
            worker: Some(worker),
            in_flight: false,
        })
    }

    /// Waits for the save in flight, if any; returns its checkpoint, or its error.
    pub fn wait(&mut self) -> Result<Option<CheckpointId>, CkptError> {
        if !self.in_flight {
            return Ok(None);
        }
        self.in_flight = false;
        match self.results.recv() {
            Ok((_, Ok(id))) => Ok(Some(id)),
            // Saved, then the prune failed: not a failed save.
            Ok((_, Err(error @ CkptError::Pruning { .. }))) => Err(error),
            Ok((step, Err(error))) => Err(CkptError::BackgroundSave {
                step,
                source: Box::new(error),
            }),
            Err(_) => Err(CkptError::WriterGone),
        }
    }

    /// Hands `snapshot` to the writer and returns at once (after waiting for a previous save
    /// still in flight). Returns the previous save's checkpoint, or its error; in that case the
    /// new snapshot is still handed over.
    pub fn save(
        &mut self,
        kind: Kind,
        snapshot: Snapshot,
    ) -> Result<Option<CheckpointId>, CkptError> {
        let previous = self.wait();
        let sender = self.sender.as_ref().ok_or(CkptError::WriterGone)?;
        sender
            .send(Job { kind, snapshot })
            .map_err(|_| CkptError::WriterGone)?;
        self.in_flight = true;
        previous
    }

    /// Waits for the last save and stops the writer.
    pub fn finish(mut self) -> Result<Option<CheckpointId>, CkptError> {
        let last = self.wait();
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            worker.join().map_err(|_| CkptError::WriterGone)?;
        }
        last
    }
}

impl Drop for AsyncSaver {
    fn drop(&mut self) {
        // Finish the save in flight: dropping the saver must not lose a checkpoint.
        self.sender = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
