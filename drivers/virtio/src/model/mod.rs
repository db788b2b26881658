//! A strict in-process virtio-blk device behind [`PciDevice`], for tests and benchmarks.
//!
//! It has the registers of a modern virtio-pci device (vendor capabilities in config space,
//! common configuration, notify, ISR and device configuration in BAR 4, as QEMU lays them
//! out) and reaches memory only through a [`CheckingMapper`], so an IOVA the driver never
//! mapped is a fault, never a stray write. It offers RING_PACKED by default (a driver may
//! refuse it), so it runs split and packed virtqueues alike. It fetches what a queue made
//! available when the driver notifies it (or, when held, on
//! [`release`](VirtioBlkModel::release)) and completes it then or later, in ring order or not
//! (see [`CompletionMode`]), and checks as it goes: register widths and the order of the
//! status handshake, queue setup, ring indexes, descriptor ids, chains and their flags (loops,
//! NEXT with INDIRECT, nested indirect tables, zero lengths, readable after writable), packed
//! wrap counters, buffer IDs and event suppression (see `packed.rs`), request framing and
//! lengths, bus mastering.
//!
//! A violation is driver misuse: by default the model panics with a message naming it (the
//! test fails loudly); with [`OnViolation::NeedsReset`] it records it, sets
//! DEVICE_NEEDS_RESET and stops, as a real device may.
//!
//! Error injection: IOERR on chosen sectors, UNSUPP for chosen request types, and
//! DEVICE_NEEDS_RESET on demand. Null mode skips the data (no storage): for benchmarks.

mod chain;
mod options;
mod packed;
mod process;
mod registers;
mod requests;
mod split;

pub use options::{CompletionMode, ModelOptions, OnViolation};

use crate::spec::{blk, cap, common, feature, ring, status};
use chain::Fetched;
use mfio_dma::{CheckingMapper, DeviceMemory, DmaFault, DmaSpace, DmaView, ModelLock};
use mfio_pci::{check_config_access, PciAddress, PciDevice, PciError, CAP_ID_VENDOR};
use process::QueueWork;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// The BAR holding every virtio-pci structure.
pub const BAR: u8 = 4;
const BAR_LEN: u64 = 0x4000;
const COMMON_AT: u64 = 0x0000;
const ISR_AT: u64 = 0x1000;
const DEVICE_AT: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x100;
const NOTIFY_AT: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u64 = 4;

/// A queue's registers and ring positions.
#[derive(Copy, Clone, Debug, Default)]
struct MQueue {
    max: u16,
    size: u16,
    enabled: bool,
    /// Descriptor Area: split descriptor table / packed descriptor ring.
    desc: u64,
    /// Driver Area: split available ring / packed driver event suppression.
    driver: u64,
    /// Device Area: split used ring / packed device event suppression.
    device: u64,
    /// Split: next available index to fetch, next used index to write.
    last_avail: u16,
    used_idx: u16,
    /// Packed: next position to fetch and its lap's wrap counter; next position to write a
    /// used descriptor to and its wrap counter.
    avail_pos: u16,
    avail_wrap: bool,
    used_pos: u16,
    used_wrap: bool,
    /// The MSI-X vector for used buffer notifications (`None`: NO_VECTOR).
    vector: Option<u16>,
}

struct State {
    config: [u8; 256],
    status: u8,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    queues: Vec<MQueue>,
    device_cfg: Vec<u8>,
    disk: Vec<u8>,
    ioerr: Vec<Range<u64>>,
    unsupported: Vec<u32>,
    hold: bool,
    /// Stopped after a violation or an injected needs-reset, until the next reset.
    stopped: bool,
    /// Hot-removed ([`VirtioBlkModel::remove`]): gone from the bus for good.
    removed: bool,
    notifies: u64,
    requests: u64,
    indirect_requests: u64,
    resets: u64,
    violations: Vec<String>,
    /// Per queue: fetched requests and ring bookkeeping.
    work: Vec<QueueWork>,
    /// Fetched entries not in use (their buffer lists keep their capacity).
    spare: Vec<Fetched>,
    /// The requests being completed (kept for its capacity).
    batch: Vec<Fetched>,
    /// Shuffle generator state (0: not seeded yet).
    rng: u64,
    /// MSI-X vectors and the configuration change vector.
    irq: mfio_pci::ModelInterrupts,
    config_vector: Option<u16>,
}

struct Inner {
    opts: ModelOptions,
    mapper: Arc<CheckingMapper>,
    /// The device's DMA: a lock-free view of the mapper, used under the state lock (every
    /// unmap of the mapper waits for this lock too).
    dma: ModelLock<DmaView>,
    space: Arc<DmaSpace>,
    state: Mutex<State>,
}

