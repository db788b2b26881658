//! `BlkQueue`: one virtqueue, owned by one thread (`Send`, not `Sync`), as an mfio block
//! device: `PacketIo` for reads and writes at byte offsets, `IoBackend` to drive it, and the
//! other virtio-blk requests (flush, discard, write zeroes, get id) as methods.
//!
//! A request is a header (type, sector) and a status byte in its control slot (the slot of
//! its buffer ID, which also holds its indirect table), and its data: the view's own memory
//! when it translates to IOVAs (zero copy), otherwise a bounce buffer. `send_io` turns a read
//! or write into a descriptor chain at once when nothing waits before it (else it queues it);
//! `poll_backend` reaps the used ring, turns queued requests into chains (splitting at
//! SEG_MAX, SIZE_MAX, the largest transfer and the bounce buffer size) on the split or packed
//! ring, publishes them (split: one available-index store) with at most one notify write, and
//! reaps again. Nothing on that path locks, allocates or makes a system call.

use crate::device::{RingLayout, Shared};
use crate::spec::{blk, feature, ring, status};
use crate::virtqueue::{Completion, Desc, Virtqueue};
use mfio::{
    clip, Activity, BlockCommands, BlockDevice, Capabilities, Error, ErrorKind, FromDevice,
    IoBackend, Origin, Packet, PacketIo, PacketView, ToDevice, Zeroes,
};
use mfio_dma::{DmaBuffer, DmaPool, DmaSlice, DmaSpace, Iova, IovaSegment, PoolSlot, Translator};
use mfio_pci::{EventFd, PciDevice, Verdict, Wakeup, WakeupStats};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Waker};

/// Control slot layout: header, status, one range, the GET_ID answer, the indirect table.
const CTRL_HEADER: usize = 0;
const CTRL_STATUS: usize = 16;
const CTRL_RANGE: usize = 32;
const CTRL_ID: usize = 64;
const CTRL_TABLE: usize = 128;
const CTRL_SLOT: usize = 2048;
/// Descriptors in a request's indirect table.
const TABLE_ENTRIES: usize = (CTRL_SLOT - CTRL_TABLE) / ring::DESC_SIZE;
/// What the status byte holds until the device writes it.
const STATUS_UNSET: u8 = 0xff;
/// Polls without progress, with requests in flight, between two reads of the device status.
const STALL_CHECK: u32 = 1 << 12;

/// Per-queue limits, from the negotiated features and the options.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Limits {
    pub layout: RingLayout,
    pub indirect: bool,
    pub event_idx: bool,
    /// Data segments per request (SEG_MAX, else 1).
    pub seg_max: usize,
    /// Bytes per segment (SIZE_MAX, else no limit), a multiple of 512.
    pub size_max: usize,
    pub max_transfer: usize,
    pub bounce_size: usize,
    pub bounce_slots: usize,
}

/// A virtqueue and its pools, set up at bring-up; moved into a [`BlkQueue`] while one exists.
pub(crate) struct QueueParts {
    index: u16,
    notify: u64,
    vq: Virtqueue,
    /// The control slots, one per buffer ID (so a request's is known before it is added, and
    /// never allocated or freed on the I/O path).
    ctrl: DmaBuffer,
    /// Each control slot's IOVA.
    ctrl_iova: Vec<u64>,
    bounce: DmaPool,
    /// The driver's end of the queue's MSI-X eventfd, when it was given a vector.
    irq: Option<EventFd>,
}

impl QueueParts {
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        index: u16,
        size: u16,
        limits: &Limits,
        irq: Option<EventFd>,
    ) -> Result<Self, String> {
        let vq = Virtqueue::new(space, size, limits.layout, limits.event_idx)?;
        let n = usize::from(size);
        let ctrl = space
            .alloc(n * CTRL_SLOT)
            .map_err(|e| format!("request control slots ({} bytes): {e}", n * CTRL_SLOT))?;
        // Every control slot lies in one page, so each has one IOVA: find them now, once.
        let ctrl_iova = (0..n)
            .map(|k| ctrl.contiguous_iova(k * CTRL_SLOT, CTRL_SLOT).map(|i| i.get()))
            .collect::<Option<Vec<u64>>>()
            .ok_or("a request control slot is not IOVA-contiguous")?;
        let bounce = DmaPool::new(space, limits.bounce_size, limits.bounce_slots, 4096)
            .map_err(|e| format!("bounce pool: {e}"))?;
        Ok(Self { index, notify: 0, vq, ctrl, ctrl_iova, bounce, irq })
    }

    /// Whether the queue has an MSI-X vector.
    pub(crate) fn has_interrupt(&self) -> bool {
        self.irq.is_some()
    }

    /// A descriptor of its own for the queue's interrupt eventfd (for a [`Wakeup`]).
    pub(crate) fn interrupt(&self) -> Option<Result<EventFd, mfio_pci::Errno>> {
        self.irq.as_ref().map(mfio_pci::dup_eventfd)
    }

    pub(crate) fn with_notify(mut self, notify: u64) -> Self {
        self.notify = notify;
        self
    }

    pub(crate) fn size(&self) -> u16 {
        self.vq.size()
    }

    pub(crate) fn ring_iovas(&self) -> (u64, u64, u64) {
        self.vq.iovas()
    }

    /// The control slot of buffer `id`.
    #[inline]
    fn ctrl_mem(&self, id: u16) -> DmaSlice<'_> {
        self.ctrl
            .mem()
            .sub(usize::from(id) * CTRL_SLOT, CTRL_SLOT)
            .expect("a control slot per buffer ID")
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes { unmap: bool },
}

