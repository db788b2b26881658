//! An I/O queue pair bound to a namespace: the hot path.
//!
//! `send_io` checks the range, splits at the transfer limit, finds the memory's IOVAs (zero
//! copy) or takes a bounce buffer, builds the PRPs, takes a command slot and writes the SQE:
//! no doorbell, no lock, no system call, no allocation. `poll_backend` rings the SQ doorbell
//! once for the batch, drains the CQ by phase tag, completes each command's segment, and rings
//! the CQ head doorbell once. A command slot owns its segment (and so its memory) until the
//! controller completes it: the device never writes memory given back to the caller.

use crate::controller::Controller;
use crate::error::NvmeError;
use crate::namespace::Namespace;
use crate::options::DataPointer;
use crate::prp::{self, PrpError, PrpList};
use crate::queues::{CompletionQueue, ShadowDoorbells, SubmissionQueue};
use crate::sgl::{self, SglAlignment};
use crate::spec::{self, Command, Completion, PAGE_SIZE};
use mfio::{
    Activity, BlockDevice, Error, ErrorKind, FromDevice, IoBackend, Origin, PacketIo, PacketView,
    ToDevice,
};
use mfio_dma::clock::CycleClock;
use mfio_dma::{DmaPool, PoolSlot, Translator};
use mfio_pci::{CompletionMode, EventFd, PciDevice, Verdict, Wakeup, WakeupStats};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

mod commands;
mod data_pointer;
mod ids;
mod recovery;
mod slots;

use data_pointer::*;
use slots::*;

/// Counters of an I/O queue.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Commands submitted.
    pub submitted: u64,
    /// Commands completed.
    pub completed: u64,
    /// SQ tail doorbell writes (one per batch).
    pub sq_doorbells: u64,
    /// CQ head doorbell writes.
    pub cq_doorbells: u64,
    /// Commands whose data went through a bounce buffer.
    pub bounced: u64,
    /// Completions with an unknown or stale command ID (counted, never trusted).
    pub stray_completions: u64,
    /// Commands aborted after their deadline.
    pub timeouts: u64,
    /// Most requests waiting for a slot at once.
    pub max_pending: u64,
    /// Commands whose data was described by an SGL (the rest used PRPs).
    pub sgl: u64,
    /// How the queue waited (all zero for a polled queue).
    pub wakeup: WakeupStats,
}

/// An I/O queue pair on one namespace: an mfio block device at byte offsets.
///
/// Owned by one thread (`Send`, not `Sync`). Reads and writes come from mfio's [`mfio::ReadAt`]
/// and [`mfio::WriteAt`] (async and blocking); flush, write zeroes and deallocate are methods.
pub struct IoQueue<D: PciDevice> {
    ctrl: Arc<Controller<D>>,
    ns: Namespace,
    qid: u16,
    max_transfer: usize,
    bounce_size: usize,
    /// The MSI-X vector its CQ raises (`Some(qid)` when interrupt-driven).
    vector: Option<u16>,
    /// The polling handle: the vector's eventfd.
    handle: Option<i32>,
    inner: RefCell<Inner>,
}

