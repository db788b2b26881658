//! A strict in-process NVMe controller behind [`PciDevice`], for tests and benchmarks.
//!
//! It behaves like an NVMe 1.4 controller on PCIe (registers in BAR0, queues and data in host
//! memory) and fails loudly where real hardware would silently corrupt memory:
//! - all DMA goes through a [`CheckingMapper`]: the driver's queues, PRP lists, SGLs and
//!   buffers must come from [`PciDevice::dma`] (the model's [`DmaSpace`]), and the PCI command
//!   register's bus-master bit must be on;
//! - doorbells are checked (queue exists, value in range, SQ tail not passing the head, CQ head
//!   not passing the tail), as is the configuration at CC.EN 0 -> 1 and CID reuse;
//! - a driver bug is recorded as a [`Violation`] and, unless
//!   [`ModelConfig::panic_on_violation`] is off, panics the thread doing the register access
//!   (after the model's lock is released, so the handle stays usable);
//! - rules the spec gives a status for (PRP offsets, SGL descriptors, LBA range, MDTS, queue
//!   creation) complete the command with that status instead.
//!
//! Commands execute when their SQ tail doorbell is written, so CQEs are in memory when
//! `write32` returns (unless [`CompletionMode`] or an [`Injection`] defers them). Admin
//! commands always complete inline and in order.
//!
//! ```
//! use mfio_nvme::model::{ModelConfig, NvmeModel, Injection};
//! let model = NvmeModel::new(ModelConfig::default());
//! let handle = model.clone(); // keep one for injection and introspection
//! handle.inject(Injection::MediaError { nsid: 1, lba: 7 });
//! assert!(handle.violations().is_empty());
//! ```

mod admin;
mod config;
mod hostile;
mod inject;
mod io;
mod namespace;
mod pci;
mod prp;
mod queues;
mod records;
mod registers;
mod shadow;
mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Once, Weak};
use std::time::{Duration, Instant};

use mfio_dma::{CheckingMapper, DmaSpace, ModelGuard, ModelLock};
use mfio_pci::{check_config_access, PciAddress, PciDevice, PciError};

pub use config::{CompletionMode, ModelConfig, NamespaceConfig};
pub use hostile::{Hostile, HostileCounts};
pub use inject::{Injection, QueueSel, Target, Violation, ViolationKind};
pub use pci::{BAR0_SIZE, CLASS_CODE, DEVICE_ID, VENDOR_ID};

use inject::ViolationKind as Kind;

/// What a powered-off controller's namespaces hold: the media a power cut left
/// ([`NvmeModel::power_cut`]), to bring up a new controller on ([`NvmeModel::with_media`]).
#[derive(Clone, Debug)]
pub struct Media {
    namespaces: Vec<namespace::Namespace>,
}
use state::State;

struct Inner {
    /// The device's state, DMA view included: every unmap of the mapper waits for this lock.
    state: ModelLock<State>,
    mapper: Arc<CheckingMapper>,
    dma: Arc<DmaSpace>,
    timer: Once,
}

/// The model controller. Cloning gives another handle to the same controller (an `Arc`), so a
/// test can hand one to the driver and keep one for [`inject`](Self::inject) and the counters.
#[derive(Clone)]
pub struct NvmeModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NvmeModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeModel").finish_non_exhaustive()
    }
}

/// A snapshot of the model's counters. Vectors indexed by opcode have 256 entries; those
/// indexed by queue ID have `max_queues + 1` (index 0 is the admin queue).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Admin commands fetched, by opcode.
    pub admin_commands: Vec<u64>,
    /// I/O commands fetched, by opcode.
    pub io_commands: Vec<u64>,
    /// SQ tail doorbell writes, by queue ID.
    pub sq_doorbells: Vec<u64>,
    /// CQ head doorbell writes, by queue ID.
    pub cq_doorbells: Vec<u64>,
    /// Commands fetched by the last SQ tail doorbell write of each queue.
    pub last_batch: Vec<u32>,
    /// Most commands fetched by one SQ tail doorbell write of each queue.
    pub max_batch: Vec<u32>,
    /// CQEs written to completion queues (bogus-CID ones included).
    pub completions_posted: u64,
    /// CQEs dropped by [`Injection::LoseCompletion`].
    pub completions_lost: u64,
    /// Bogus CQEs posted by [`Injection::BadCid`].
    pub bad_cids_posted: u64,
    /// CQEs that had to wait because their CQ was full.
    pub cq_full_holds: u64,
    /// Doorbell writes ignored because the controller had failed (CSTS.CFS).
    pub ignored_doorbells: u64,
    /// CQ head updates picked up from the shadow doorbell page (no register write).
    pub shadow_heads: u64,
    /// DMA accesses outside the mapped ranges.
    pub dma_faults: u64,
    /// Writes with Force Unit Access (CDW12 bit 30).
    pub fua_writes: u64,
    /// Write Zeroes commands that allowed deallocation (DEAC).
    pub deac_zeroes: u64,
}