/// The strict in-process virtio-blk device. Cheap to clone: clones share the device, so a
/// test keeps one to inject errors into the one the driver owns.
#[derive(Clone)]
pub struct VirtioBlkModel {
    inner: Arc<Inner>,
}

/// A rule broken by the driver, found while processing.
pub(crate) struct Violation(pub String);

type R<T> = Result<T, Violation>;

/// A violation whose message is built out of line (`why` runs only when a rule is broken), so
/// the checks on the hot path are a compare and a branch.
#[cold]
#[inline(never)]
fn cold(why: impl FnOnce() -> String) -> Violation {
    Violation(why())
}

fn dma(e: DmaFault) -> Violation {
    Violation(format!("DMA fault: {e}"))
}

impl VirtioBlkModel {
    /// A model with `opts`.
    pub fn new(opts: ModelOptions) -> Self {
        let mapper = Arc::new(CheckingMapper::new());
        let space = DmaSpace::new(mapper.clone());
        let mut config = [0u8; 256];
        config[0..2].copy_from_slice(&0x1af4u16.to_le_bytes());
        config[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
        config[mfio_pci::CONFIG_STATUS as usize] = mfio_pci::STATUS_CAP_LIST as u8;
        config[mfio_pci::CONFIG_CAP_PTR as usize] = 0x40;
        let caps = [
            (0x40usize, cap::COMMON_CFG, COMMON_AT, common::LEN, 0x50u8),
            (0x50, cap::ISR_CFG, ISR_AT, 4, 0x60),
            (0x60, cap::DEVICE_CFG, DEVICE_AT, DEVICE_LEN, 0x70),
            (0x70, cap::NOTIFY_CFG, NOTIFY_AT, NOTIFY_MULTIPLIER * u64::from(opts.num_queues), 0),
        ];
        for (at, ty, off, len, next) in caps {
            config[at] = CAP_ID_VENDOR;
            config[at + 1] = next;
            config[at + 2] = if ty == cap::NOTIFY_CFG { 20 } else { 16 };
            config[at + 3] = ty;
            config[at + 4] = BAR;
            config[at + 8..at + 12].copy_from_slice(&(off as u32).to_le_bytes());
            config[at + 12..at + 16].copy_from_slice(&(len as u32).to_le_bytes());
            if ty == cap::NOTIFY_CFG {
                config[at + 16..at + 20].copy_from_slice(&(NOTIFY_MULTIPLIER as u32).to_le_bytes());
            }
        }
        let mut d = vec![0u8; DEVICE_LEN as usize];
        let put = |d: &mut Vec<u8>, off: u64, bytes: &[u8]| {
            d[off as usize..off as usize + bytes.len()].copy_from_slice(bytes)
        };
        put(&mut d, blk::CFG_CAPACITY, &opts.capacity_sectors.to_le_bytes());
        put(&mut d, blk::CFG_SIZE_MAX, &opts.size_max.to_le_bytes());
        put(&mut d, blk::CFG_SEG_MAX, &opts.seg_max.to_le_bytes());
        put(&mut d, blk::CFG_BLK_SIZE, &opts.blk_size.to_le_bytes());
        put(&mut d, blk::CFG_NUM_QUEUES, &opts.num_queues.to_le_bytes());
        put(&mut d, blk::CFG_MAX_DISCARD_SECTORS, &opts.max_range_sectors.to_le_bytes());
        put(&mut d, blk::CFG_MAX_DISCARD_SEG, &1u32.to_le_bytes());
        put(&mut d, blk::CFG_DISCARD_SECTOR_ALIGNMENT, &1u32.to_le_bytes());
        put(&mut d, blk::CFG_MAX_WRITE_ZEROES_SECTORS, &opts.max_range_sectors.to_le_bytes());
        put(&mut d, blk::CFG_MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
        put(&mut d, blk::CFG_WRITE_ZEROES_MAY_UNMAP, &[1]);
        let disk =
            if opts.null { Vec::new() } else { vec![0u8; (opts.capacity_sectors * 512) as usize] };
        let queues = (0..opts.num_queues)
            .map(|_| MQueue { max: opts.queue_size_max, ..MQueue::default() })
            .collect();
        let work = (0..opts.num_queues).map(|_| QueueWork::default()).collect();
        let state = State {
            config,
            // As QEMU's device reads after the kernel's driver was unbound: not reset yet.
            status: status::ACKNOWLEDGE,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues,
            device_cfg: d,
            disk,
            ioerr: Vec::new(),
            unsupported: Vec::new(),
            hold: false,
            stopped: false,
            removed: false,
            notifies: 0,
            requests: 0,
            indirect_requests: 0,
            resets: 0,
            violations: Vec::new(),
            work,
            spare: Vec::new(),
            batch: Vec::new(),
            rng: 0,
            irq: mfio_pci::ModelInterrupts::new(opts.msix_vectors),
            config_vector: None,
        };
        Self {
            inner: Arc::new(Inner {
                opts,
                dma: mapper.model_lock(|view| view),
                mapper,
                space,
                state: Mutex::new(state),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mapper the model reaches memory through (fault counts, mappings).
    pub fn mapper(&self) -> &Arc<CheckingMapper> {
        &self.inner.mapper
    }

    /// Requests touching any sector in `sectors` fail with IOERR.
    pub fn inject_io_error(&self, sectors: Range<u64>) {
        self.state().ioerr.push(sectors);
    }

    /// Requests of type `req_type` (`spec::blk::T_*`) fail with UNSUPP.
    pub fn inject_unsupported(&self, req_type: u32) {
        self.state().unsupported.push(req_type);
    }

    /// Masks or unmasks MSI-X vector `vector` (its MSI-X table entry's mask): a masked
    /// vector's messages wait in its pending bit and are sent on unmasking.
    pub fn mask_vector(&self, vector: u16, masked: bool) {
        self.state().irq.set_masked(vector, masked)
    }

    /// While `lose`, every MSI-X message is lost (neither sent nor pending).
    pub fn lose_interrupts(&self, lose: bool) {
        self.state().irq.set_lose(lose)
    }

    /// MSI-X messages sent on `vector` so far.
    pub fn interrupts_raised(&self, vector: u16) -> u64 {
        self.state().irq.raised(vector)
    }

    /// Removes every injected IOERR and UNSUPP.
    pub fn clear_injections(&self) {
        let mut st = self.state();
        st.ioerr.clear();
        st.unsupported.clear();
    }

    /// Sets DEVICE_NEEDS_RESET and stops processing until the driver resets the device.
    pub fn inject_needs_reset(&self) {
        let mut st = self.state();
        st.status |= status::DEVICE_NEEDS_RESET;
        st.stopped = true;
    }

    /// Hot-removes the device, as `device_del` or a sysfs remove does under VFIO: from now on
    /// its registers read all ones and writes land nowhere, config space fails with
    /// `PciError::Gone`, nothing it holds is processed or completed, and it does no DMA;
    /// `is_removed` says so, and every MSI-X eventfd is kicked once, as the VFIO layer does on
    /// the kernel's request, so a queue asleep on its interrupt looks.
    pub fn remove(&self) {
        let mut st = self.state();
        st.removed = true;
        st.stopped = true;
        st.irq.kick_all();
    }

    /// While held, notifications are counted but not acted on (the device looks busy).
    pub fn set_hold(&self, hold: bool) {
        self.state().hold = hold;
    }

    /// Processes every enabled queue now: fetches what is available and completes
    /// everything fetched, deferred requests included (after [`set_hold`](Self::set_hold), or
    /// to let [`CompletionMode::Deferred`] requests go).
    pub fn release(&self) {
        let mut st = self.state();
        for q in 0..st.queues.len() {
            self.process(&mut st, q, true);
        }
    }

    /// Starts a thread that calls [`release`](Self::release) every `period` until the last
    /// other handle to the model is dropped: completions that arrive on their own, from
    /// another thread, as a real device's do.
    pub fn release_in_background(&self, period: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        std::thread::spawn(move || {
            while let Some(inner) = weak.upgrade() {
                VirtioBlkModel { inner }.release();
                std::thread::sleep(period);
            }
        });
    }

    /// Writes a used entry naming buffer `id` on queue `q`, as a buggy device would. On a
    /// split ring the driver must count it and ignore it; on a packed ring it cannot know how
    /// far to skip, so it must reset the device.
    pub fn inject_stray_completion(&self, q: u16, id: u32) {
        let mut st = self.state();
        let m = self.inner.dma.lock();
        let q = usize::from(q);
        let r = if st.driver_features & feature::RING_PACKED != 0 {
            packed::inject_stray(&mut st, &m, q, id)
        } else {
            split::inject_stray(&mut st, &m, q, id)
        };
        assert!(r.is_ok(), "the rings of queue {q} are mapped");
    }

    /// Notify register writes so far.
    pub fn notifies(&self) -> u64 {
        self.state().notifies
    }

    /// Requests processed so far, and how many came in indirect tables.
    pub fn requests(&self) -> (u64, u64) {
        let st = self.state();
        (st.requests, st.indirect_requests)
    }

    /// Device resets (status 0 writes) so far.
    pub fn resets(&self) -> u64 {
        self.state().resets
    }

    /// The device status.
    pub fn status(&self) -> u8 {
        self.state().status
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.state().driver_features
    }

    /// Violations recorded (with [`OnViolation::NeedsReset`]).
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// Reads the backing store directly (not in null mode).
    pub fn read_disk(&self, pos: u64, buf: &mut [u8]) {
        let st = self.state();
        buf.copy_from_slice(&st.disk[pos as usize..pos as usize + buf.len()]);
    }

    fn violation(&self, st: &mut State, msg: String) {
        if self.inner.opts.on_violation == OnViolation::Panic {
            panic!("virtio-blk model: driver violated the virtio spec: {msg}");
        }
        tracing::error!("virtio-blk model: {msg}; setting DEVICE_NEEDS_RESET");
        st.violations.push(msg);
        st.status |= status::DEVICE_NEEDS_RESET;
        st.stopped = true;
    }

    fn reset(&self, st: &mut State) {
        st.status = 0;
        st.driver_features = 0;
        st.device_feature_select = 0;
        st.driver_feature_select = 0;
        st.queue_select = 0;
        for q in &mut st.queues {
            *q = MQueue { max: q.max, ..MQueue::default() };
        }
        let State { work, spare, .. } = st;
        for w in work {
            w.reset(spare);
        }
        st.stopped = false;
        st.resets += 1;
    }
}

impl PciDevice for VirtioBlkModel {
    fn address(&self) -> PciAddress {
        "0000:00:05.0".parse().expect("a valid address")
    }
    fn bar_len(&self, bar: u8) -> Option<u64> {
        (bar == BAR).then_some(BAR_LEN)
    }
    fn read8(&self, bar: u8, offset: u64) -> u8 {
        self.mmio_read(bar, offset, 1) as u8
    }
    fn write8(&self, bar: u8, offset: u64, value: u8) {
        self.mmio_write(bar, offset, 1, u64::from(value))
    }
    fn read16(&self, bar: u8, offset: u64) -> u16 {
        self.mmio_read(bar, offset, 2) as u16
    }
    fn write16(&self, bar: u8, offset: u64, value: u16) {
        self.mmio_write(bar, offset, 2, u64::from(value))
    }
    fn read32(&self, bar: u8, offset: u64) -> u32 {
        self.mmio_read(bar, offset, 4) as u32
    }
    fn write32(&self, bar: u8, offset: u64, value: u32) {
        self.mmio_write(bar, offset, 4, u64::from(value))
    }
    fn read64(&self, bar: u8, offset: u64) -> u64 {
        self.mmio_read(bar, offset, 8)
    }
    fn write64(&self, bar: u8, offset: u64, value: u64) {
        self.mmio_write(bar, offset, 8, value)
    }
    fn config_read(&self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        check_config_access(offset, buf.len())?;
        let st = self.state();
        if st.removed {
            return Err(PciError::Gone(self.address()));
        }
        let o = usize::from(offset);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = st.config.get(o + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn config_write(&self, offset: u16, buf: &[u8]) -> Result<(), PciError> {
        check_config_access(offset, buf.len())?;
        let mut st = self.state();
        if st.removed {
            return Err(PciError::Gone(self.address()));
        }
        // Only the command register is writable.
        for (i, &b) in buf.iter().enumerate() {
            let at = usize::from(offset) + i;
            if (4..6).contains(&at) {
                st.config[at] = b;
            }
        }
        Ok(())
    }
    fn dma(&self) -> &Arc<DmaSpace> {
        &self.inner.space
    }
    fn is_removed(&self) -> bool {
        self.state().removed
    }
    /// A removed model does no DMA any more (the unplugged function is gone from the bus).
    fn stop_dma(&self) -> bool {
        self.is_removed() || mfio_pci::stop_dma_by_command(self)
    }
    fn msix_count(&self) -> u32 {
        self.state().irq.supported()
    }
    fn enable_msix(&self, count: u32) -> Result<Vec<mfio_pci::EventFd>, PciError> {
        let addr = self.address();
        self.state().irq.enable(addr, count)
    }
    fn disable_msix(&self) -> Result<(), PciError> {
        self.state().irq.disable();
        Ok(())
    }
}