enum AnyView {
    From(PacketView<FromDevice>),
    To(PacketView<ToDevice>),
}

impl AnyView {
    fn len(&self) -> usize {
        match self {
            AnyView::From(v) => v.len(),
            AnyView::To(v) => v.len(),
        }
    }
    fn ptr(&self) -> *const u8 {
        match self {
            AnyView::From(v) => v.as_ptr(),
            AnyView::To(v) => v.as_ptr(),
        }
    }
    fn split_at(self, mid: usize) -> (AnyView, AnyView) {
        match self {
            AnyView::From(v) => {
                let (a, b) = v.split_at(mid);
                (AnyView::From(a), AnyView::From(b))
            }
            AnyView::To(v) => {
                let (a, b) = v.split_at(mid);
                (AnyView::To(a), AnyView::To(b))
            }
        }
    }
    #[inline(always)]
    fn complete(self, r: Result<(), Error>) {
        match self {
            AnyView::From(v) => v.complete(r),
            AnyView::To(v) => v.complete(r),
        }
    }
}

/// A request waiting for descriptors, a control slot or a bounce buffer.
struct Pending {
    op: Op,
    /// Byte offset on the device.
    pos: u64,
    /// Bytes of a discard / write-zeroes range (its view is empty).
    range: u64,
    view: AnyView,
}

/// A request the device holds, by buffer ID (split: its head descriptor's index).
struct Inflight {
    op: Op,
    view: AnyView,
    bounce: Option<PoolSlot>,
}

/// Counters of one queue.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests made available to the device.
    pub requests: u64,
    /// Requests completed by the device.
    pub completions: u64,
    /// Notify register writes.
    pub notifies: u64,
    /// Batches published without a notify (EVENT_IDX or NO_NOTIFY said the device was busy).
    pub suppressed_notifies: u64,
    /// Requests whose data went through a bounce buffer.
    pub bounced: u64,
    /// Used entries naming no request in flight, counted and ignored (split only: on a packed
    /// ring one is fatal, as where the next used descriptor lies is then unknown).
    pub unknown_completions: u64,
    /// Device status reads made because requests stalled.
    pub status_checks: u64,
    /// How the queue waited (all zero for a polled queue).
    pub wakeup: WakeupStats,
}

struct State {
    parts: QueueParts,
    inflight: Vec<Option<Inflight>>,
    /// Scratch for one request's data segments (capacity: the most a request may have).
    segs: Vec<IovaSegment>,
    seg_limit: usize,
    tr: Translator,
    stats: QueueStats,
    stalled: u32,
    /// The queue's interrupt and waiting state; `None` for a polled queue.
    wakeup: Option<Wakeup>,
}

/// One virtqueue of a virtio-blk device, for one thread: an mfio block device.
///
/// Reads and writes go through [`PacketIo`] (so [`mfio::ReadAt`] / [`mfio::WriteAt`] apply);
/// the device is notified only in [`IoBackend::poll_backend`], once per batch (a split ring's
/// requests are published there too; a packed ring's device may see them sooner, as the
/// specification allows). Dropping it with requests in
/// flight resets the device first (every queue of it then fails its I/O), so the device never
/// writes memory given back to its owner.
pub struct BlkQueue<D: PciDevice> {
    shared: Arc<Shared<D>>,
    index: u16,
    notify: u64,
    limits: Limits,
    block_size: u32,
    capacity: u64,
    st: RefCell<Option<State>>,
    pending: RefCell<VecDeque<Pending>>,
    /// The waker of a poll that answered `Idle` or `Armed`, woken when work is next sent.
    parked: Cell<Option<Waker>>,
    has_parked: Cell<bool>,
    /// The polling handle: the queue's interrupt eventfd.
    handle: Option<i32>,
}