impl NvmeModel {
    /// A controller as `config` describes it, disabled (CC.EN = 0), with bus mastering off.
    ///
    /// # Panics
    /// On an impossible configuration (an LBA size other than 512 or 4096, an empty
    /// namespace, `max_queues` outside 1..=1535).
    pub fn new(config: ModelConfig) -> NvmeModel {
        config.validate();
        let mapper = Arc::new(if config.scattered_dma {
            CheckingMapper::scattered()
        } else {
            CheckingMapper::new()
        });
        let dma = DmaSpace::new(mapper.clone());
        let timed = match config.completion {
            CompletionMode::Timed { .. } => true,
            CompletionMode::Deferred { .. } => config.deferred_timeout.is_some(),
            _ => false,
        };
        let state = mapper.model_lock(|view| State::new(config, view));
        let model = NvmeModel { inner: Arc::new(Inner { state, mapper, dma, timer: Once::new() }) };
        if timed {
            model.start_timer();
        }
        model
    }

    /// Starts the timer thread (once): for timed completions, and to release deferred commands
    /// a driver has stopped ringing for. Models that need neither have no thread, so a
    /// benchmark's model costs nothing between doorbells.
    fn start_timer(&self) {
        self.inner.timer.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            std::thread::Builder::new()
                .name("nvme-model-timer".into())
                .spawn(move || timer(weak))
                .expect("spawning the NVMe model's timer thread");
        });
    }

    fn lock(&self) -> ModelGuard<'_, State> {
        // A violation panics after the lock is released, but a panic elsewhere (a test's
        // assertion inside a closure) must not make every later access panic too: the lock
        // takes a poisoned state over.
        self.inner.state.lock()
    }

    /// Runs `f` on the state, then panics with the first new violation if configured to.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.lock();
        let r = f(&mut st);
        let msg = st.pending_panic.take();
        drop(st);
        if let Some(m) = msg {
            panic!("NVMe model: driver bug: {m}");
        }
        r
    }

    /// The checking mapper behind [`PciDevice::dma`] (its fault count, its mappings).
    pub fn mapper(&self) -> &Arc<CheckingMapper> {
        &self.inner.mapper
    }

    /// The configuration.
    pub fn config(&self) -> ModelConfig {
        self.lock().cfg.clone()
    }

    /// Injects an error (see [`Injection`] for which are one-shot).
    pub fn inject(&self, injection: Injection) {
        if matches!(injection, Injection::Delay { .. }) && self.config().deferred_timeout.is_some()
        {
            self.start_timer();
        }
        self.with(|st| match injection {
            Injection::MediaError { nsid, lba } => {
                st.media_errors.insert((nsid, lba));
            }
            Injection::Fatal => st.set_fatal(),
            other => st.injections.push(other),
        })
    }

    /// Makes the controller hostile (`Some`) or honest again (`None`): I/O completion entries
    /// are corrupted as [`Hostile`] says. See the `hostile` module for what it does and why
    /// tests that use it turn `panic_on_violation` off.
    pub fn set_hostile(&self, hostile: Option<Hostile>) {
        self.with(|st| st.hostile = hostile.map(hostile::HostileState::new));
    }

    /// What the hostile controller has done since [`NvmeModel::set_hostile`].
    pub fn hostile_counts(&self) -> HostileCounts {
        self.with(|st| st.hostile.as_ref().map(|h| h.counts).unwrap_or_default())
    }

    /// Removes every injection not yet used, media errors included (a failed controller
    /// stays failed until reset; held commands stay held until released).
    pub fn clear_injections(&self) {
        self.with(|st| {
            st.injections.clear();
            st.media_errors.clear();
        })
    }

    /// Executes every command the model is holding (deferred, delayed or held) and posts their
    /// CQEs now, ending any [`Injection::Hold`]. Returns how many commands ran. Does nothing
    /// (returns 0) while the controller is failed or disabled.
    pub fn release_held(&self) -> usize {
        self.with(|st| if st.ready() && !st.fatal() { st.release_held() } else { 0 })
    }

    /// While `stuck`, the controller ignores CC.EN 1 -> 0, as a hung controller does: CSTS.RDY
    /// stays 1 and commands it holds still execute (and DMA, if bus mastering is on).
    /// Unsticking it carries out a disable written meanwhile.
    pub fn set_stuck_enabled(&self, stuck: bool) {
        self.with(|st| {
            st.stuck_enabled = stuck;
            if !stuck && st.ready() && st.cc & 1 == 0 {
                st.reset();
            }
        })
    }

    /// Hot-removes the controller, as `device_del` or a sysfs remove does under VFIO: from
    /// now on it is gone from the bus (registers read all ones, writes land nowhere, config
    /// space fails with `PciError::Gone`), processes and completes nothing it holds, and does
    /// no DMA; `is_removed` says so, and every MSI-X eventfd is kicked once, as the VFIO layer
    /// does on the kernel's request, so a queue asleep on its interrupt looks.
    pub fn remove(&self) {
        self.with(|st| {
            st.removed = true;
            st.irq.kick_all();
        })
    }

    /// Masks or unmasks MSI-X vector `vector`, as a write to its MSI-X table entry would: a
    /// masked vector's messages wait in its pending bit and are sent on unmasking.
    pub fn mask_vector(&self, vector: u16, masked: bool) {
        self.with(|st| st.irq.set_masked(vector, masked))
    }

    /// While `lose`, every MSI-X message is lost (not sent, not pending), as on a platform
    /// whose interrupt routing is broken: a driver must notice and poll.
    pub fn lose_interrupts(&self, lose: bool) {
        self.with(|st| st.irq.set_lose(lose))
    }

    /// MSI-X messages sent on `vector` so far.
    pub fn interrupts_raised(&self, vector: u16) -> u64 {
        self.lock().irq.raised(vector)
    }

    /// Whether bus mastering is on in the PCI command register (with it off the model does no
    /// DMA, and flags every attempt).
    pub fn bus_master(&self) -> bool {
        self.lock().pci.bus_master()
    }

    /// Commands fetched but not yet executed (deferred, delayed, held).
    pub fn pending_commands(&self) -> usize {
        self.lock().pending.len()
    }

    /// CQEs waiting for room in their completion queues.
    pub fn held_completions(&self) -> usize {
        self.lock().cqs.iter().flatten().map(|cq| cq.backlog.len()).sum()
    }

    /// Every driver bug caught so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ModelStats {
        self.lock().counters.clone()
    }

    /// I/O commands with `opcode` fetched so far.
    pub fn io_commands(&self, opcode: u8) -> u64 {
        self.lock().counters.io_commands[usize::from(opcode)]
    }

    /// Admin commands with `opcode` fetched so far.
    pub fn admin_commands(&self, opcode: u8) -> u64 {
        self.lock().counters.admin_commands[usize::from(opcode)]
    }

    /// SQ tail doorbell writes to queue `qid` so far.
    pub fn sq_doorbells(&self, qid: u16) -> u64 {
        self.lock().counters.sq_doorbells.get(usize::from(qid)).copied().unwrap_or(0)
    }

    /// CQ head doorbell writes to queue `qid` so far.
    pub fn cq_doorbells(&self, qid: u16) -> u64 {
        self.lock().counters.cq_doorbells.get(usize::from(qid)).copied().unwrap_or(0)
    }

    /// Whether CSTS.CFS is set.
    pub fn is_fatal(&self) -> bool {
        self.lock().fatal()
    }

    /// Reads `blocks` blocks of namespace `nsid` from `lba`, bypassing the queues (to check
    /// what a driver wrote). Panics on a bad NSID or range.
    pub fn read_blocks(&self, nsid: u32, lba: u64, blocks: u64) -> Vec<u8> {
        let st = self.lock();
        let i = st.ns_index(nsid).expect("read_blocks: no such namespace");
        let ns = &st.namespaces[i];
        assert!(ns.in_range(lba, blocks), "read_blocks: range past the end");
        let mut out = vec![0u8; (blocks * u64::from(ns.lba_size)) as usize];
        ns.read(lba * u64::from(ns.lba_size), &mut out);
        out
    }

    /// Writes whole blocks of namespace `nsid` at `lba`, bypassing the queues (to prepare data
    /// for a driver to read). Panics on a bad NSID, range or length.
    pub fn write_blocks(&self, nsid: u32, lba: u64, data: &[u8]) {
        let mut st = self.lock();
        let i = st.ns_index(nsid).expect("write_blocks: no such namespace");
        let ns = &mut st.namespaces[i];
        let size = u64::from(ns.lba_size);
        assert!(data.len() as u64 % size == 0, "write_blocks: not whole blocks");
        assert!(ns.in_range(lba, data.len() as u64 / size), "write_blocks: range past the end");
        ns.write(lba * size, data, namespace::Dest::Media);
    }

    /// Blocks written (acknowledged) but still only in the volatile write cache, over every
    /// namespace: what a power cut now could lose.
    pub fn cached_blocks(&self) -> usize {
        self.lock().namespaces.iter().map(|ns| ns.cached_blocks()).sum()
    }

    /// Cuts the power: of the blocks in the volatile write cache (written and acknowledged,
    /// not yet flushed or written with FUA), those `keep(nsid, lba)` picks reach the media,
    /// the rest are lost, as after a real power cut the device may have written back any
    /// subset, in any order (a block is atomic; a multi-block write may tear). The controller
    /// then fails (CSTS.CFS), so the driver still holding it gets errors, not a device that
    /// goes on as if nothing happened. Returns the media, to power on again with
    /// [`NvmeModel::with_media`].
    pub fn power_cut(&self, mut keep: impl FnMut(u32, u64) -> bool) -> Media {
        self.with(|st| {
            for (i, ns) in st.namespaces.iter_mut().enumerate() {
                let nsid = i as u32 + 1;
                ns.power_cut(&mut |lba| keep(nsid, lba));
            }
            st.set_fatal();
            Media { namespaces: st.namespaces.clone() }
        })
    }

    /// A controller as `config` describes it, over `media` from a [`power_cut`](Self::power_cut)
    /// (the same namespaces, as a disk moved to a new machine keeps its data).
    ///
    /// # Panics
    /// If `config`'s namespaces differ from the media's in number, size or block size.
    pub fn with_media(config: ModelConfig, media: Media) -> NvmeModel {
        let same = config.namespaces.len() == media.namespaces.len()
            && config
                .namespaces
                .iter()
                .zip(&media.namespaces)
                .all(|(c, m)| c.blocks == m.blocks && c.lba_size == m.lba_size);
        assert!(same, "NVMe model: the media's namespaces differ from the configuration's");
        let model = NvmeModel::new(config);
        model.lock().namespaces = media.namespaces;
        model
    }

    /// Checks a BAR access: BAR0, naturally aligned, inside the BAR (a driver bug otherwise,
    /// as the `PciDevice` contract says).
    fn check_bar(&self, bar: u8, offset: u64, width: u64) {
        assert!(
            bar == 0 && offset % width == 0 && offset + width <= BAR0_SIZE,
            "NVMe model: driver bug: {}-bit access to BAR{bar} offset {offset:#x} (BAR0 is \
             {BAR0_SIZE:#x} bytes; accesses must be naturally aligned)",
            width * 8
        );
    }

    fn narrow_access(&self, bar: u8, offset: u64, width: u64) {
        self.check_bar(bar, offset, width);
        self.with(|st| {
            st.violation(
                Kind::Register,
                format!(
                    "{}-bit access to NVMe register {offset:#x}: registers are 32 or 64 bits wide",
                    width * 8
                ),
            )
        });
    }

    fn wide_register(&self, offset: u64) -> bool {
        use crate::spec::regs::{ACQ, ASQ, CAP};
        matches!(offset, CAP | ASQ | ACQ)
    }
}

