//! An I/O queue pair bound to a namespace: the hot path.
//!
//! `send_io` checks the range, splits at the transfer limit, finds the memory's IOVAs (zero
//! copy) or takes a bounce buffer, builds the PRPs, takes a command slot and writes the SQE:
//! no doorbell, no lock, no system call, no allocation. `poll_backend` rings the SQ doorbell
//! once for the batch, drains the CQ by phase tag, completes each command's segment, and rings
//! the CQ head doorbell once. A command slot owns its segment (and so its memory) until the
//! controller completes it: the device never writes memory given back to the caller.

use crate::controller::Controller;
use crate::controller::DataPointer;
use crate::error::NvmeError;
use crate::namespace::Namespace;
use crate::prp::{self, PrpError, PrpList};
use crate::queues::{CompletionQueue, ShadowDoorbells, SubmissionQueue};
use crate::sgl::{self, SglAlignment};
use crate::spec::{self, Command, Completion, IdentifyController, IdentifyNamespace, PAGE_SIZE};
use mfio::{
    Activity, BlockCommands, BlockDevice, Capabilities, Error, ErrorKind, FromDevice, Fua,
    IoBackend, Origin, PacketIo, PacketView, ToDevice, Zeroes,
};
use mfio_dma::clock::CycleClock;
use mfio_dma::{DmaPool, PoolSlot, Translator};
use mfio_pci::{CompletionMode, EventFd, PciDevice, Verdict, Wakeup, WakeupStats};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// Commands other than Read and Write, carried by an empty packet view.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Other {
    Flush,
    /// `deac`: the controller may deallocate the blocks.
    WriteZeroes {
        slba: u64,
        blocks: u32,
        deac: bool,
    },
    Deallocate {
        slba: u64,
        blocks: u32,
    },
}

/// A request waiting for a slot (backpressure, never loss).
enum Pending {
    Read(u64, PacketView<FromDevice>),
    Write(u64, PacketView<ToDevice>),
    /// A write with Force Unit Access: completes only once durable.
    WriteFua(u64, PacketView<ToDevice>),
    Other(Other, PacketView<ToDevice>),
}

/// What a busy slot carries.
enum SlotIo {
    Free,
    Read(PacketView<FromDevice>),
    Write(PacketView<ToDevice>),
    Other(PacketView<ToDevice>),
}

struct Slot {
    /// Bumped on every reuse: a completion with an old generation is stale.
    generation: u16,
    io: SlotIo,
    /// PRP list pages, permanently this slot's, and the IOVA of each.
    prp: PoolSlot,
    prp_iovas: Box<[u64]>,
    /// A bounce buffer while the command uses one.
    bounce: Option<PoolSlot>,
    /// Milliseconds since the queue's start when submitted.
    started_ms: u64,
    /// Abort was requested after the deadline passed.
    aborted: bool,
}

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