fn map_status(s: u8) -> Result<(), Error> {
    match s {
        blk::S_OK => Ok(()),
        blk::S_UNSUPP => {
            Err(Error::new(ErrorKind::Unsupported, Origin::Virtio).with_status(u16::from(s)))
        }
        other => Err(Error::device(Origin::Virtio, u16::from(other))),
    }
}

const FATAL: Error = Error::new(ErrorKind::Fatal, Origin::Virtio);

impl<D: PciDevice> BlkQueue<D> {
    pub(crate) fn new(shared: Arc<Shared<D>>, parts: QueueParts, wakeup: Option<Wakeup>) -> Self {
        use std::os::fd::AsRawFd;
        let limits = shared.limits;
        let size = usize::from(parts.vq.size());
        let seg_limit = if limits.indirect {
            limits.seg_max.min(TABLE_ENTRIES - 2)
        } else {
            limits.seg_max.min(size - 2)
        }
        .max(1);
        let mut st = State {
            inflight: (0..size).map(|_| None).collect(),
            segs: Vec::with_capacity(seg_limit),
            seg_limit,
            tr: shared.dev.dma().translator(),
            stats: QueueStats::default(),
            stalled: 0,
            parts,
            wakeup,
        };
        let handle = st.wakeup.as_ref().map(|w| w.fd().as_raw_fd());
        // Polling from the start: no used buffer notifications until the first sleep (a queue
        // an interrupt-driven owner gave back may have left them on).
        st.parts.vq.set_notify(false);
        Self {
            index: st.parts.index,
            notify: st.parts.notify,
            limits,
            block_size: shared.info.block_size,
            capacity: shared.info.capacity_bytes(),
            st: RefCell::new(Some(st)),
            pending: RefCell::new(VecDeque::with_capacity(4 * size)),
            parked: Cell::new(None),
            has_parked: Cell::new(false),
            handle,
            shared,
        }
    }

    /// How the queue waits for completions now (`Poll` once an interrupt-driven queue has
    /// fallen back to polling).
    pub fn completion_mode(&self) -> mfio_pci::CompletionMode {
        let st = self.st.borrow();
        let w = st.as_ref().and_then(|s| s.wakeup.as_ref());
        w.map_or(mfio_pci::CompletionMode::Poll, Wakeup::mode)
    }

    /// Wakes the waker a poll parked: work was sent. Not from inside `poll_backend` (a sink
    /// sending more while the queue's state is borrowed): that poll answers `Busy` for what is
    /// now pending, and a waker may be caller code that looks at this queue.
    #[inline]
    fn unpark(&self) {
        if self.has_parked.get() && self.st.try_borrow_mut().is_ok() {
            self.has_parked.set(false);
            if let Some(w) = self.parked.take() {
                w.wake();
            }
        }
    }

    /// Keeps `cx`'s waker to wake when work is next sent (a poll answering `Idle` or `Armed`);
    /// returns the one it replaces, for the caller to wake once the state is no longer
    /// borrowed (its task may be waiting for this queue's next send).
    #[must_use]
    fn park(&self, cx: &Context<'_>) -> Option<Waker> {
        let old = self.parked.take();
        self.has_parked.set(true);
        match old {
            Some(w) if w.will_wake(cx.waker()) => {
                self.parked.set(Some(w));
                None
            }
            old => {
                self.parked.set(Some(cx.waker().clone()));
                old
            }
        }
    }

    /// The virtqueue's index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue's counters.
    pub fn stats(&self) -> QueueStats {
        let st = self.st.borrow();
        st.as_ref()
            .map(|s| QueueStats {
                wakeup: s.wakeup.as_ref().map(Wakeup::stats).unwrap_or_default(),
                ..s.stats
            })
            .unwrap_or_default()
    }

    /// Descriptors in flight on the device (a request takes one with indirect tables, else
    /// one per buffer of its chain).
    pub fn in_flight(&self) -> usize {
        self.st.borrow().as_ref().map_or(0, |s| usize::from(s.parts.vq.in_flight()))
    }

    /// The PCI device.
    pub fn device(&self) -> &D {
        &self.shared.dev
    }

    /// Features negotiated.
    pub fn features(&self) -> u64 {
        self.shared.features
    }

