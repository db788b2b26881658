//! The controller's state behind the model's mutex, and the helpers every part uses: DMA
//! through the checking mapper (with bus mastering enforced), violations, the error log.

use std::collections::{BTreeSet, VecDeque};

use mfio_dma::{DeviceMemory, DmaView, Iova};

use super::config::ModelConfig;
use super::inject::{Injection, Violation, ViolationKind};
use super::namespace::Namespace;
use super::pci::ConfigSpace;
use super::records::{Cq, Dbbuf, Group, Pending, Seg, Sq};
use super::ModelStats;
use crate::spec::{Command, Status};

/// Error Information log entries kept (Identify ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 64;
/// Violations kept (the first ones matter; a runaway driver should not eat memory).
const MAX_VIOLATIONS: usize = 1024;

/// A DMA access failed; the violation is already recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DmaFailed;

/// Set/Get Features values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Features {
    pub arbitration: u32,
    pub volatile_write_cache: bool,
    pub interrupt_coalescing: u32,
    pub async_event_config: u32,
}

impl Features {
    pub fn defaults(cfg: &ModelConfig) -> Self {
        Self {
            arbitration: 0,
            volatile_write_cache: cfg.volatile_write_cache,
            interrupt_coalescing: 0,
            async_event_config: 0,
        }
    }
}

/// SMART / health counters (raw; the log page converts units).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Smart {
    /// 512-byte units read.
    pub sectors_read: u64,
    /// 512-byte units written.
    pub sectors_written: u64,
    pub host_reads: u64,
    pub host_writes: u64,
    pub media_errors: u64,
}

/// Everything the controller knows.
pub(crate) struct State {
    pub cfg: ModelConfig,
    /// Every DMA goes through this view of the checking mapper (lock-free, as strict).
    pub dma: DmaView,
    pub pci: ConfigSpace,
    pub cc: u32,
    pub csts: u32,
    pub aqa: u32,
    pub asq: u64,
    pub acq: u64,
    pub intms: u32,
    /// Indexed by queue ID; 0 is the admin queue.
    pub sqs: Vec<Option<Sq>>,
    pub cqs: Vec<Option<Cq>>,
    /// (I/O SQs, I/O CQs) granted by Set Features Number of Queues, once set.
    pub granted: Option<(u16, u16)>,
    /// When the model was made (a placeholder instant for commands that run at once).
    pub created: std::time::Instant,
    /// Shadow doorbell pages (Doorbell Buffer Config), until the next reset.
    pub dbbuf: Option<Dbbuf>,
    pub features: Features,
    pub namespaces: Vec<Namespace>,
    /// Commands fetched but not yet executed (deferred, delayed, held), in fetch order.
    pub pending: Vec<Pending>,
    /// Outstanding Asynchronous Event Requests (CIDs); no event ever fires.
    pub aers: Vec<u16>,
    pub injections: Vec<Injection>,
    pub media_errors: BTreeSet<(u32, u64)>,
    /// Completions made during the current register write, in groups that stay together
    /// when reordered (a bogus-CID CQE and the real one), with their CQ IDs.
    pub batch: Vec<Group>,
    /// Reused segment list, so the I/O path does not allocate.
    pub scratch: Vec<Seg>,
    pub counters: ModelStats,
    pub violations: Vec<Violation>,
    /// The first violation's message, to panic with once the lock is released.
    pub pending_panic: Option<String>,
    /// CC.EN 1 -> 0 is ignored (a hung controller): it stays ready and keeps executing.
    pub stuck_enabled: bool,
    /// Hot-removed ([`NvmeModel::remove`](super::NvmeModel::remove)): registers read all ones,
    /// writes and doorbells do nothing, nothing more is processed or completed.
    pub removed: bool,
    pub error_log: VecDeque<[u8; 64]>,
    pub error_count: u64,
    pub smart: Smart,
    pub rng: u64,
    /// Corrupts I/O completion entries while set.
    pub hostile: Option<super::hostile::HostileState>,
    /// Entries to write for one completion (reused: the honest path does not allocate).
    pub hostile_out: Vec<super::hostile::Entry>,
    /// MSI-X: the vectors' eventfds, masks and counters.
    pub irq: mfio_pci::ModelInterrupts,
}

impl State {
    pub fn new(cfg: ModelConfig, dma: DmaView) -> Self {
        let nq = usize::from(cfg.max_queues) + 1;
        let seed = match cfg.completion {
            super::CompletionMode::Shuffled { seed } => seed,
            _ => 0,
        };
        Self {
            dma,
            pci: ConfigSpace::new(),
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            sqs: (0..nq).map(|_| None).collect(),
            cqs: (0..nq).map(|_| None).collect(),
            granted: None,
            dbbuf: None,
            created: std::time::Instant::now(),
            features: Features::defaults(&cfg),
            namespaces: cfg.namespaces.iter().map(Namespace::new).collect(),
            pending: Vec::new(),
            aers: Vec::new(),
            injections: Vec::new(),
            media_errors: BTreeSet::new(),
            batch: Vec::new(),
            scratch: Vec::new(),
            counters: ModelStats {
                admin_commands: vec![0; 256],
                io_commands: vec![0; 256],
                sq_doorbells: vec![0; nq],
                cq_doorbells: vec![0; nq],
                last_batch: vec![0; nq],
                max_batch: vec![0; nq],
                ..ModelStats::default()
            },
            violations: Vec::new(),
            pending_panic: None,
            hostile: None,
            hostile_out: Vec::new(),
            stuck_enabled: false,
            removed: false,
            error_log: VecDeque::new(),
            error_count: 0,
            smart: Smart::default(),
            // xorshift must not start at 0.
            rng: seed | 1,
            irq: mfio_pci::ModelInterrupts::new(cfg.msix_vectors),
            cfg,
        }
    }