/// The timer thread of [`CompletionMode::Timed`]: executes due commands until the last handle
/// to the model is dropped. A driver bug it finds (a stray DMA in a data transfer) panics the
/// next register access instead, since panicking here would only kill this thread.
fn timer(model: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_micros(100));
        let Some(inner) = model.upgrade() else { return };
        let mut st = inner.state.lock();
        if !st.removed {
            st.release_due(Instant::now());
        }
    }
}

impl PciDevice for NvmeModel {
    fn address(&self) -> PciAddress {
        PciAddress { domain: 0, bus: 0, device: 4, function: 0 }
    }

    fn bar_len(&self, bar: u8) -> Option<u64> {
        (bar == 0).then_some(BAR0_SIZE)
    }

    fn read8(&self, bar: u8, offset: u64) -> u8 {
        self.narrow_access(bar, offset, 1);
        0
    }

    fn write8(&self, bar: u8, offset: u64, _value: u8) {
        self.narrow_access(bar, offset, 1);
    }

    fn read16(&self, bar: u8, offset: u64) -> u16 {
        self.narrow_access(bar, offset, 2);
        0
    }

    fn write16(&self, bar: u8, offset: u64, _value: u16) {
        self.narrow_access(bar, offset, 2);
    }

    fn read32(&self, bar: u8, offset: u64) -> u32 {
        self.check_bar(bar, offset, 4);
        self.with(|st| if st.removed { u32::MAX } else { st.read_reg32(offset) })
    }