impl<D: PciDevice> IoQueue<D> {
    pub(crate) fn new(
        ctrl: Arc<Controller<D>>,
        ns: Namespace,
        qid: u16,
        mode: CompletionMode,
        irq: Option<EventFd>,
    ) -> Result<Self, NvmeError> {
        use std::os::fd::AsRawFd;
        let vector = irq.as_ref().map(|_| qid);
        let opts = ctrl.options().clone();
        let dev = ctrl.device();
        let space = dev.dma();
        let entries = opts.queue_depth.clamp(2, ctrl.cap().max_queue_entries().min(4096) as u16);
        let (sq, cq) = rings(space, qid, entries, ctrl.cap().dstrd(), ctrl.shadow_doorbells())?;
        let entries = sq.entries();
        let nslots = usize::from(entries - 1);
        let max_transfer = ctrl.max_transfer() / ns.block_size as usize * ns.block_size as usize;
        let bounce_size = (opts.bounce_size.max(PAGE_SIZE) / PAGE_SIZE * PAGE_SIZE)
            .min(max_transfer.next_multiple_of(PAGE_SIZE));
        // Enough list entries for the largest transfer starting at any offset in a page, as
        // PRPs or as SGL descriptors for memory scattered page by page.
        let pieces = max_transfer.div_ceil(PAGE_SIZE) + 1;
        let prp_pages = prp::list_pages_for(pieces).max(sgl::pages_for(pieces));
        let mut prp_pool = DmaPool::new(space, prp_pages * PAGE_SIZE, nslots, PAGE_SIZE)?;
        let bounce_pool =
            DmaPool::new(space, bounce_size, opts.bounce_buffers.clamp(1, nslots), PAGE_SIZE)?;
        ctrl.admin().create_queue_pair(
            dev,
            qid,
            entries,
            sq.iova(),
            cq.iova(),
            vector,
            opts.admin_timeout,
        )?;
        let mut translator = space.translator();
        let mut slots = Vec::with_capacity(nslots);
        for _ in 0..nslots {
            let prp = prp_pool.alloc().expect("the pool has pages for every slot");
            let base = prp_pool.ptr(&prp);
            let prp_iovas = (0..prp_pages)
                .map(|p| {
                    match translator.segments(base.wrapping_add(p * PAGE_SIZE), PAGE_SIZE).next() {
                        Some(Ok(seg)) if seg.len >= PAGE_SIZE => Ok(seg.iova.get()),
                        _ => Err(NvmeError::Invalid("PRP list page is not mapped".into())),
                    }
                })
                .collect::<Result<Box<[u64]>, _>>()?;
            slots.push(Slot {
                io: SlotIo::Free,
                prp,
                prp_iovas,
                bounce: None,
                started_ms: 0,
                aborted: false,
            });
        }
        tracing::debug!(
            qid,
            nsid = ns.nsid,
            entries,
            max_transfer,
            bounce_size,
            "I/O queue created"
        );
        let sgl = SglAlignment::from_sgls(ctrl.identify().sgls);
        let dptr = match opts.data_pointer {
            DataPointer::Auto => DataPointers { prefer_sgl: false, sgl },
            DataPointer::Prp => DataPointers { prefer_sgl: false, sgl: None },
            DataPointer::Sgl => DataPointers { prefer_sgl: true, sgl },
        };
        let epoch = ctrl.epoch();
        let handle = irq.as_ref().map(|fd| fd.as_raw_fd());
        let wakeup = irq.map(|fd| Wakeup::new(mode, fd, format!("nvme I/O queue {qid}")));
        Ok(Self {
            qid,
            max_transfer,
            bounce_size,
            vector,
            handle,
            inner: RefCell::new(Inner {
                sq,
                cq,
                slots,
                ids: ids::SlotIds::new(nslots),
                prp_pool,
                bounce_pool,
                translator,
                dptr,
                pending: VecDeque::with_capacity(4 * nslots),
                stats: QueueStats::default(),
                t0: CycleClock::get().now(),
                clock: CycleClock::get(),
                now_ms: 0,
                polls: 0,
                last_check_ms: 0,
                epoch,
                broken: false,
                wakeup,
                parked: None,
            }),
            ns,
            ctrl,
        })
    }

    /// The namespace this queue reads and writes.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The queue ID on the controller.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The controller.
    pub fn controller(&self) -> &Arc<Controller<D>> {
        &self.ctrl
    }

    /// Largest transfer per command, in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// The counters so far.
    pub fn stats(&self) -> QueueStats {
        let inner = self.inner.borrow();
        QueueStats {
            wakeup: inner.wakeup.as_ref().map(Wakeup::stats).unwrap_or_default(),
            ..inner.stats
        }
    }

    /// How the queue waits for completions now (`Poll` once an interrupt-driven queue has
    /// fallen back to polling).
    pub fn completion_mode(&self) -> CompletionMode {
        self.inner.borrow().wakeup.as_ref().map_or(CompletionMode::Poll, Wakeup::mode)
    }

    /// Commands in flight.
    pub fn in_flight(&self) -> usize {
        let inner = self.inner.borrow();
        inner.ids.in_use()
    }
}

const ORIGIN: Origin = Origin::Nvme;

/// Busy polls between clock reads (see `Inner::now_ms`).
const CLOCK_POLLS: u32 = 1024;

/// The queue's rings. Without huge pages in no-IOMMU mode, memory is contiguous to the device
/// only within a 4 KiB page: then fall back to 64 entries, whose SQ fills exactly one page.
fn rings(
    space: &std::sync::Arc<mfio_dma::DmaSpace>,
    qid: u16,
    entries: u16,
    dstrd: u8,
    shadow: Option<&Arc<ShadowDoorbells>>,
) -> Result<(SubmissionQueue, CompletionQueue), NvmeError> {
    let make = |n| -> Result<_, NvmeError> {
        Ok((
            SubmissionQueue::new(space, qid, n, dstrd, shadow)?,
            CompletionQueue::new(space, qid, n, dstrd, shadow)?,
        ))
    };
    match make(entries) {
        Err(NvmeError::NotContiguous(len)) if entries > 64 => {
            tracing::warn!(qid, len, "queue memory not contiguous: using 64 entries");
            make(64)
        }
        r => r,
    }
}