    /// Records a driver bug; the model panics with it after releasing its lock when
    /// `panic_on_violation` is set.
    pub fn violation(&mut self, kind: ViolationKind, message: String) {
        tracing::error!(?kind, "NVMe model: driver bug: {message}");
        if self.cfg.panic_on_violation && self.pending_panic.is_none() {
            self.pending_panic = Some(message.clone());
        }
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation { kind, message });
        }
    }

    fn dma_allowed(&mut self, what: &str, dir: &str, iova: u64, len: usize) -> bool {
        if self.pci.bus_master() {
            return true;
        }
        self.violation(
            ViolationKind::BusMaster,
            format!(
                "{what}: DMA {dir} of {len:#x} bytes at IOVA {iova:#x} with bus mastering \
                 disabled in the PCI command register"
            ),
        );
        false
    }

    /// Device read of `buf.len()` bytes at `iova` (`what` names it in a violation).
    pub fn dma_read(&mut self, iova: u64, buf: &mut [u8], what: &str) -> Result<(), DmaFailed> {
        if !self.dma_allowed(what, "read", iova, buf.len()) {
            return Err(DmaFailed);
        }
        let r = self.dma.read(Iova(iova), buf);
        self.dma_result(r, what)
    }

    /// Device read of `N` little-endian u64s at `iova` (a fixed-size entry, such as an SQE).
    pub fn dma_read_le64s<const N: usize>(
        &mut self,
        iova: u64,
        what: &str,
    ) -> Result<[u64; N], DmaFailed> {
        if !self.dma_allowed(what, "read", iova, N * 8) {
            return Err(DmaFailed);
        }
        let r = self.dma.read_le64s::<N>(Iova(iova));
        let mut out = [0; N];
        self.dma_result(r.map(|a| out = a), what)?;
        Ok(out)
    }

    /// Device write of `buf` at `iova`.
    pub fn dma_write(&mut self, iova: u64, buf: &[u8], what: &str) -> Result<(), DmaFailed> {
        if !self.dma_allowed(what, "write", iova, buf.len()) {
            return Err(DmaFailed);
        }
        let r = self.dma.write(Iova(iova), buf);
        self.dma_result(r, what)
    }

    /// Device write of `body` then `last` (see [`DeviceMemory::write_then`]).
    pub fn dma_write_then(
        &mut self,
        iova: u64,
        body: &[u8],
        last: &[u8],
        what: &str,
    ) -> Result<(), DmaFailed> {
        if !self.dma_allowed(what, "write", iova, body.len() + last.len()) {
            return Err(DmaFailed);
        }
        let r = self.dma.write_then(Iova(iova), body, last);
        self.dma_result(r, what)
    }

    /// Checks that the device could reach `[iova, iova + len)` without touching it (null I/O).
    pub fn dma_check(&mut self, iova: u64, len: usize, what: &str) -> Result<(), DmaFailed> {
        if !self.dma_allowed(what, "access", iova, len) {
            return Err(DmaFailed);
        }
        if len == 0 || self.dma.is_mapped(Iova(iova), len) {
            return Ok(());
        }
        let f = mfio_dma::DmaFault { iova: Iova(iova), len, kind: "access" };
        self.dma_result(Err(f), what)
    }

    fn dma_result(
        &mut self,
        r: Result<(), mfio_dma::DmaFault>,
        what: &str,
    ) -> Result<(), DmaFailed> {
        r.map_err(|f| {
            self.counters.dma_faults += 1;
            self.violation(ViolationKind::Dma, format!("{what}: {f}"));
            DmaFailed
        })
    }

    pub fn ready(&self) -> bool {
        self.csts & crate::spec::Csts::RDY != 0
    }

    pub fn fatal(&self) -> bool {
        self.csts & crate::spec::Csts::CFS != 0
    }

    /// Controller Fatal Status: nothing more happens until a reset.
    pub fn set_fatal(&mut self) {
        tracing::warn!("NVMe model: controller fatal status set");
        self.csts |= crate::spec::Csts::CFS;
    }

    /// Adds an Error Information log entry (newest first) for a failed command.
    pub fn log_error(&mut self, sqid: u16, cmd: &Command, status: Status, lba: u64) {
        self.error_count += 1;
        let mut e = [0u8; 64];
        e[0..8].copy_from_slice(&self.error_count.to_le_bytes());
        e[8..10].copy_from_slice(&sqid.to_le_bytes());
        e[10..12].copy_from_slice(&cmd.cid.to_le_bytes());
        // The status field as in the CQE (phase tag bit 0 left clear).
        e[12..14].copy_from_slice(&(status.0 << 1).to_le_bytes());
        // Parameter error location: not specified.
        e[14..16].copy_from_slice(&0xffffu16.to_le_bytes());
        e[16..24].copy_from_slice(&lba.to_le_bytes());
        e[24..28].copy_from_slice(&cmd.nsid.to_le_bytes());
        self.error_log.push_front(e);
        self.error_log.truncate(ERROR_LOG_ENTRIES);
    }

    /// Next pseudo-random number (xorshift64): deterministic shuffles.
    pub fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}