struct Inner {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    slots: Vec<Slot>,
    free: Vec<u16>,
    slot_bits: u32,
    prp_pool: DmaPool,
    bounce_pool: DmaPool,
    translator: Translator,
    dptr: DataPointers,
    pending: VecDeque<Pending>,
    stats: QueueStats,
    /// The CPU's counter at the queue's start, and the clock that reads it.
    t0: mfio_dma::clock::Ticks,
    clock: &'static CycleClock,
    /// Milliseconds since `t0`, refreshed every `CLOCK_POLLS` busy polls, after a sleep and on
    /// the first command after the queue was idle: deadlines are seconds, and even the CPU's
    /// counter costs more than a poll in a guest.
    now_ms: u64,
    polls: u32,
    last_check_ms: u64,
    /// The controller epoch this queue's rings belong to.
    epoch: u64,
    /// The queue pair does not exist on the device (a reset failed): requests fail at once.
    broken: bool,
    /// The queue's interrupt and waiting state; `None` for a polled queue.
    wakeup: Option<Wakeup>,
    /// The waker of a poll that answered `Idle` or `Armed`, woken when work is next sent.
    parked: Option<Waker>,
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
                generation: 0,
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
                free: (0..nslots as u16).rev().collect(),
                slot_bits: u16::BITS - (nslots as u16).leading_zeros(),
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
        inner.slots.len() - inner.free.len()
    }

    fn send_other(&self, op: Other, view: PacketView<ToDevice>) {
        let mut inner = self.inner.borrow_mut();
        inner.enqueue(Pending::Other(op, view), self);
        unpark(inner);
    }

    /// Splits a block range into commands of at most 65536 blocks, one empty view each.
    fn send_ranged(
        &self,
        pos: u64,
        len: u64,
        view: PacketView<ToDevice>,
        make: impl Fn(u64, u32) -> Other,
    ) {
        let bs = u64::from(self.ns.block_size);
        if let Err(e) = mfio::check_range(pos, len, self.capacity(), self.ns.block_size, ORIGIN) {
            return view.fail(e);
        }
        let (mut slba, mut left) = (pos / bs, len / bs);
        if left == 0 {
            return view.ok();
        }
        let mut rest = Some(view);
        while let Some(v) = rest.take() {
            let n = left.min(65536);
            left -= n;
            let this = if left > 0 {
                let (a, b) = v.split_at(0);
                rest = Some(b);
                a
            } else {
                v
            };
            self.send_other(make(slba, n as u32), this);
            slba += n;
        }
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

impl Inner {
    /// Refreshes `now_ms` (the CPU's counter: cheap even in a guest).
    fn tick(&mut self) {
        self.now_ms = self.clock.to_ns(self.clock.now().saturating_sub(self.t0)) / 1_000_000;
    }

    /// Queues a request behind any already waiting, then submits what fits.
    fn enqueue<D: PciDevice>(&mut self, p: Pending, q: &IoQueue<D>) {
        if self.broken {
            let e = Error::new(ErrorKind::Fatal, ORIGIN);
            return match p {
                Pending::Read(_, v) => v.fail(e),
                Pending::Write(_, v) | Pending::WriteFua(_, v) | Pending::Other(_, v) => v.fail(e),
            };
        }
        if self.pending.is_empty() {
            if let Err(back) = self.submit(p, q) {
                self.wait_first(back);
            }
        } else {
            self.pending.push_back(p);
            self.stats.max_pending = self.stats.max_pending.max(self.pending.len() as u64);
        }
    }

    /// Puts a request that could not be submitted first in line.
    fn wait_first(&mut self, p: Pending) {
        self.pending.push_front(p);
        self.stats.max_pending = self.stats.max_pending.max(self.pending.len() as u64);
    }

    /// Submits waiting requests while slots last.
    fn submit_pending<D: PciDevice>(&mut self, q: &IoQueue<D>) {
        while let Some(p) = self.pending.pop_front() {
            if let Err(back) = self.submit(p, q) {
                self.pending.push_front(back);
                break;
            }
        }
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty() && self.sq.free() > 0
    }

    /// Submits `p` (in pieces if it must be split); what cannot be submitted for lack of a
    /// slot, SQ entry or bounce buffer comes back.
    fn submit<D: PciDevice>(&mut self, p: Pending, q: &IoQueue<D>) -> Result<(), Pending> {
        match p {
            Pending::Read(pos, v) => {
                self.submit_rw(q, pos, v, 0).map_err(|(p, v)| Pending::Read(p, v))
            }
            Pending::Write(pos, v) => {
                self.submit_rw(q, pos, v, 0).map_err(|(p, v)| Pending::Write(p, v))
            }
            Pending::WriteFua(pos, v) => {
                self.submit_rw(q, pos, v, Command::FUA).map_err(|(p, v)| Pending::WriteFua(p, v))
            }
            Pending::Other(op, v) => {
                if !self.has_room() {
                    return Err(Pending::Other(op, v));
                }
                self.submit_other(q, op, v);
                Ok(())
            }
        }
    }

    #[inline(always)]
    fn submit_rw<D: PciDevice, P: RwDir>(
        &mut self,
        q: &IoQueue<D>,
        mut pos: u64,
        mut view: PacketView<P>,
        cdw12: u32,
    ) -> Result<(), (u64, PacketView<P>)> {
        loop {
            if !self.has_room() {
                return Err((pos, view));
            }
            let piece_len = view.len().min(q.max_transfer);
            let (piece, rest) = split(view, piece_len);
            let idx = self.free.pop().expect("has_room checked a free slot");
            let s = &self.slots[usize::from(idx)];
            let list = PrpList { mem: self.prp_pool.mem(&s.prp), page_iovas: &s.prp_iovas };
            let zero_copy =
                match short(&mut self.translator, self.dptr, piece.as_ptr(), piece.len()) {
                    Some(d) => Ok(d),
                    None => describe(
                        &mut self.translator,
                        self.dptr,
                        piece.as_ptr(),
                        piece.len(),
                        &list,
                    ),
                };
            let (dptr, bounce, piece, rest) = match zero_copy {
                Ok(d) => (d, None, piece, rest),
                Err(_) => {
                    // Bounce: at most one bounce buffer per command.
                    let Some(b) = self.bounce_pool.alloc() else {
                        // No bounce buffer free: wait (the remainder queued behind the piece).
                        self.free.push(idx);
                        if let Some(r) = rest {
                            self.pending.push_front(P::pending(pos + piece.len() as u64, r, cdw12));
                        }
                        return Err((pos, piece));
                    };
                    let (piece, rest2) = split(piece, q.bounce_size);
                    let rest = match (rest2, rest) {
                        (Some(r2), Some(r)) => {
                            // Pieces of one request complete independently; send the far tail
                            // back to wait and go on with the near one.
                            self.pending.push_front(P::pending(
                                pos + (piece.len() + r2.len()) as u64,
                                r,
                                cdw12,
                            ));
                            Some(r2)
                        }
                        (r2, r) => r2.or(r),
                    };
                    P::fill_bounce(&piece, &self.bounce_pool.mem(&b));
                    // Bounce buffers are whole, page-aligned pages: always PRP-able (and
                    // SGL-able), whether the device sees them as one range or as scattered
                    // pages (no-IOMMU).
                    let ptr = self.bounce_pool.ptr(&b);
                    let d = describe(&mut self.translator, self.dptr, ptr, piece.len(), &list)
                        .expect("page-aligned mapped bounce pages always fit in PRPs and SGLs");
                    self.stats.bounced += 1;
                    (d, Some(b), piece, rest)
                }
            };
            let shift = q.ns.block_size.trailing_zeros(); // 2^LBADS: a shift, not a division
            let mut cmd =
                Command::rw(P::OPCODE, q.ns.nsid, pos >> shift, (piece.len() >> shift) as u32);
            (cmd.prp1, cmd.prp2, cmd.flags) = dptr;
            cmd.cdw12 |= cdw12;
            self.stats.sgl += u64::from(cmd.flags & Command::PSDT_SGL != 0);
            let len = piece.len();
            self.start(idx, &mut cmd, P::slot_io(piece), bounce);
            pos += len as u64;
            match rest {
                Some(r) => view = r,
                None => return Ok(()),
            }
        }
    }

    fn submit_other<D: PciDevice>(
        &mut self,
        q: &IoQueue<D>,
        op: Other,
        view: PacketView<ToDevice>,
    ) {
        let idx = self.free.pop().expect("caller checked room");
        let nsid = q.ns.nsid;
        let mut cmd = match op {
            Other::Flush => Command::new(spec::io::FLUSH, nsid),
            Other::WriteZeroes { slba, blocks, deac } => {
                let mut cmd = Command::rw(spec::io::WRITE_ZEROES, nsid, slba, blocks);
                cmd.cdw12 |= if deac { Command::DEAC } else { 0 };
                cmd
            }
            Other::Deallocate { slba, blocks } => {
                // One range descriptor (context attributes, length in blocks, starting LBA) in
                // the slot's PRP page, which this command does not otherwise use.
                let s = &self.slots[usize::from(idx)];
                let mem = self.prp_pool.mem(&s.prp);
                mem.write_le32(0, 0);
                mem.write_le32(4, blocks);
                mem.write_le64(8, slba);
                let mut c = Command::new(spec::io::DATASET_MANAGEMENT, nsid);
                c.prp1 = s.prp_iovas[0];
                c.cdw10 = 0; // one range
                c.cdw11 = 1 << 2; // AD: deallocate
                c
            }
        };
        self.start(idx, &mut cmd, SlotIo::Other(view), None);
    }

    /// Fills in the command ID, writes the SQE, records the slot as busy.
    #[inline(always)] // `io` in registers, not through memory (store forwarding stalls).
    fn start(&mut self, idx: u16, cmd: &mut Command, io: SlotIo, bounce: Option<PoolSlot>) {
        let now = self.now_ms;
        let slot = &mut self.slots[usize::from(idx)];
        slot.generation = slot.generation.wrapping_add(1);
        cmd.cid = cid_of(idx, slot.generation, self.slot_bits);
        slot.io = io;
        slot.bounce = bounce;
        slot.started_ms = now;
        slot.aborted = false;
        self.sq.push(cmd);
        self.stats.submitted += 1;
    }

    /// Frees the slot of a completion; returns the I/O to complete (`None` for a stray CQE).
    #[inline(always)] // Its result in registers, as for `start`.
    fn finish(&mut self, cqe: Completion) -> Option<(SlotIo, Result<(), Error>)> {
        self.sq.set_head(cqe.sq_head);
        let mask = (1u16 << self.slot_bits) - 1;
        let idx = usize::from(cqe.cid & mask);
        let generation_bits = 16 - self.slot_bits;
        let valid = self.slots.get(idx).is_some_and(|s| {
            !matches!(s.io, SlotIo::Free)
                && (s.generation & ((1u32 << generation_bits) - 1) as u16)
                    == cqe.cid >> self.slot_bits
        });
        if !valid {
            self.stats.stray_completions += 1;
            tracing::warn!(cid = cqe.cid, "completion for an unknown or stale command ID");
            return None;
        }
        let slot = &mut self.slots[idx];
        let mut io = std::mem::replace(&mut slot.io, SlotIo::Free);
        let status = cqe.status();
        let result = if status.is_success() {
            Ok(())
        } else if slot.aborted {
            Err(Error::new(ErrorKind::Timeout, ORIGIN).with_status(status.0 & 0x7ff))
        } else {
            Err(status.to_error())
        };
        if let Some(b) = slot.bounce.take() {
            if let (SlotIo::Read(v), Ok(())) = (&mut io, &result) {
                self.bounce_pool.mem(&b).copy_to_slice(0, v.as_mut_slice());
            }
            let _ = self.bounce_pool.free(b);
        }
        self.free.push(idx as u16);
        self.stats.completed += 1;
        Some((io, result))
    }

    /// Fails everything in flight and waiting: the controller was disabled, so the device no
    /// longer touches any of this memory. The queue is rebuilt empty.
    fn fail_all(&mut self, error: Error) -> Vec<(SlotIo, Result<(), Error>)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let io = std::mem::replace(&mut s.io, SlotIo::Free);
            if !matches!(io, SlotIo::Free) {
                if let Some(b) = s.bounce.take() {
                    let _ = self.bounce_pool.free(b);
                }
                self.free.push(i as u16);
                out.push((io, Err(error)));
            }
        }
        while let Some(p) = self.pending.pop_front() {
            out.push(match p {
                Pending::Read(_, v) => (SlotIo::Read(v), Err(error)),
                Pending::Write(_, v) | Pending::WriteFua(_, v) => (SlotIo::Write(v), Err(error)),
                Pending::Other(_, v) => (SlotIo::Other(v), Err(error)),
            });
        }
        self.sq.reset();
        self.cq.reset();
        out
    }
}

