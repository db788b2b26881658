//! How a controller is set up: [`ControllerOptions`] and how commands describe data
//! ([`DataPointer`]). Apart from the controller and the queues, which both read them.

use mfio_pci::CompletionMode;
use std::time::Duration;

/// How the driver sets up a controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// I/O queue pairs to ask the controller for (at least 1; it may grant fewer).
    pub io_queues: u16,
    /// Entries per I/O queue: at least 2 (one always stays empty); clamped to CAP.MQES + 1
    /// and 4096.
    pub queue_depth: u16,
    /// Largest transfer per command in bytes: at least 4096 (a page); further limited by the
    /// controller's MDTS and rounded down to whole blocks.
    pub max_transfer: usize,
    /// Bounce buffers per I/O queue, for memory the device cannot reach: at least 1; at most
    /// one per queue entry is used.
    pub bounce_buffers: usize,
    /// Size of each bounce buffer, at least 4096 (a larger transfer through bounce buffers
    /// is split); rounded down to whole pages and to at most `max_transfer`.
    pub bounce_size: usize,
    /// Bound on each admin command: 1 ms to 1 day.
    pub admin_timeout: Duration,
    /// Bound on each I/O command before it is aborted: 1 ms to 1 day.
    pub io_timeout: Duration,
    /// How I/O commands describe their data (PRPs, SGLs, or PRPs with SGLs as the fallback).
    pub data_pointer: DataPointer,
    /// Use shadow doorbells (Doorbell Buffer Config) when the controller offers them (OACS bit
    /// 8; emulated controllers such as QEMU's): I/O queues then write doorbell registers only
    /// when the controller's EventIdx asks for it.
    ///
    /// Default off, because what they save depends on the controller's EventIdx policy, and
    /// QEMU 7.2's costs: it asks for the CQ head register after every batch it posts, where the
    /// register-only driver writes it once per half ring, and it asks for the SQ tail register
    /// whenever it has caught up, which at low depth is every batch anyway. In the TCG guest,
    /// QD1 ran slower with them (the figures: docs/benchmarks.md).
    pub shadow_doorbells: bool,
    /// How [`Controller::io_queue`](crate::Controller::io_queue)'s queues wait for completions (per queue:
    /// [`Controller::io_queue_with`](crate::Controller::io_queue_with)). Interrupt-driven modes need MSI-X: vector `qid` for
    /// queue `qid`, enabled the first time a queue asks.
    pub completion: CompletionMode,
}

/// The longest timeout an option may give (deadlines are kept in milliseconds, and a longer one
/// is a hang by another name).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl ControllerOptions {
    /// Checks every option against what any controller can work with, before anything is
    /// touched: [`NvmeError::Options`](crate::NvmeError::Options) names the first that fails.
    /// ([`Controller::new`](crate::Controller::new) calls it.)
    pub fn validate(&self) -> Result<(), crate::NvmeError> {
        let bad = |why: String| Err(crate::NvmeError::Options(why));
        if self.io_queues == 0 {
            return bad("io_queues is 0: ask for at least 1 I/O queue pair".into());
        }
        if self.queue_depth < 2 {
            return bad(format!(
                "queue_depth is {}: a queue needs at least 2 entries (one always stays empty)",
                self.queue_depth
            ));
        }
        if self.max_transfer < 4096 {
            return bad(format!(
                "max_transfer is {}: give at least 4096 bytes (one memory page)",
                self.max_transfer
            ));
        }
        if self.bounce_buffers == 0 {
            return bad("bounce_buffers is 0: give at least 1 (memory the device cannot reach goes through them)".into());
        }
        if self.bounce_size < 4096 {
            return bad(format!(
                "bounce_size is {}: give at least 4096 bytes (one memory page)",
                self.bounce_size
            ));
        }
        for (name, t) in [("admin_timeout", self.admin_timeout), ("io_timeout", self.io_timeout)] {
            if t < Duration::from_millis(1) || t > MAX_TIMEOUT {
                return bad(format!(
                    "{name} is {t:?}: give 1 ms to {} hours",
                    MAX_TIMEOUT.as_secs() / 3600
                ));
            }
        }
        Ok(())
    }
}

/// How I/O commands describe their data to the controller.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum DataPointer {
    /// PRPs, the cheapest for the common case; SGLs, when the controller offers them, for
    /// memory PRPs cannot describe (pieces that do not meet at page boundaries, odd offsets),
    /// which would otherwise bounce.
    #[default]
    Auto,
    /// PRPs only: memory they cannot describe bounces.
    Prp,
    /// SGLs for every read and write (bring-up fails if the controller does not offer them).
    Sgl,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            io_queues: 4,
            queue_depth: 256,
            max_transfer: 1 << 20,
            bounce_buffers: 32,
            bounce_size: 128 << 10,
            admin_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            data_pointer: DataPointer::Auto,
            shadow_doorbells: false,
            completion: CompletionMode::Poll,
        }
    }
}