    fn write32(&self, bar: u8, offset: u64, value: u32) {
        self.check_bar(bar, offset, 4);
        self.with(|st| {
            if !st.removed {
                st.write_reg32(offset, value)
            }
        })
    }

    fn read64(&self, bar: u8, offset: u64) -> u64 {
        self.check_bar(bar, offset, 8);
        self.with(|st| {
            if !self.wide_register(offset) {
                st.violation(
                    Kind::Register,
                    format!("64-bit read of NVMe register {offset:#x}, which is 32 bits wide"),
                );
            }
            if st.removed {
                return u64::MAX;
            }
            u64::from(st.read_reg32(offset)) | u64::from(st.read_reg32(offset + 4)) << 32
        })
    }

    fn write64(&self, bar: u8, offset: u64, value: u64) {
        self.check_bar(bar, offset, 8);
        self.with(|st| {
            if !self.wide_register(offset) {
                st.violation(
                    Kind::Register,
                    format!("64-bit write of NVMe register {offset:#x}, which is 32 bits wide"),
                );
                return;
            }
            if st.removed {
                return;
            }
            st.write_reg32(offset, value as u32);
            st.write_reg32(offset + 4, (value >> 32) as u32);
        })
    }

    fn config_read(&self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        check_config_access(offset, buf.len())?;
        let st = self.lock();
        if st.removed {
            return Err(PciError::Gone(self.address()));
        }
        st.pci.read(offset, buf);
        Ok(())
    }

