//! Group commit: appenders stage records into the open batch; the committer writes one batch
//! at a time and makes it durable, then wakes the appenders it carried.
//!
//! There are two staging buffers: the committer owns one while its batch is on the device,
//! appenders fill the other meanwhile. An append copies its payload once, into device memory
//! (DMA memory for a VFIO device), and the batch goes out without another copy.

use crate::format::{self, Superblock};
use crate::layout::Layout;
use crate::{Lsn, Wal, WalError};
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::{Poll, Waker};
use mfio::{BlockCommands, IoBuf, Window, WriteAt};
use mfio_devices::Device;
use std::collections::VecDeque;

/// The batch being filled.
pub(crate) struct Batch<B> {
    pub buf: B,
    /// Logical offset of the batch's first byte.
    pub start: u64,
    /// Logical bytes staged (a gap at a lap's end included).
    pub len: u64,
    /// Where a gap starts and where the next lap begins, if the batch crosses a lap's end.
    pub gap: Option<(u64, u64)>,
    /// The first record's sequence number.
    pub first: Lsn,
    /// Records staged.
    pub count: u64,
}

/// Why appends fail from some sequence number on.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Failure {
    /// The failed batch's first and one-past-last sequence numbers.
    pub batch: (Lsn, Lsn),
    /// What failed it.
    pub error: WalError,
}

/// The log's state on its thread.
pub(crate) struct State<B> {
    pub open: Batch<B>,
    /// The other staging buffer, `None` while its batch is on the device.
    pub spare: Option<B>,
    /// The next sequence number to give.
    pub next_lsn: Lsn,
    /// Logical end of every staged record.
    pub end: u64,
    /// Logical offset of the first live record (the checkpoint); the area from here on,
    /// `area_len` bytes, is the log's.
    pub start: u64,
    /// Every record below this is durable.
    pub durable: Lsn,
    /// (first sequence number, logical offset) of durable batches since the checkpoint, at
    /// most one per `max_batch` bytes: where a checkpoint can move the start to.
    pub marks: VecDeque<(Lsn, u64)>,
    pub failed: Option<Failure>,
    /// Appenders waiting for their batch, or for room in the open one.
    pub waiters: Vec<Waker>,
    pub committer: Option<Waker>,
}

impl<B> State<B> {
    pub fn new(buf: B, spare: B, next_lsn: Lsn, start: u64, end: u64) -> Self {
        State {
            open: Batch { buf, start: end, len: 0, gap: None, first: next_lsn, count: 0 },
            spare: Some(spare),
            next_lsn,
            end,
            start,
            durable: next_lsn,
            marks: VecDeque::new(),
            failed: None,
            waiters: Vec::new(),
            committer: None,
        }
    }

    /// Takes every waiting appender, to be woken once the state is no longer borrowed.
    fn waiting(&mut self) -> Wakers {
        Wakers(std::mem::take(&mut self.waiters))
    }

    fn register(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }

    /// Notes a durable batch at `(lsn, off)` as a place a checkpoint can start from.
    pub fn mark(&mut self, lsn: Lsn, off: u64, granule: u64) {
        if self.marks.back().is_none_or(|&(_, o)| off - o >= granule) {
            self.marks.push_back((lsn, off));
        }
    }

    /// Fails every record from `batch.0` on; returns the appenders to wake.
    fn fail(&mut self, batch: (Lsn, Lsn), error: WalError) -> Wakers {
        self.failed.get_or_insert(Failure { batch, error });
        self.waiting()
    }

    /// The error for a record at `lsn` (or a new one, `None`) once the log has failed.
    fn error_for(&self, lsn: Option<Lsn>) -> Option<WalError> {
        let f = self.failed?;
        let in_batch = lsn.is_some_and(|l| f.batch.0 <= l && l < f.batch.1);
        Some(match f.error {
            WalError::Device(e) if !in_batch => WalError::Poisoned(e),
            e => e,
        })
    }
}

/// Wakers taken out of the state, woken after its borrow ends: a waker may run code that
/// touches the log (an executor that polls inline), and one that panics must not leave the
/// others asleep forever. Every waker is woken; the first panic is re-raised after.
#[must_use = "wake them once the state's borrow has ended"]
pub(crate) struct Wakers(Vec<Waker>);

impl Wakers {
    pub(crate) fn wake(self) {
        let mut panic = None;
        for w in self.0 {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake())) {
                panic.get_or_insert(p);
            }
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }

    /// [`Wakers::wake`] from a destructor: a waker's panic is dropped (raising it there could
    /// abort a thread that is already unwinding).
    fn wake_in_drop(self) {
        for w in self.0 {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
        }
    }
}

impl From<Option<Waker>> for Wakers {
    fn from(w: Option<Waker>) -> Wakers {
        Wakers(w.into_iter().collect())
    }
}

/// Where the staging of a record stands.
enum Stage {
    Staged(Lsn),
    Wait,
}