    /// The virtqueue layout in use.
    pub fn ring_layout(&self) -> RingLayout {
        self.limits.layout
    }

    fn has(&self, f: u64) -> bool {
        self.shared.features & f != 0
    }

    fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::Acquire)
    }

    fn enqueue(&self, p: Pending) {
        if self.is_broken() {
            p.view.complete(Err(FATAL));
            return;
        }
        self.pending.borrow_mut().push_back(p);
        self.unpark();
    }

    /// A read or write: straight onto the ring when nothing queued waits before it (so order
    /// is kept) and the queue is not being driven at this moment, else queued. Either way the
    /// device hears of it at the next [`poll_backend`](IoBackend::poll_backend), which rings
    /// once for the batch (a packed ring's device may find it sooner: that is allowed).
    #[inline(always)]
    fn send_rw(&self, p: Pending) {
        if !self.is_broken() && self.pending.borrow().is_empty() {
            if let Ok(mut guard) = self.st.try_borrow_mut() {
                if let Some(st) = guard.as_mut() {
                    match self.submit(st, p) {
                        Ok(None) => {}
                        Ok(Some(p)) | Err(p) => self.pending.borrow_mut().push_back(p),
                    }
                    drop(guard);
                    self.unpark();
                    return;
                }
            }
        }
        self.enqueue(p);
    }

    /// The device's id string (GET_ID: up to 20 bytes, NUL padded).
    pub async fn get_id(&self) -> Result<[u8; blk::ID_BYTES], Error> {
        let mut packet = pin!(Packet::<FromDevice, [u8; blk::ID_BYTES]>::new([0; blk::ID_BYTES]));
        let view = packet.as_mut().start(Some(self))?;
        self.enqueue(Pending { op: Op::GetId, pos: 0, range: 0, view: AnyView::From(view) });
        let t = packet.as_ref().wait().await;
        if let Some(e) = t.error {
            return Err(e);
        }
        Ok(packet.as_mut().take_buf().unwrap_or([0; blk::ID_BYTES]))
    }

    /// Blocking [`get_id`](Self::get_id).
    pub fn get_id_blocking(&self) -> Result<[u8; blk::ID_BYTES], Error> {
        mfio::block_on(self, self.get_id())
    }

    /// A request without data: an empty packet whose view (or views, when the range is
    /// split) carries the outcome.
    async fn command(&self, op: Op, pos: u64, range: u64) -> Result<(), Error> {
        let mut packet = pin!(Packet::<ToDevice, [u8; 0]>::new([]));
        let view = packet.as_mut().start(Some(self))?;
        self.enqueue(Pending { op, pos, range, view: AnyView::To(view) });
        match packet.as_ref().wait().await.error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn kick(&self, st: &mut State) {
        if st.parts.vq.unpublished() == 0 {
            return;
        }
        if st.parts.vq.publish() {
            let bar = self.shared.transport.notify.bar;
            self.shared.dev.write16(bar, self.notify, self.index);
            st.stats.notifies += 1;
        } else {
            st.stats.suppressed_notifies += 1;
        }
    }

    /// Completes what the device has used; returns how many.
    fn reap(&self, st: &mut State) -> usize {
        let mut done = 0;
        while let Some(c) = st.parts.vq.next_used() {
            let u = match c {
                Completion::Used(u) => u,
                Completion::Stray(id) => {
                    st.stats.unknown_completions += 1;
                    tracing::trace!(id, "used entry for no request in flight: ignored");
                    continue;
                }
                Completion::Broken(why) => {
                    self.shared.quiesce(why);
                    self.fail_all(st, FATAL);
                    return done;
                }
            };
            let inf = st.inflight[u.id as usize]
                .take()
                .expect("a buffer in flight has its request recorded");
            st.stats.completions += 1;
            done += 1;
            let ctrl = st.parts.ctrl_mem(u.id as u16);
            let result = map_status(ctrl.read_u8(CTRL_STATUS));
            let view = match inf.view {
                AnyView::From(mut v) if result.is_ok() => {
                    if inf.op == Op::GetId {
                        let mut id = [0u8; blk::ID_BYTES];
                        ctrl.copy_to_slice(CTRL_ID, &mut id);
                        v.fill_from(&id);
                    } else if let Some(b) = &inf.bounce {
                        let len = v.len();
                        st.parts.bounce.mem(b).copy_to_slice(0, &mut v.as_mut_slice()[..len]);
                    }
                    AnyView::From(v)
                }
                other => other,
            };
            if let Some(b) = inf.bounce {
                st.parts.bounce.free(b).expect("bounce slot of this queue");
            }
            view.complete(result);
        }
        done
    }

    /// Fails every request in flight and queued (after the device was reset).
    fn fail_all(&self, st: &mut State, e: Error) {
        for id in 0..st.inflight.len() {
            if let Some(inf) = st.inflight[id].take() {
                st.parts.vq.abandon(id as u16);
                if let Some(b) = inf.bounce {
                    st.parts.bounce.free(b).expect("bounce slot of this queue");
                }
                inf.view.complete(Err(e));
            }
        }
        loop {
            let Some(p) = self.pending.borrow_mut().pop_front() else { break };
            p.view.complete(Err(e));
        }
    }

    /// Moves queued requests onto the ring while descriptors, slots and bounce buffers last.
    fn submit_pending(&self, st: &mut State) {
        loop {
            let Some(p) = self.pending.borrow_mut().pop_front() else { return };
            match self.submit(st, p) {
                Ok(None) => {}
                Ok(Some(rest)) => self.pending.borrow_mut().push_front(rest),
                Err(p) => {
                    self.pending.borrow_mut().push_front(p);
                    return;
                }
            }
        }
    }

    /// Fills `st.segs` with the IOVA segments of up to `want` bytes at `ptr`, within the
    /// segment limits; returns the bytes covered (whole blocks when cut short; 0 when the
    /// memory is not DMA-mapped from its first byte).
    #[inline(always)]
    fn plan(&self, st: &mut State, ptr: *const u8, want: usize) -> usize {
        let State { tr, segs, seg_limit, .. } = st;
        segs.clear();
        // Fast path (inline): one mapped chunk holds it all and one descriptor can carry it.
        if *seg_limit > 0 && want <= self.limits.size_max {
            if let Some(iova) = tr.contiguous(ptr, want) {
                segs.push(IovaSegment { iova, len: want });
                return want;
            }
        }
        self.plan_pieces(st, ptr, want)
    }

    /// [`plan`](Self::plan) when the buffer spans chunks or descriptors: out of line.
    #[inline(never)]
    fn plan_pieces(&self, st: &mut State, ptr: *const u8, want: usize) -> usize {
        let State { tr, segs, seg_limit, .. } = st;
        let mut total = 0usize;
        'outer: for s in tr.segments(ptr, want) {
            let Ok(s) = s else { break };
            let (mut iova, mut left) = (s.iova.get(), s.len);
            while left > 0 {
                if segs.len() == *seg_limit {
                    break 'outer;
                }
                let n = left.min(self.limits.size_max);
                segs.push(IovaSegment { iova: Iova(iova), len: n });
                total += n;
                iova += n as u64;
                left -= n;
            }
        }
        if total == want {
            return total;
        }
        let keep = total / self.block_size as usize * self.block_size as usize;
        let mut acc = 0usize;
        let mut n = 0;
        for s in segs.iter_mut() {
            if acc == keep {
                break;
            }
            s.len = s.len.min(keep - acc);
            acc += s.len;
            n += 1;
        }
        segs.truncate(n);
        keep
    }

    /// Puts one request (or its first piece) on the ring. `Ok(rest)`: done, with what is left
    /// of it; `Err(p)`: out of resources, try again after completions.
    #[inline(always)] // One caller; the request's fields stay in registers.
    fn submit(&self, st: &mut State, p: Pending) -> Result<Option<Pending>, Pending> {
        // The buffer ID the request will have, and so its control slot.
        let Some(id) = st.parts.vq.next_id() else {
            return Err(p);
        };
        let Pending { op, pos, range, view } = p;
        let mut bounce = None;
        let mut rest = None;
        let (view, data_len) = match op {
            Op::Read | Op::Write => {
                let len = view.len();
                let mut piece = self.plan(st, view.ptr(), len.min(self.limits.max_transfer));
                if piece == 0 {
                    let Some(b) = st.parts.bounce.alloc() else {
                        return Err(Pending { op, pos, range, view });
                    };
                    let ptr = st.parts.bounce.ptr(&b);
                    piece = self.plan(
                        st,
                        ptr,
                        len.min(self.limits.bounce_size).min(self.limits.max_transfer),
                    );
                    if piece == 0 {
                        st.parts.bounce.free(b).expect("bounce slot of this queue");
                        view.complete(Err(Error::new(ErrorKind::Dma, Origin::Virtio)));
                        return Ok(None);
                    }
                    bounce = Some(b);
                }
                let need = if self.limits.indirect { 1 } else { st.segs.len() as u16 + 2 };
                if st.parts.vq.num_free() < need {
                    if let Some(b) = bounce {
                        st.parts.bounce.free(b).expect("bounce slot of this queue");
                    }
                    return Err(Pending { op, pos, range, view });
                }
                let view = if piece < len {
                    let (head, tail) = view.split_at(piece);
                    rest = Some(Pending { op, pos: pos + piece as u64, range, view: tail });
                    head
                } else {
                    view
                };
                (view, piece)
            }
            Op::Discard | Op::WriteZeroes { .. } => {
                let need = if self.limits.indirect { 1 } else { 3 };
                if st.parts.vq.num_free() < need {
                    return Err(Pending { op, pos, range, view });
                }
                let max_sectors = if op == Op::Discard {
                    self.shared.info.max_discard_sectors
                } else {
                    self.shared.info.max_write_zeroes_sectors
                };
                let bs = u64::from(self.block_size);
                let max = (u64::from(max_sectors) * blk::SECTOR_SIZE / bs * bs).max(bs);
                let piece = range.min(max);
                let view = if piece < range {
                    let (head, tail) = view.split_at(0);
                    rest = Some(Pending { op, pos: pos + piece, range: range - piece, view: tail });
                    head
                } else {
                    view
                };
                (view, piece as usize)
            }
            Op::Flush | Op::GetId => {
                let need = if self.limits.indirect {
                    1
                } else if op == Op::Flush {
                    2
                } else {
                    3
                };
                if st.parts.vq.num_free() < need {
                    return Err(Pending { op, pos, range, view });
                }
                (view, 0)
            }
        };
        let cm = st.parts.ctrl_mem(id);
        let ctrl_iova = st.parts.ctrl_iova[usize::from(id)];
        let sector = pos / blk::SECTOR_SIZE;
        let kind = match op {
            Op::Read => blk::T_IN,
            Op::Write => blk::T_OUT,
            Op::Flush => blk::T_FLUSH,
            Op::GetId => blk::T_GET_ID,
            Op::Discard => blk::T_DISCARD,
            Op::WriteZeroes { .. } => blk::T_WRITE_ZEROES,
        };
        // Type, reserved, sector: as two u64s (a device reads it whole; same-width loads are
        // forwarded from the store buffer, narrower stores under a wider load are not).
        let header_sector = if matches!(op, Op::Read | Op::Write) { sector } else { 0 };
        cm.write_le64s(CTRL_HEADER, [u64::from(kind), header_sector]);
        cm.write_u8(CTRL_STATUS, STATUS_UNSET);
        if let (Some(b), AnyView::To(v)) = (&bounce, &view) {
            st.parts.bounce.mem(b).copy_from_slice(0, v.as_slice());
        }
        if let Op::Discard | Op::WriteZeroes { .. } = op {
            cm.write_le64(CTRL_RANGE, sector);
            cm.write_le32(CTRL_RANGE + 8, (data_len as u64 / blk::SECTOR_SIZE) as u32);
            let unmap = matches!(op, Op::WriteZeroes { unmap: true });
            cm.write_le32(CTRL_RANGE + 12, if unmap { blk::RANGE_F_UNMAP } else { 0 });
        }
        // The chain: header, data, status.
        // Built where used (not kept in a variable): copied from where it was stored in pieces,
        // a descriptor is a load wider than those stores, which the CPU cannot forward (a
        // stall measured at half of `send_io`).
        let header = || Desc { addr: ctrl_iova, len: blk::HEADER_SIZE as u32, flags: 0 };
        let status =
            || Desc { addr: ctrl_iova + CTRL_STATUS as u64, len: 1, flags: ring::DESC_F_WRITE };
        let nseg = match op {
            Op::Read | Op::Write => st.segs.len(),
            Op::Flush => 0,
            _ => 1,
        };
        let data_flags = if matches!(op, Op::Read | Op::GetId) { ring::DESC_F_WRITE } else { 0 };
        let segs = &st.segs;
        let desc_of = |k: usize| -> Desc {
            if k == 0 {
                header()
            } else if k == nseg + 1 {
                status()
            } else {
                match op {
                    Op::Read | Op::Write => {
                        let s = segs[k - 1];
                        Desc { addr: s.iova.get(), len: s.len as u32, flags: data_flags }
                    }
                    Op::GetId => Desc {
                        addr: ctrl_iova + CTRL_ID as u64,
                        len: blk::ID_BYTES as u32,
                        flags: ring::DESC_F_WRITE,
                    },
                    _ => Desc {
                        addr: ctrl_iova + CTRL_RANGE as u64,
                        len: blk::RANGE_SIZE as u32,
                        flags: 0,
                    },
                }
            }
        };
        let n = nseg + 2;
        let added = if self.limits.indirect {
            let table = cm.sub(CTRL_TABLE, n * ring::DESC_SIZE).expect("the table fits its slot");
            if let (Op::Read | Op::Write, [s]) = (op, &segs[..]) {
                // One data segment (almost every request): the three entries without asking
                // `desc_of` which one each is.
                let data = Desc { addr: s.iova.get(), len: s.len as u32, flags: data_flags };
                let three = [header(), data, status()];
                st.parts.vq.write_table(&table, 3, |k| three[k]);
            } else {
                st.parts.vq.write_table(&table, n, desc_of);
            }
            let table = Desc {
                addr: ctrl_iova + CTRL_TABLE as u64,
                len: (n * ring::DESC_SIZE) as u32,
                flags: ring::DESC_F_INDIRECT,
            };
            st.parts.vq.add_chain(1, |_| table)
        } else {
            st.parts.vq.add_chain(n as u16, desc_of)
        }
        .expect("descriptors were checked free");
        debug_assert_eq!(added, id, "the buffer ID next_id named");
        if bounce.is_some() {
            st.stats.bounced += 1;
        }
        st.stats.requests += 1;
        tracing::trace!(queue = self.index, id, ?op, sector, len = data_len, "request");
        // Stored over the old entry (None: the ID was free) before that is dropped, so the
        // record goes from registers to its slot; assigned with `=`, it was built on the stack
        // around the drop call and copied with loads wider than its stores (a store-forwarding
        // stall, 60% of send_io in perf annotate).
        let old = st.inflight[usize::from(id)].replace(Inflight { op, view, bounce });
        debug_assert!(old.is_none(), "buffer ID {id} was free");
        Ok(rest)
    }

    fn check_device(&self, st: &mut State) {
        st.stats.status_checks += 1;
        let s = self.shared.transport.status(&self.shared.dev);
        let bad =
            s & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 || s & status::DRIVER_OK == 0;
        if bad && !self.is_broken() {
            let why = if s & status::DEVICE_NEEDS_RESET != 0 {
                "the device set DEVICE_NEEDS_RESET"
            } else {
                "the device is no longer running (DRIVER_OK clear or FAILED)"
            };
            self.shared.quiesce(why);
        }
        if self.is_broken() {
            self.fail_all(st, FATAL);
        }
    }
}