#[inline(always)] // The view in registers (see `Inner::start`).
fn complete(io: SlotIo, result: Result<(), Error>) {
    match io {
        SlotIo::Read(v) => v.complete(result),
        SlotIo::Write(v) | SlotIo::Other(v) => v.complete(result),
        SlotIo::Free => {}
    }
}

fn cid_of(idx: u16, generation: u16, slot_bits: u32) -> u16 {
    if slot_bits >= 16 {
        idx
    } else {
        idx | (generation << slot_bits)
    }
}

/// How a queue describes data: PRPs, SGLs (when the controller has them), or PRPs first.
#[derive(Copy, Clone, Debug)]
struct DataPointers {
    prefer_sgl: bool,
    sgl: Option<SglAlignment>,
}

/// The data pointer `(DPTR1, DPTR2, PSDT flags)` for `len` bytes at `ptr`: PRPs, or an SGL when
/// asked for or when PRPs cannot describe the memory (and the controller offers SGLs).
fn describe(
    t: &mut Translator,
    how: DataPointers,
    ptr: *const u8,
    len: usize,
    list: &PrpList<'_>,
) -> Result<(u64, u64, u8), PrpError> {
    let with_sgl = |t: &mut Translator, align| {
        sgl::build(t.segments(ptr, len), len, list, align).map(|(a, b)| (a, b, Command::PSDT_SGL))
    };
    match (how.prefer_sgl, how.sgl) {
        (true, Some(align)) => with_sgl(t, align),
        (_, sgl) => match prp::build(t.segments(ptr, len), len, list) {
            Ok((a, b)) => Ok((a, b, 0)),
            Err(e @ PrpError::Unmapped) => Err(e),
            Err(e) => sgl.map_or(Err(e), |align| with_sgl(t, align)),
        },
    }
}