impl<D: Device> Wal<D> {
    /// Appends `payload` as one record and resolves once it is durable, to its sequence
    /// number. Needs the committer running on this thread ([`Wal::committer`] or
    /// [`Wal::run_with`]). Dropping the future does not take the record back: it may be
    /// durable or not.
    pub async fn append(&self, payload: &[u8]) -> Result<Lsn, WalError> {
        let size = format::padded(payload.len(), self.layout.block_size);
        if size > self.layout.max_batch {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.max_record() });
        }
        let lsn = poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            match self.stage(&mut st, payload, size) {
                Ok(Stage::Staged(lsn)) => {
                    // The committer has a batch to write.
                    let committer = Wakers::from(st.committer.take());
                    drop(st);
                    committer.wake();
                    Poll::Ready(Ok(lsn))
                }
                Ok(Stage::Wait) => {
                    st.register(cx.waker());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await?;
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if st.durable > lsn {
                return Poll::Ready(Ok(lsn));
            }
            if let Some(e) = st.error_for(Some(lsn)) {
                return Poll::Ready(Err(e));
            }
            st.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Copies a record into the open batch, or says to wait for the next one.
    fn stage(&self, st: &mut State<D::Buf>, payload: &[u8], size: u64) -> Result<Stage, WalError> {
        if let Some(e) = st.error_for(None) {
            return Err(e);
        }
        let l = &self.layout;
        let at = l.place(st.end, size);
        let free = l.area_len - (st.end - st.start);
        if at + size - st.start > l.area_len {
            return Err(WalError::Full { needed: size + (at - st.end), free });
        }
        let batch = &mut st.open;
        if batch.count == 0 {
            batch.start = at;
            batch.first = st.next_lsn;
        } else if at + size - batch.start > l.max_batch {
            return Ok(Stage::Wait);
        }
        if at != st.end && batch.count > 0 {
            batch.gap = Some((st.end, at));
        }
        let from = (at - batch.start) as usize;
        let lsn = st.next_lsn;
        let buf = batch.buf.as_mut();
        format::encode_record(&mut buf[from..from + size as usize], self.log_id, lsn, payload);
        batch.len = at + size - batch.start;
        batch.count += 1;
        st.next_lsn = Lsn(lsn.0 + 1);
        st.end = at + size;
        Ok(Stage::Staged(lsn))
    }

    /// The committer: writes staged batches one at a time, each made durable before its
    /// appenders resolve. Runs until a batch fails (it returns the error; every later append
    /// fails too) and must be polled on the log's thread beside the queue's driver while
    /// appends are waiting. Dropping it between batches is harmless (a new one carries on);
    /// dropping it with a batch on the device fails that batch's appends with
    /// [`WalError::Stopped`].
    pub async fn committer(&self) -> WalError {
        loop {
            let batch = poll_fn(|cx| {
                let mut st = self.state.borrow_mut();
                if let Some(e) = st.error_for(None) {
                    return Poll::Ready(Err(e));
                }
                if st.open.count == 0 || st.spare.is_none() {
                    st.committer = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let next = Batch {
                    buf: st.spare.take().expect("checked"),
                    start: st.end,
                    len: 0,
                    gap: None,
                    first: st.next_lsn,
                    count: 0,
                };
                let batch = std::mem::replace(&mut st.open, next);
                Poll::Ready(Ok((batch, st.waiting())))
            })
            .await;
            let (batch, room) = match batch {
                Ok(b) => b,
                Err(e) => return e,
            };
            let span = (batch.first, Lsn(batch.first.0 + batch.count));
            let (start, first) = (batch.start, batch.first);
            let mut guard = InFlight { wal: self, span: Some(span), error: WalError::Stopped };
            // Appenders that waited for room may stage now. Woken with the batch in the guard:
            // should a waker panic, the batch's appenders learn it was not written.
            room.wake();
            let (r, buf) = write_batch(&*self.queue, &self.layout, self.fua, batch).await;
            guard.span = None;
            let failed = {
                let mut st = self.state.borrow_mut();
                st.spare = Some(buf);
                match r {
                    Ok(()) => {
                        st.durable = span.1;
                        st.mark(first, start, self.layout.mark_granule());
                        let durable = st.waiting();
                        drop(st);
                        durable.wake();
                        None
                    }
                    Err(e) => Some(e),
                }
            };
            if let Some(e) = failed {
                // The batch may have reached the device: a superblock that voids it keeps it out
                // of recovery (best effort: the device may be past writing). Its appenders learn
                // of the failure only once that is done, so one that returns and drops the
                // committer cannot cut the void short.
                let error = WalError::Device(e);
                let mut guard = InFlight { wal: self, span: Some(span), error };
                let _ = self.write_superblock(|sb| sb.void_from = first).await;
                guard.span = None;
                let failed = self.state.borrow_mut().fail(span, error);
                failed.wake();
                return error;
            }
        }
    }

    /// Runs `fut` on this thread with the committer beside it (polled after it, so what `fut`
    /// staged in a round goes out in one batch); resolves to `fut`'s output. Inside whatever
    /// drives the queue: `mfio::block_on(&**wal.queue(), wal.run_with(..))`, or mfio-rt.
    pub async fn run_with<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let mut committer = pin!(self.committer());
        let mut committer_done = false;
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            if !committer_done {
                // After a failure it has nothing left to do: the appends see the error.
                committer_done = committer.as_mut().poll(cx).is_ready();
            }
            Poll::Pending
        })
        .await
    }

    /// Blocking [`append`](Self::append), on this thread (a batch of one, unless other tasks
    /// of this thread append too).
    pub fn append_blocking(&self, payload: &[u8]) -> Result<Lsn, WalError> {
        mfio::block_on(&*self.queue, self.run_with(self.append(payload)))
    }

    /// Frees the log's space before record `lsn` (the engine has applied everything older):
    /// recovery no longer replays them, and their space is reused. Durable on return. Space
    /// is freed a batch at a time, so some records before `lsn` may stay (scanned, not
    /// replayed).
    pub async fn checkpoint(&self, lsn: Lsn) -> Result<(), WalError> {
        let (mark, durable) = {
            let st = self.state.borrow();
            let mark = st.marks.iter().rev().find(|&&(first, _)| first <= lsn).copied();
            (mark, st.durable)
        };
        if lsn > durable {
            return Err(WalError::CheckpointAhead { lsn, durable });
        }
        self.write_superblock(|sb| {
            if let Some((first, off)) = mark {
                if first > sb.start_lsn {
                    (sb.start_lsn, sb.start_off) = (first, off);
                }
            }
            sb.replay_from = sb.replay_from.max(lsn);
        })
        .await?;
        let mut st = self.state.borrow_mut();
        if let Some((first, off)) = mark {
            st.start = st.start.max(off);
            while st.marks.front().is_some_and(|&(l, _)| l < first) {
                st.marks.pop_front();
            }
        }
        Ok(())
    }

    /// Blocking [`checkpoint`](Self::checkpoint).
    pub fn checkpoint_blocking(&self, lsn: Lsn) -> Result<(), WalError> {
        mfio::block_on(&*self.queue, self.checkpoint(lsn))
    }

    /// Writes the next superblock copy, changed by `edit`, durably; the in-memory copy
    /// follows only once it is on the device.
    pub(crate) async fn write_superblock(
        &self,
        edit: impl FnOnce(&mut Superblock),
    ) -> Result<(), WalError> {
        let mut last = self.superblock.lock().await;
        let mut sb = *last;
        edit(&mut sb);
        sb.seq += 1;
        write_super(&*self.dev, &*self.queue, &self.layout, &sb).await?;
        *last = sb;
        Ok(())
    }
}

