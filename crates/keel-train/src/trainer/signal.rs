//! Stopping on SIGINT/SIGTERM: the loop stops after the current step and saves.

use super::*;

/// A request to stop after the current step: set by SIGINT/SIGTERM when installed, or by hand.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    signal: Arc<AtomicUsize>,
}

impl StopSignal {
    /// A signal nobody has raised yet; [`StopSignal::request`] raises it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Catches SIGINT and SIGTERM (on Unix): the first one asks the loop to stop after the
    /// current step and save; a second one ends the process at once (exit status 128 + signal).
    pub fn install() -> Result<Self, TrainError> {
        let stop = Self::new();
        #[cfg(unix)]
        {
            use signal_hook::consts::{SIGINT, SIGTERM};
            let again = Arc::new(AtomicBool::new(false));
            for signal in [SIGINT, SIGTERM] {
                signal_hook::flag::register_conditional_shutdown(
                    signal,
                    128 + signal,
                    Arc::clone(&again),
                )?;
                signal_hook::flag::register(signal, Arc::clone(&again))?;
                signal_hook::flag::register_usize(
                    signal,
                    Arc::clone(&stop.signal),
                    signal as usize,
                )?;
            }
        }
        Ok(stop)
    }

    /// Asks the loop to stop, as if `signal` had arrived.
    pub fn request(&self, signal: i32) {
        self.signal.store(signal.max(1) as usize, Ordering::SeqCst);
    }

    /// The signal that asked to stop, if any.
    pub fn requested(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}