/// The fast path of [`describe`]: PRPs without a list for a buffer inside one mapped chunk that
/// spans at most two pages (a 4 KiB read into a DMA buffer); `None` for everything else.
#[inline(always)] // Its result in registers: through memory it stalls on store forwarding.
fn short(
    t: &mut Translator,
    how: DataPointers,
    ptr: *const u8,
    len: usize,
) -> Option<(u64, u64, u8)> {
    if how.prefer_sgl {
        return None;
    }
    let (prp1, prp2) = prp::short(t.contiguous(ptr, len)?.get(), len)?;
    Some((prp1, prp2, 0))
}

/// Splits `v` after `n` bytes when it is longer.
fn split<P: mfio::PacketPerms>(
    v: PacketView<P>,
    n: usize,
) -> (PacketView<P>, Option<PacketView<P>>) {
    if v.len() > n {
        let (a, b) = v.split_at(n);
        (a, Some(b))
    } else {
        (v, None)
    }
}

/// What differs between reads and writes on the hot path.
trait RwDir: mfio::PacketPerms + Sized {
    const OPCODE: u8;
    fn slot_io(v: PacketView<Self>) -> SlotIo;
    fn fill_bounce(v: &PacketView<Self>, mem: &mfio_dma::DmaSlice<'_>);
    /// The request waiting with its CDW12 flags (FUA).
    fn pending(pos: u64, v: PacketView<Self>, cdw12: u32) -> Pending;
}

impl RwDir for FromDevice {
    const OPCODE: u8 = spec::io::READ;
    fn slot_io(v: PacketView<Self>) -> SlotIo {
        SlotIo::Read(v)
    }
    fn fill_bounce(_: &PacketView<Self>, _: &mfio_dma::DmaSlice<'_>) {}
    fn pending(pos: u64, v: PacketView<Self>, _: u32) -> Pending {
        Pending::Read(pos, v)
    }
}

impl RwDir for ToDevice {
    const OPCODE: u8 = spec::io::WRITE;
    fn slot_io(v: PacketView<Self>) -> SlotIo {
        SlotIo::Write(v)
    }
    fn fill_bounce(v: &PacketView<Self>, mem: &mfio_dma::DmaSlice<'_>) {
        mem.copy_from_slice(0, v.as_slice());
    }
    fn pending(pos: u64, v: PacketView<Self>, cdw12: u32) -> Pending {
        match cdw12 & Command::FUA {
            0 => Pending::Write(pos, v),
            _ => Pending::WriteFua(pos, v),
        }
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
        if inner.free.len() == inner.slots.len() {
            // The first command after the queue was idle: the clock, refreshed only by busy
            // polls, may be an idle stretch old, and the command's deadline would start then.
            inner.tick();
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

impl<D: PciDevice> BlockCommands for IoQueue<D> {
    /// From Identify: VWC (a volatile write cache), ONCS (Dataset Management, Write Zeroes)
    /// and the namespace's DLFEAT (Write Zeroes may deallocate). FUA is part of every NVMe
    /// write.
    fn capabilities(&self) -> Capabilities {
        let id = self.ctrl.identify();
        let dlfeat = self.ns.identify.dlfeat;
        Capabilities {
            volatile_cache: id.vwc & 1 != 0,
            fua: true,
            discard: id.oncs & IdentifyController::ONCS_DSM != 0,
            // Deallocate is advisory: DLFEAT says what a deallocated block reads, not that
            // Dataset Management deallocated it (QEMU's ignores it on an image opened without
            // discard=unmap, and still reports DLFEAT 1).
            discard_zeroes: false,
            write_zeroes: id.oncs & IdentifyController::ONCS_WRITE_ZEROES != 0,
            zeroes_unmap: dlfeat & IdentifyNamespace::DLFEAT_WRITE_ZEROES_DEAC != 0,
            read_only: false,
        }
    }

    /// Flush: the controller's volatile write cache reaches the media.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + '_ {
        mfio::command(self, |q: &Self, view| q.send_other(Other::Flush, view))
    }

    /// Deallocate (Dataset Management): one command per 65536 blocks.
    fn discard(&self, pos: u64, len: u64) -> impl Future<Output = Result<(), Error>> + '_ {
        let supported = self.capabilities().discard;
        mfio::command(self, move |q: &Self, view| match supported {
            true => {
                q.send_ranged(pos, len, view, |slba, blocks| Other::Deallocate { slba, blocks })
            }
            false => view.fail(Error::new(ErrorKind::Unsupported, ORIGIN)),
        })
    }

    /// Write Zeroes, with DEAC when the blocks may be unmapped and the namespace can.
    fn write_zeroes(
        &self,
        pos: u64,
        len: u64,
        zeroes: Zeroes,
    ) -> impl Future<Output = Result<(), Error>> + '_ {
        let caps = self.capabilities();
        let deac = zeroes == Zeroes::MayUnmap && caps.zeroes_unmap;
        mfio::command(self, move |q: &Self, view| match caps.write_zeroes {
            true => q.send_ranged(pos, len, view, |slba, blocks| Other::WriteZeroes {
                slba,
                blocks,
                deac,
            }),
            false => view.fail(Error::new(ErrorKind::Unsupported, ORIGIN)),
        })
    }