impl<D: PciDevice> BlockCommands for BlkQueue<D> {
    /// From the negotiated features: FLUSH (a volatile cache), DISCARD, WRITE_ZEROES (and the
    /// config's `write_zeroes_may_unmap`), RO. virtio-blk has no FUA (a write, then a flush)
    /// and does not promise what discarded sectors read.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            volatile_cache: self.has(feature::BLK_FLUSH),
            fua: false,
            discard: self.has(feature::BLK_DISCARD),
            discard_zeroes: false,
            write_zeroes: self.has(feature::BLK_WRITE_ZEROES),
            zeroes_unmap: self.shared.info.write_zeroes_may_unmap,
            read_only: self.has(feature::BLK_RO),
        }
    }

    /// Flushes the device's write cache. Without FLUSH the device has none (it writes
    /// through), so there is nothing to do.
    async fn flush(&self) -> Result<(), Error> {
        if !self.has(feature::BLK_FLUSH) {
            return Ok(());
        }
        self.command(Op::Flush, 0, 0).await
    }

    /// DISCARD: the device may free the sectors.
    async fn discard(&self, pos: u64, len: u64) -> Result<(), Error> {
        if !self.has(feature::BLK_DISCARD) {
            return Err(Error::new(ErrorKind::Unsupported, Origin::Virtio));
        }
        if !mfio::check_range(pos, len, self.capacity, self.block_size, Origin::Virtio)? {
            return Ok(());
        }
        self.command(Op::Discard, pos, len).await
    }

    /// WRITE_ZEROES, with the UNMAP flag when the sectors may be deallocated.
    async fn write_zeroes(&self, pos: u64, len: u64, zeroes: Zeroes) -> Result<(), Error> {
        if !self.has(feature::BLK_WRITE_ZEROES) {
            return Err(Error::new(ErrorKind::Unsupported, Origin::Virtio));
        }
        if !mfio::check_range(pos, len, self.capacity, self.block_size, Origin::Virtio)? {
            return Ok(());
        }
        let unmap = zeroes == Zeroes::MayUnmap;
        self.command(Op::WriteZeroes { unmap }, pos, len).await
    }
}