impl<D: PciDevice> BlockDevice for IoQueue<D> {
    fn block_size(&self) -> u32 {
        self.ns.block_size
    }
    fn capacity(&self) -> u64 {
        self.ns.capacity()
    }
}

impl<D: PciDevice> IoQueue<D> {
    /// A read or a write: range checks, then straight to a slot when nothing is waiting (the
    /// common case), else behind what waits.
    #[inline(always)]
    fn send_rw<P: RwDir>(&self, pos: u64, view: PacketView<P>, cdw12: u32) {
        let Some(view) = mfio::clip(pos, view, self.capacity(), self.ns.block_size, ORIGIN) else {
            return;
        };
        let mut inner = self.inner.borrow_mut();
        if inner.ids.is_idle() {
            // The first command after the queue was idle: the clock, refreshed only by busy
            // polls, may be an idle stretch old, and the command's deadline would start then.
            inner.tick();
            // A device removed while the queue was idle fails this command at once.
            if !inner.broken && self.ctrl.device().is_removed() {
                drop(inner);
                self.removed();
                inner = self.inner.borrow_mut();
            }
            // An idle queue has not polled since a reset it slept through: its rings are gone
            // from the controller. Re-create them first, or this command would fail for it.
            if inner.epoch != self.ctrl.epoch() {
                drop(inner);
                self.recover();
                inner = self.inner.borrow_mut();
            }
        }
        if inner.broken || !inner.pending.is_empty() {
            inner.enqueue(P::pending(pos, view, cdw12), self);
        } else if let Err((pos, view)) = inner.submit_rw(self, pos, view, cdw12) {
            inner.wait_first(P::pending(pos, view, cdw12));
        }
        if inner.parked.is_some() {
            unpark(inner);
        }
    }
}

impl<D: PciDevice> PacketIo<FromDevice, u64> for IoQueue<D> {
    #[inline]
    fn send_io(&self, pos: u64, view: PacketView<FromDevice>) {
        self.send_rw(pos, view, 0);
    }
}

impl<D: PciDevice> PacketIo<ToDevice, u64> for IoQueue<D> {
    #[inline]
    fn send_io(&self, pos: u64, view: PacketView<ToDevice>) {
        self.send_rw(pos, view, 0);
    }
}

impl<D: PciDevice> IoBackend for IoQueue<D> {
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity {
        let dev = self.ctrl.device();
        {
            let mut inner = self.inner.borrow_mut();
            if inner.epoch != self.ctrl.epoch() {
                drop(inner);
                self.recover();
                return Activity::Busy;
            }
            if inner.wakeup.as_mut().is_some_and(Wakeup::woke) {
                inner.tick(); // after a sleep: polls did not count the time
                              // The VFIO layer kicks every vector when the kernel asks for the device back.
                if !inner.broken && self.ctrl.device().is_removed() {
                    drop(inner);
                    self.removed();
                    return Activity::Busy;
                }
            }
            inner.submit_pending(self);
            if inner.sq.commit(dev) {
                inner.stats.sq_doorbells += 1;
            }
        }
        // Drain completions one at a time, completing each segment outside the borrow: a
        // completion may run caller code (a sink) that queues more I/O here.
        let mut reaped = 0u32;
        loop {
            let mut inner = self.inner.borrow_mut();
            let Some(cqe) = inner.cq.pop() else { break };
            reaped += 1;
            let done = inner.finish(cqe);
            drop(inner);
            if let Some((io, result)) = done {
                complete(io, result);
            }
        }
        let mut inner = self.inner.borrow_mut();
        if reaped > 0 {
            if inner.cq.commit_lazy(dev) {
                inner.stats.cq_doorbells += 1;
            }
            if !inner.pending.is_empty() {
                inner.submit_pending(self);
                if inner.sq.commit(dev) {
                    inner.stats.sq_doorbells += 1;
                }
            }
        }
        let busy = !inner.ids.is_idle() || !inner.pending.is_empty();
        if busy {
            inner.polls = inner.polls.wrapping_add(1);
            if inner.polls % CLOCK_POLLS == 0 {
                inner.tick();
            }
            if inner.now_ms >= inner.last_check_ms + 100 {
                inner.last_check_ms = inner.now_ms;
                drop(inner);
                self.check_deadlines();
                return Activity::Busy;
            }
        }
        if inner.wakeup.is_some() {
            return self.settle(inner, cx, reaped, busy);
        }
        if busy {
            Activity::Busy
        } else {
            Activity::Idle
        }
    }