    /// One Write with FUA per piece (the data is durable when each completes).
    fn write_all_fua<B: mfio::IoBuf>(
        &self,
        pos: u64,
        buf: B,
    ) -> impl Future<Output = (Result<(), mfio::PartialError>, B)> + '_ {
        mfio::Io::<Self, ToDevice, B, mfio::All, Fua>::new(self, Fua(pos), buf)
    }
}

impl<D: PciDevice> PacketIo<ToDevice, Fua> for IoQueue<D> {
    fn send_io(&self, pos: Fua, view: PacketView<ToDevice>) {
        self.send_rw(pos.0, view, Command::FUA);
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
        let busy = inner.free.len() < inner.slots.len() || !inner.pending.is_empty();
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

    /// Every 100 ms with commands in flight: recovers at once from a fatal or removed
    /// controller (nothing it holds will complete), aborts commands past their deadline, and
    /// disables the controller when one neither completes nor aborts within a second deadline.
    fn check_deadlines(&self) {
        let timeout_ms = self.ctrl.options().io_timeout.as_millis() as u64;
        let in_flight = {
            let inner = self.inner.borrow();
            inner.free.len() < inner.slots.len()
        };
        if in_flight {
            let csts = self.ctrl.status();
            if csts.cfs() || csts.is_gone() {
                self.ctrl.recover();
                return;
            }
        }
        let (now, overdue): (u64, Vec<(u16, bool)>) = {
            let inner = self.inner.borrow();
            let bits = inner.slot_bits;
            (
                inner.now_ms,
                inner
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !matches!(s.io, SlotIo::Free))
                    .filter(|(_, s)| inner.now_ms >= s.started_ms + timeout_ms)
                    .map(|(i, s)| (cid_of(i as u16, s.generation, bits), s.aborted))
                    .collect(),
            )
        };
        for (cid, already_aborted) in overdue {
            if already_aborted {
                // Aborted a full deadline ago and still not completed: the only safe way to get
                // the memory back is to stop the controller.
                self.ctrl.recover();
                return;
            }
            let t = Duration::from_millis(timeout_ms.clamp(100, 5000));
            let r = self.ctrl.admin().abort(self.ctrl.device(), self.qid, cid, t);
            tracing::warn!(qid = self.qid, cid, ?r, "command timed out: abort requested");
            let mut inner = self.inner.borrow_mut();
            let mask = (1u16 << inner.slot_bits) - 1;
            let slot = &mut inner.slots[usize::from(cid & mask)];
            slot.aborted = true;
            slot.started_ms = now;
            inner.stats.timeouts += 1;
        }
    }