    fn config_write(&self, offset: u16, buf: &[u8]) -> Result<(), PciError> {
        check_config_access(offset, buf.len())?;
        let mut st = self.lock();
        if st.removed {
            return Err(PciError::Gone(self.address()));
        }
        st.pci.write(offset, buf);
        Ok(())
    }

    fn is_removed(&self) -> bool {
        self.lock().removed
    }

    /// A removed model does no DMA any more (the unplugged function is gone from the bus).
    fn stop_dma(&self) -> bool {
        self.is_removed() || mfio_pci::stop_dma_by_command(self)
    }

    fn dma(&self) -> &Arc<DmaSpace> {
        &self.inner.dma
    }

    fn msix_count(&self) -> u32 {
        self.lock().irq.supported()
    }

    fn enable_msix(&self, count: u32) -> Result<Vec<mfio_pci::EventFd>, PciError> {
        let addr = self.address();
        self.with(|st| st.irq.enable(addr, count))
    }

    fn disable_msix(&self) -> Result<(), PciError> {
        self.with(|st| st.irq.disable());
        Ok(())
    }

    /// Function level reset: the controller resets and its registers return to their initial
    /// values (bus mastering off); namespace data, injections and counters stay.
    fn reset(&self) -> Result<(), PciError> {
        self.with(|st| {
            st.reset();
            st.cc = 0;
            st.aqa = 0;
            st.asq = 0;
            st.acq = 0;
            st.intms = 0;
            st.pci = pci::ConfigSpace::new();
        });
        Ok(())
    }
}
