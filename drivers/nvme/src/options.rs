//! How a controller is set up: [`ControllerOptions`] and how commands describe data
//! ([`DataPointer`]). Apart from the controller and the queues, which both read them.

use mfio_pci::CompletionMode;
use std::time::Duration;

/// How the driver sets up a controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// I/O queue pairs to ask the controller for.
    pub io_queues: u16,
    /// Entries per I/O queue (clamped to CAP.MQES + 1).
    pub queue_depth: u16,
    /// Largest transfer per command in bytes (further limited by the controller's MDTS).
    pub max_transfer: usize,
    /// Bounce buffers per I/O queue, for memory the device cannot reach.
    pub bounce_buffers: usize,
    /// Size of each bounce buffer (a larger transfer through bounce buffers is split).
    pub bounce_size: usize,
    /// Bound on each admin command.
    pub admin_timeout: Duration,
    /// Bound on each I/O command before it is aborted.
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
    /// QD1 ran about 20 % slower with them (docs/benchmarks.md).
    pub shadow_doorbells: bool,
    /// How [`Controller::io_queue`](crate::Controller::io_queue)'s queues wait for completions (per queue:
    /// [`Controller::io_queue_with`](crate::Controller::io_queue_with)). Interrupt-driven modes need MSI-X: vector `qid` for
    /// queue `qid`, enabled the first time a queue asks.
    pub completion: CompletionMode,
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