impl<D: PciDevice> BlockDevice for BlkQueue<D> {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl<D: PciDevice> PacketIo<FromDevice, u64> for BlkQueue<D> {
    fn send_io(&self, pos: u64, view: PacketView<FromDevice>) {
        if let Some(view) = clip(pos, view, self.capacity, self.block_size, Origin::Virtio) {
            self.send_rw(Pending { op: Op::Read, pos, range: 0, view: AnyView::From(view) });
        }
    }
}

impl<D: PciDevice> PacketIo<ToDevice, u64> for BlkQueue<D> {
    fn send_io(&self, pos: u64, view: PacketView<ToDevice>) {
        if self.shared.info.read_only {
            view.fail(Error::new(ErrorKind::Unsupported, Origin::Virtio));
            return;
        }
        if let Some(view) = clip(pos, view, self.capacity, self.block_size, Origin::Virtio) {
            self.send_rw(Pending { op: Op::Write, pos, range: 0, view: AnyView::To(view) });
        }
    }
}

impl<D: PciDevice> IoBackend for BlkQueue<D> {
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity {
        let mut replaced = None;
        let activity = self.poll_state(cx, &mut replaced);
        if let Some(w) = replaced {
            w.wake(); // the state is no longer borrowed
        }
        activity
    }

    fn polling_handle(&self) -> Option<mfio::PollingHandle> {
        self.handle.map(|fd| mfio::PollingHandle { fd })
    }
}

impl<D: PciDevice> BlkQueue<D> {
    /// The poll proper; a parked waker it replaced comes back in `replaced`.
    fn poll_state(&self, cx: &mut Context<'_>, replaced: &mut Option<Waker>) -> Activity {
        let mut guard = self.st.borrow_mut();
        let Some(st) = guard.as_mut() else { return Activity::Idle };
        if self.is_broken() {
            self.fail_all(st, FATAL);
            return Activity::Idle;
        }
        if let Some(w) = st.wakeup.as_mut() {
            if w.woke() {
                // Awake: polling again, so no used buffer notifications until the next sleep.
                st.parts.vq.set_notify(false);
            }
        }
        let mut done = self.reap(st);
        self.submit_pending(st);
        self.kick(st);
        done += self.reap(st);
        let in_flight = st.parts.vq.in_flight();
        if in_flight > 0 && done == 0 {
            st.stalled += 1;
            if st.stalled >= STALL_CHECK {
                st.stalled = 0;
                self.check_device(st);
            }
        } else {
            st.stalled = 0;
        }
        let busy = st.parts.vq.in_flight() > 0 || !self.pending.borrow().is_empty();
        if st.wakeup.is_some() {
            return self.settle(st, cx, done as u32, busy, replaced);
        }
        if busy {
            Activity::Busy
        } else {
            Activity::Idle
        }
    }

