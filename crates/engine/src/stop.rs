//! The stop flag that Ctrl-C sets and stages check at shard boundaries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{exit_code, EngineError};

/// A shared flag asking a run to stop at the next shard boundary.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every node of the run to stop at its next shard boundary.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    #[must_use]
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Installs a handler for Ctrl-C, SIGTERM and SIGHUP that sets this flag.
    /// A second signal exits at once with code 130; committed shards and
    /// finished outputs stay valid because every write is atomic. Call it
    /// once per process.
    pub fn install_signal_handler(&self) -> Result<(), EngineError> {
        let flag = self.clone();
        ctrlc::set_handler(move || {
            if flag.is_requested() {
                tracing::warn!("second interrupt: exiting now");
                std::process::exit(exit_code::INTERRUPTED);
            }
            tracing::warn!(
                "interrupt received: stopping at the next shard boundary (interrupt again to exit now)"
            );
            flag.request();
        })?;
        Ok(())
    }
}