    fn polling_handle(&self) -> Option<mfio::PollingHandle> {
        self.handle.map(|fd| mfio::PollingHandle { fd })
    }
}

/// Wakes the waker a poll parked (the queue has work again), outside the borrow: a waker is
/// caller code.
fn unpark(mut inner: std::cell::RefMut<'_, Inner>) {
    let parked = inner.parked.take();
    drop(inner);
    if let Some(w) = parked {
        w.wake();
    }
}

impl<D: PciDevice> IoQueue<D> {
    /// The end of an interrupt-driven queue's poll (`reaped` completions, `busy` with work in
    /// flight): spin on, or arm and answer `Armed` (see `mfio_pci::wakeup` for the order that
    /// keeps a completion from being slept through).
    #[inline(never)]
    fn settle(
        &self,
        mut inner: std::cell::RefMut<'_, Inner>,
        cx: &mut Context<'_>,
        reaped: u32,
        busy: bool,
    ) -> Activity {
        let Some(w) = inner.wakeup.as_mut() else { return Activity::Busy };
        let verdict = w.after_poll(reaped, busy);
        if verdict == Verdict::Spin && busy {
            return Activity::Busy;
        }
        if verdict == Verdict::Arm {
            // The eventfd was just cleared: look at the ring once more, so a completion whose
            // interrupt that cleared is reaped, not slept through.
            if inner.cq.peek() {
                return Activity::Busy;
            }
            // A removal whose kick a busy poll drained: never sleep on a device that is gone.
            if !inner.broken && self.ctrl.device().is_removed() {
                drop(inner);
                self.removed();
                return Activity::Busy;
            }
            // Everything reaped is given back before the sleep: a controller signals entries
            // past the head it was told.
            if inner.cq.commit(self.ctrl.device()) {
                inner.stats.cq_doorbells += 1;
            }
            if let Some(w) = inner.wakeup.as_mut() {
                w.sleeping();
            }
        }
        // A different waker replaces the parked one, which is woken (after the borrow) rather
        // than dropped: its task may be waiting for exactly this queue's next send.
        let replaced = match &inner.parked {
            Some(p) if p.will_wake(cx.waker()) => None,
            _ => inner.parked.replace(cx.waker().clone()),
        };
        drop(inner);
        if let Some(old) = replaced {
            old.wake();
        }
        if busy {
            Activity::Armed
        } else {
            Activity::Idle
        }
    }
}

/// I/O queue creation lives with the queue, so the controller does not depend on it.
impl<D: PciDevice> Controller<D> {
    /// Creates an I/O queue pair for namespace `nsid`, to be owned by one thread, waiting for
    /// completions as [`ControllerOptions::completion`](crate::ControllerOptions::completion) says.
    pub fn io_queue(self: &Arc<Self>, nsid: u32) -> Result<IoQueue<D>, NvmeError> {
        self.io_queue_with(nsid, self.options().completion)
    }

    /// Creates an I/O queue pair for namespace `nsid` that waits for completions in `mode`.
    /// Interrupt-driven modes give the queue MSI-X vector `qid` (its polling handle): a
    /// controller without MSI-X, or without that vector, is an error that says so.
    pub fn io_queue_with(
        self: &Arc<Self>,
        nsid: u32,
        mode: CompletionMode,
    ) -> Result<IoQueue<D>, NvmeError> {
        let ns = self.namespace(nsid).ok_or(NvmeError::NoNamespace(nsid))?.clone();
        if self.device().is_removed() {
            return Err(NvmeError::Gone);
        }
        let qid = {
            let mut qids = self.qids.lock().unwrap_or_else(|e| e.into_inner());
            let q = (1..qids.len()).find(|&q| !qids[q]).ok_or(NvmeError::NoQueue(self.granted))?;
            qids[q] = true;
            q as u16
        };
        let made = match mode.uses_interrupts() {
            true => self.vector(qid).map(Some),
            false => Ok(None),
        };
        made.and_then(|irq| IoQueue::new(self.clone(), ns, qid, mode, irq))
            .inspect_err(|_| self.release_qid(qid))
    }
}
