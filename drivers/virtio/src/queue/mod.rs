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

use crate::shared::Shared;
use crate::spec::{blk, feature, ring, status};
use crate::virtqueue::RingLayout;
use crate::virtqueue::{Completion, Desc};
use mfio::{
    clip, Activity, BlockCommands, BlockDevice, Capabilities, Error, ErrorKind, FromDevice,
    IoBackend, Origin, Packet, PacketIo, PacketView, ToDevice, Zeroes,
};
use mfio_dma::{Iova, IovaSegment, PoolSlot, Translator};
use mfio_pci::{PciDevice, Verdict, Wakeup, WakeupStats};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Waker};

mod request;
mod submit;

use crate::parts::*;
use request::*;

/// Polls without progress, with requests in flight, between two reads of the device status.
const STALL_CHECK: u32 = 1 << 12;

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

    /// The error for what a failure or a removal took: `Gone` once the device is being
    /// removed (nothing can succeed again), else `Fatal`.
    fn lost(&self) -> Error {
        match self.shared.dev.is_removed() {
            true => Error::new(ErrorKind::Gone, Origin::Virtio),
            false => FATAL,
        }
    }

    fn enqueue(&self, p: Pending) {
        if self.is_broken() {
            p.view.complete(Err(self.lost()));
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

    fn check_device(&self, st: &mut State) {
        st.stats.status_checks += 1;
        if self.shared.dev.is_removed() {
            self.shared.quiesce("the device is being removed");
        }
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
            self.fail_all(st, self.lost());
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
            self.fail_all(st, self.lost());
            return Activity::Idle;
        }
        if let Some(w) = st.wakeup.as_mut() {
            if w.woke() {
                // Awake: polling again, so no used buffer notifications until the next sleep.
                st.parts.vq.set_notify(false);
                // The VFIO layer kicks every vector when the kernel asks for the device back.
                if self.shared.dev.is_removed() {
                    self.check_device(st);
                    return Activity::Idle;
                }
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
            // A removal whose kick a busy poll drained: never sleep on a device that is gone.
            if self.shared.dev.is_removed() {
                self.check_device(st);
                return Activity::Idle;
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