    /// After a controller reset: fail everything this queue held (safe: the controller was
    /// disabled, so it no longer touches that memory), then create the queue pair on the
    /// device again so I/O works once more.
    fn recover(&self) {
        let epoch = self.ctrl.epoch();
        let failed = self.inner.borrow_mut().fail_all(Error::new(ErrorKind::Fatal, ORIGIN));
        for (io, r) in failed {
            complete(io, r);
        }
        let mut inner = self.inner.borrow_mut();
        inner.epoch = epoch;
        inner.broken = true;
        // An odd epoch is a reset in progress: try again once it is done.
        if epoch % 2 == 1 || !self.ctrl.is_enabled() {
            return;
        }
        let t = self.ctrl.options().admin_timeout;
        let dev = self.ctrl.device();
        let entries = inner.sq.entries();
        let (sq_iova, cq_iova) = (inner.sq.iova(), inner.cq.iova());
        let iv = self.vector;
        let r =
            self.ctrl.admin().create_queue_pair(dev, self.qid, entries, sq_iova, cq_iova, iv, t);
        match r {
            Ok(()) => {
                inner.broken = false;
                tracing::warn!(qid = self.qid, "I/O queue re-created after a controller reset");
            }
            Err(e) => tracing::error!(qid = self.qid, error = %e, "cannot re-create the I/O queue"),
        }
    }
}

impl<D: PciDevice> Drop for IoQueue<D> {
    fn drop(&mut self) {
        // Let what is in flight finish (bounded), so the device is done with its memory before
        // the slots (and the segments they own) go.
        let deadline = Instant::now() + self.ctrl.options().io_timeout;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while self.in_flight() > 0 && Instant::now() < deadline {
            if self.inner.borrow().epoch != self.ctrl.epoch() {
                break;
            }
            self.poll_backend(&mut cx);
        }
        if self.in_flight() > 0 && self.inner.borrow().epoch == self.ctrl.epoch() {
            // Stuck commands own memory the device may still write: only a reset ends that.
            self.ctrl.recover();
            if self.inner.borrow().epoch == self.ctrl.epoch() {
                // The reset could not stop the device (the epoch moves only once it has), and
                // dropping the slots and rings would free memory it may still write.
                tracing::error!(qid = self.qid, "the controller cannot be stopped; aborting");
                // Not `eprintln!`: it panics on a closed stderr, and this must reach the abort.
                let _ = writeln!(
                    std::io::stderr(),
                    "mfio-nvme: queue {} is dropped with commands in flight on a controller \
                     that cannot be stopped (no reset, no bus-master off); aborting rather \
                     than freeing memory it may still write",
                    self.qid
                );
                std::process::abort();
            }
        }
        if self.inner.borrow().epoch == self.ctrl.epoch() && !self.inner.borrow().broken {
            let t = self.ctrl.options().admin_timeout;
            let dev = self.ctrl.device();
            let _ = self.ctrl.admin().delete_queue_pair(dev, self.qid, t);
        }
        self.ctrl.release_qid(self.qid);
    }
}