    /// The end of an interrupt-driven queue's poll: spin on, or turn used buffer
    /// notifications on, look at the used ring once more and answer `Armed` (see
    /// `mfio_pci::wakeup` for the order that keeps a completion from being slept through).
    #[inline(never)]
    fn settle(
        &self,
        st: &mut State,
        cx: &Context<'_>,
        done: u32,
        busy: bool,
        replaced: &mut Option<Waker>,
    ) -> Activity {
        let Some(w) = st.wakeup.as_mut() else { return Activity::Busy };
        let verdict = w.after_poll(done, busy);
        if verdict == Verdict::Spin && busy {
            return Activity::Busy;
        }
        if verdict == Verdict::Arm {
            // Notifications on (with a full fence after), then the look: a buffer used before
            // the device saw them on is found here; one used after is notified.
            st.parts.vq.set_notify(true);
            if st.parts.vq.has_used() {
                st.parts.vq.set_notify(false);
                return Activity::Busy;
            }
            w.sleeping();
        }
        *replaced = self.park(cx);
        if busy {
            Activity::Armed
        } else {
            Activity::Idle
        }
    }
}

impl<D: PciDevice> Drop for BlkQueue<D> {
    fn drop(&mut self) {
        let Some(mut st) = self.st.get_mut().take() else { return };
        if st.parts.vq.in_flight() > 0 && !self.is_broken() {
            // The device may still write into those requests' memory: stop it first.
            self.shared.quiesce("a queue was dropped with requests in flight");
        }
        self.fail_all(&mut st, Error::new(ErrorKind::Aborted, Origin::Virtio));
        if !self.is_broken() {
            let mut slots = self.shared.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots[usize::from(self.index)] = Some(st.parts);
        }
    }
}