/// Writes superblock `sb` into its copy, durably.
pub(crate) async fn write_super<D: Device>(
    dev: &D,
    queue: &D::Queue,
    layout: &Layout,
    sb: &Superblock,
) -> Result<(), WalError> {
    let bs = layout.block_size as usize;
    let mut buf = dev.buffer(bs).map_err(|_| WalError::NoBuffer)?;
    sb.encode(&mut buf.as_mut()[..bs]);
    let buf = Window::new(buf, 0, bs).ok_or(WalError::NoBuffer)?;
    let (r, _) = queue.write_all_fua(layout.superblock(sb.seq), buf).await;
    r.map_err(|e| WalError::Io(e.error))
}

/// Writes a batch where it belongs and makes it durable: one FUA write (or a write and a
/// flush), or two writes and a flush when it crosses a lap's end. Gives the buffer back.
async fn write_batch<Q: BlockCommands + WriteAt, B: IoBuf>(
    queue: &Q,
    layout: &Layout,
    fua: bool,
    batch: Batch<B>,
) -> (Result<(), mfio::Error>, B) {
    let Batch { buf, start, len, gap, .. } = batch;
    let (first, second) = match gap {
        None => ((0, len), None),
        Some((gap_at, next_lap)) => {
            let second = (next_lap - start, start + len - next_lap);
            ((0, gap_at - start), Some(second))
        }
    };
    let window = |buf: B, (at, n): (u64, u64)| {
        Window::new(buf, at as usize, n as usize).expect("a batch lies inside its buffer")
    };
    if fua && second.is_none() {
        let (r, w) = queue.write_all_fua(layout.physical(start), window(buf, first)).await;
        return (r.map_err(|e| e.error), w.into_inner());
    }
    let (r, w) = queue.write_all(layout.physical(start), window(buf, first)).await;
    let mut buf = w.into_inner();
    if let Err(e) = r {
        return (Err(e.error), buf);
    }
    if let Some(second) = second {
        let (r, w) = queue.write_all(layout.area_start, window(buf, second)).await;
        buf = w.into_inner();
        if let Err(e) = r {
            return (Err(e.error), buf);
        }
    }
    (queue.flush().await, buf)
}

/// Fails the batch in flight if the committer is dropped (or unwinds) before it lands (or
/// before its failure is recorded).
struct InFlight<'a, D: Device> {
    wal: &'a Wal<D>,
    span: Option<(Lsn, Lsn)>,
    error: WalError,
}

impl<D: Device> Drop for InFlight<'_, D> {
    fn drop(&mut self) {
        if let Some(span) = self.span {
            let failed = match self.wal.state.try_borrow_mut() {
                Ok(mut st) => st.fail(span, self.error),
                Err(_) => return,
            };
            failed.wake_in_drop();
        }
    }
}
