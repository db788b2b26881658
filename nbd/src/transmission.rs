//! The transmission phase of one connection: requests in, device I/O, replies out.
//!
//! - The *reader* (this connection's task) reads request headers, checks each against the
//!   export (range, alignment, flags, read-only) and answers what fails at once; a write's
//!   payload is read from the socket straight into the payload buffers the device will DMA
//!   from. Every request that reaches the device becomes a task on the worker's thread:
//!   the tasks started from one socket read send their I/O before the queue's driver polls
//!   again, so they reach the device as one batch (one doorbell).
//! - Request tasks complete in any order; each hands its reply to the *writer*, which sends
//!   whatever replies are ready in one vectored write (headers and payload buffers, no copy).
//! - A reply is sent only after the device completed everything the request asked for: a
//!   write is never acknowledged before it is done (durable too, with FUA).
//!
//! What ends a connection: `NBD_CMD_DISC` (in-flight requests are finished and replied to
//! first), end of stream, or a protocol violation (a bad magic, a write payload too large to
//! skip). The other connections are not affected.

use crate::export::{ExportInfo, MAX_PAYLOAD};
use crate::handshake::Session;
use crate::pool::{Pool, Taken, CHUNK};
use crate::proto::{self, cmd, cmd_flag, errno, reply, Request, REQUEST_LEN};
use crate::server::Stats;
use crate::spin::{Busy, Spin};
use mfio::{BlockCommands, IoBuf, ReadAt, Window, WriteAt, Zeroes};
use mfio_devices::Device;
use std::cell::{Cell, RefCell};
use std::io::IoSlice;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Requests of one connection in flight at once; the reader waits beyond it.
pub const MAX_IN_FLIGHT: usize = 256;

/// What a worker thread holds for its connections.
pub(crate) struct Worker<D: Device> {
    pub queue: Rc<D::Queue>,
    pub pool: Rc<Pool<D::Buf>>,
    pub info: Arc<ExportInfo>,
    pub stats: Arc<Stats>,
    /// Adaptive polling of the sockets (see `crate::spin`), told of every request and reply.
    pub spin: Option<Rc<Spin>>,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the socket.
    Closed,
    /// The socket failed.
    Io(std::io::Error),
    /// The client broke the protocol.
    Violation(String),
}

/// A reply waiting for the writer.
enum Reply<B: IoBuf> {
    /// Success (0) or an error, without data.
    Status { cookie: u64, error: u32 },
    /// A read: the first `good` bytes of `pieces` (in order) are data; `error` is 0, or what
    /// went wrong at `offset + good`. `bufs` takes the buffers back to the pool.
    Read {
        cookie: u64,
        offset: u64,
        pieces: Vec<Window<B>>,
        good: u64,
        error: u32,
        bufs: Option<Taken<B>>,
    },
}

impl<B: IoBuf> Reply<B> {
    /// An error reply to `req` in the form its command needs (a read's is always a read reply:
    /// with structured replies, a read never gets a simple one).
    fn failed(req: &Request, error: u32) -> Self {
        match req.kind {
            cmd::READ => Reply::Read {
                cookie: req.cookie,
                offset: req.offset,
                pieces: Vec::new(),
                good: 0,
                error,
                bufs: None,
            },
            _ => Reply::Status { cookie: req.cookie, error },
        }
    }

    /// Gives the reply's buffers back to their pool.
    fn recycle(self) {
        if let Reply::Read { pieces, bufs: Some(mut taken), .. } = self {
            for p in pieces {
                taken.put(p.into_inner());
            }
        }
    }
}

/// What a checked request asks of the device.
enum Op {
    Read,
    Write,
    Flush,
    Trim,
    Zeroes,
}

/// A reply, with what it holds of its connection's limits (its in-flight slot, and for a read
/// its share of the buffer pool): both are given back only once the writer has sent it, so a
/// client that stops reading its replies stops being served, instead of queueing without end.
struct Out<B: IoBuf> {
    reply: Reply<B>,
    _slot: OwnedSemaphorePermit,
    _quota: Option<OwnedSemaphorePermit>,
}

type Replies<B> = mpsc::UnboundedSender<Out<B>>;

/// How long a client may take to send the rest of a write's payload, or to take in a batch of
/// replies, before it is disconnected (its buffers then go back to the others).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves requests until the connection ends; replies to everything in flight first.
pub(crate) async fn serve<D, R, W>(w: Rc<Worker<D>>, mut rd: R, wr: W, session: Session) -> Ended
where
    D: Device,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::task::spawn_local(writer(wr, rx, session.structured, w.spin.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // This connection's share of the worker's buffers: a quarter of them, so a client that
    // stops reading its replies (they hold their buffers until sent) or its own writes' pieces
    // cannot take what the others need; the stall timeout gives them back.
    let share = (w.pool.limit() / 4).max(1);
    let quota = Arc::new(Semaphore::new(share));
    let mut scratch = Vec::new();
    let ended = loop {
        if tx.is_closed() {
            break Ended::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no replies for too long",
            ));
        }
        let mut hdr = [0u8; REQUEST_LEN];
        if let Err(e) = rd.read_exact(&mut hdr).await {
            break ended_by(e);
        }
        let Some(req) = Request::parse(&hdr) else {
            break Ended::Violation("a request without the request magic".into());
        };
        if let Some(s) = &w.spin {
            s.activity();
        }
        w.stats.requests.fetch_add(1, Relaxed);
        if req.kind == cmd::DISC {
            break Ended::Disconnect;
        }
        // Every request takes a slot, even one answered at once: the slot comes back when
        // its reply has been written.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break Ended::Violation("in-flight limit closed".into());
        };
        let op = match check(&w.info, &session, &req) {
            Ok(op) => op,
            Err(error) => {
                if req.kind == cmd::WRITE {
                    // The payload follows whatever the verdict: skip it to stay in step.
                    if req.length > MAX_PAYLOAD {
                        break Ended::Violation(format!("a write of {} bytes", req.length));
                    }
                    if let Err(e) = skip(&mut rd, req.length, &mut scratch).await {
                        break ended_by(e);
                    }
                }
                send(&w.stats, &tx, Reply::failed(&req, error), slot, None);
                continue;
            }
        };
        // The spinner rests while this request is at the device.
        let busy = w.spin.as_ref().map(Busy::new);
        match op {
            Op::Write => {
                if let Err(e) = stream_write(&w, &mut rd, req, (slot, busy), &tx, &quota).await {
                    break e;
                }
            }
            Op::Read => {
                let (tx, w2, quota) = (tx.clone(), w.clone(), quota.clone());
                tokio::task::spawn_local(async move {
                    // At most the whole share: a read larger than it still runs, alone.
                    let n = pieces_of(req.length).min(share) as u32;
                    let Ok(share) = quota.acquire_many_owned(n).await else { return };
                    let r = read(&w2, &req).await;
                    drop(busy);
                    send(&w2.stats, &tx, r, slot, Some(share));
                });
            }
            Op::Flush | Op::Trim | Op::Zeroes => {
                let (tx, w2) = (tx.clone(), w.clone());
                tokio::task::spawn_local(async move {
                    let r = command(&w2, &req, op).await;
                    drop(busy);
                    send(&w2.stats, &tx, r, slot, None);
                });
            }
        }
    };
    drop(tx);
    // The writer ends once every request task has sent its reply (or dropped it).
    let _ = writer.await;
    ended
}

fn ended_by(e: std::io::Error) -> Ended {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Ended::Closed,
        _ => Ended::Io(e),
    }
}

fn send<B: IoBuf>(
    stats: &Stats,
    tx: &Replies<B>,
    reply: Reply<B>,
    slot: OwnedSemaphorePermit,
    quota: Option<OwnedSemaphorePermit>,
) {
    let failed = match &reply {
        Reply::Status { error, .. } | Reply::Read { error, .. } => *error != 0,
    };
    if failed {
        stats.error_replies.fetch_add(1, Relaxed);
    }
    // The writer is gone only with the connection (or a client that took no replies).
    let _ = tx.send(Out { reply, _slot: slot, _quota: quota });
}

/// A write streamed to the device: each 128 KiB piece is written as soon as it has been read
/// from the socket, in a buffer of its own (so a client that stalls mid-payload holds one
/// buffer, not the whole request's); the reply goes out once every piece is done.
async fn stream_write<D: Device, R: AsyncRead + Unpin>(
    w: &Rc<Worker<D>>,
    rd: &mut R,
    req: Request,
    (slot, busy): (OwnedSemaphorePermit, Option<Busy>),
    tx: &Replies<D::Buf>,
    quota: &Arc<Semaphore>,
) -> Result<(), Ended> {
    if req.length == 0 {
        drop(busy);
        send(&w.stats, tx, Reply::Status { cookie: req.cookie, error: 0 }, slot, None);
        return Ok(());
    }
    let n = pieces_of(req.length);
    let agg = Rc::new(WriteDone {
        left: Cell::new(n),
        error: Cell::new(0),
        reply: RefCell::new(Some((tx.clone(), slot, busy))),
        cookie: req.cookie,
        stats: w.stats.clone(),
    });
    let fua = req.flags & cmd_flag::FUA != 0;
    for i in 0..n {
        let at = i * CHUNK;
        let len = (req.length as usize - at).min(CHUNK);
        let (share, taken) = match quota.clone().acquire_owned().await {
            Ok(share) => (share, w.pool.take(1).await),
            Err(_) => return Err(Ended::Violation("the buffer quota closed".into())),
        };
        let buf = taken.map(|mut t| {
            let b = t.take_all().pop();
            (t, b.and_then(|b| Window::new(b, 0, len)))
        });
        let (taken, mut win) = match buf {
            Ok((t, Some(win))) => (t, win),
            _ => {
                // No buffer (out of DMA memory): the rest of the payload is skipped.
                agg.finish(n - i, errno::ENOMEM);
                let rest = req.length - at as u32;
                return skip(rd, rest, &mut Vec::new()).await.map_err(ended_by);
            }
        };
        match tokio::time::timeout(STALL_TIMEOUT, rd.read_exact(win.as_mut_slice())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                agg.finish(n - i, errno::EIO);
                return Err(ended_by(e));
            }
            Err(_) => {
                agg.finish(n - i, errno::EIO);
                return Err(Ended::Violation("a write payload stalled".into()));
            }
        }
        let (w2, agg2) = (w.clone(), agg.clone());
        tokio::task::spawn_local(async move {
            let (q, pos) = (&*w2.queue, req.offset + at as u64);
            let (r, win) =
                if fua { q.write_all_fua(pos, win).await } else { q.write_all(pos, win).await };
            let mut taken = taken;
            taken.put(win.into_inner());
            drop((taken, share)); // the buffer is free for the next piece
            agg2.finish(1, r.err().map_or(0, |e| proto::errno_of(&e.error, true)));
        });
    }
    Ok(())
}

/// Where a write's reply goes, its in-flight slot, and its mark on the spinner.
type PendingReply<B> = (Replies<B>, OwnedSemaphorePermit, Option<Busy>);

/// The pieces of one write still in flight, and its reply once they are done.
struct WriteDone<B: IoBuf> {
    left: Cell<usize>,
    error: Cell<u32>,
    reply: RefCell<Option<PendingReply<B>>>,
    cookie: u64,
    stats: Arc<Stats>,
}

impl<B: IoBuf> WriteDone<B> {
    /// `n` pieces are done (or will never be sent), the first error kept.
    fn finish(&self, n: usize, error: u32) {
        if self.error.get() == 0 {
            self.error.set(error);
        }
        self.left.set(self.left.get().saturating_sub(n));
        if self.left.get() == 0 {
            if let Some((tx, slot, busy)) = self.reply.borrow_mut().take() {
                drop(busy);
                let reply = Reply::Status { cookie: self.cookie, error: self.error.get() };
                send(&self.stats, &tx, reply, slot, None);
            }
        }
    }
}

/// The protocol's checks, before anything reaches the device: `Err(errno)` to answer at once.
fn check(info: &ExportInfo, session: &Session, r: &Request) -> Result<Op, u32> {
    let fua = if session.flags & proto::flag::SEND_FUA != 0 { cmd_flag::FUA } else { 0 };
    let (op, allowed, writing) = match r.kind {
        cmd::READ => {
            let df = if session.structured { cmd_flag::DF } else { 0 };
            (Op::Read, fua | df, false)
        }
        cmd::WRITE => (Op::Write, fua, true),
        cmd::FLUSH => (Op::Flush, fua, false),
        cmd::TRIM if info.caps.discard => (Op::Trim, fua, true),
        cmd::WRITE_ZEROES => (Op::Zeroes, fua | cmd_flag::NO_HOLE | cmd_flag::FAST_ZERO, true),
        _ => return Err(errno::EINVAL), // unknown, or TRIM where it was not offered
    };
    if r.flags & !allowed != 0 {
        return Err(errno::EINVAL);
    }
    if writing && info.read_only {
        return Err(errno::EPERM);
    }
    if matches!(op, Op::Flush) {
        return Ok(op); // offset and length are reserved
    }
    let end = r.offset.checked_add(u64::from(r.length));
    if end.is_none_or(|end| end > info.size) {
        return Err(if writing { errno::ENOSPC } else { errno::EINVAL });
    }
    let bs = u64::from(info.min_block.max(1));
    if r.offset % bs != 0 || u64::from(r.length) % bs != 0 {
        return Err(errno::EINVAL);
    }
    if matches!(op, Op::Read | Op::Write) && r.length > info.max_payload {
        return Err(if session.structured { errno::EOVERFLOW } else { errno::EINVAL });
    }
    Ok(op)
}

/// Reads and drops `len` payload bytes.
async fn skip<R: AsyncRead + Unpin>(
    rd: &mut R,
    len: u32,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    scratch.resize(64 << 10, 0);
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(scratch.len());
        rd.read_exact(&mut scratch[..n]).await?;
        left -= n;
    }
    Ok(())
}

/// The pieces of a request of `len` bytes: one per [`CHUNK`].
fn pieces_of(len: u32) -> usize {
    (len as usize).div_ceil(CHUNK).max(1)
}

/// Payload buffers for `req`, each a window of its piece's length; `None` if no buffer could
/// be had (the device is out of DMA memory).
async fn windows<D: Device>(
    w: &Worker<D>,
    len: u32,
) -> Option<(Taken<D::Buf>, Vec<Window<D::Buf>>)> {
    let mut taken = w.pool.take(pieces_of(len)).await.ok()?;
    let mut pieces = Vec::new();
    for (i, b) in taken.take_all().into_iter().enumerate() {
        let n = (len as usize - i * CHUNK).min(CHUNK);
        match Window::new(b, 0, n) {
            Some(win) => pieces.push(win),
            None => return None, // a buffer smaller than asked: the device's bug
        }
    }
    Some((taken, pieces))
}

async fn read<D: Device>(w: &Worker<D>, req: &Request) -> Reply<D::Buf> {
    let cookie = req.cookie;
    if req.length == 0 {
        return Reply::failed(req, 0);
    }
    let Some((taken, pieces)) = windows(w, req.length).await else {
        return Reply::failed(req, errno::ENOMEM);
    };
    let q = &*w.queue;
    let mut pieces = pieces;
    let done = if pieces.len() == 1 {
        // The common case (up to 128 KiB): no futures to box and join.
        let p = pieces.pop().expect("one piece");
        vec![q.read_all(req.offset, p).await]
    } else {
        let at = |i: usize| req.offset + (i * CHUNK) as u64;
        join_all(pieces.into_iter().enumerate().map(|(i, p)| q.read_all(at(i), p))).await
    };
    let (mut good, mut error, mut failed) = (0u64, 0u32, false);
    let mut pieces = Vec::with_capacity(done.len());
    for (r, p) in done {
        match r {
            Ok(()) if !failed => good += p.io_len() as u64,
            Ok(()) => {}
            Err(e) if !failed => {
                failed = true;
                good += e.done as u64;
                error = proto::errno_of(&e.error, false);
            }
            Err(_) => {}
        }
        pieces.push(p);
    }
    Reply::Read { cookie, offset: req.offset, pieces, good, error, bufs: Some(taken) }
}

async fn command<D: Device>(w: &Worker<D>, req: &Request, op: Op) -> Reply<D::Buf> {
    let q = &*w.queue;
    let (pos, len) = (req.offset, u64::from(req.length));
    let r = match op {
        Op::Flush => q.flush().await,
        Op::Trim => q.discard(pos, len).await,
        Op::Zeroes => zeroes(w, req).await,
        Op::Read | Op::Write => unreachable!("reads and writes have their own paths"),
    };
    // FUA on a command that wrote: durable before the reply.
    let r = match r {
        Ok(()) if req.flags & cmd_flag::FUA != 0 && !matches!(op, Op::Flush) => q.flush().await,
        r => r,
    };
    let error = r.err().map_or(0, |e| proto::errno_of(&e, !matches!(op, Op::Flush)));
    Reply::Status { cookie: req.cookie, error }
}

/// Write zeroes: the device's own where it has one; zeroed blocks written otherwise, unless
/// the client asked for a fast zero (`ENOTSUP` at once, nothing written).
async fn zeroes<D: Device>(w: &Worker<D>, req: &Request) -> Result<(), mfio::Error> {
    let q = &*w.queue;
    let (pos, len) = (req.offset, u64::from(req.length));
    let fast = req.flags & cmd_flag::FAST_ZERO != 0;
    let unsupported = mfio::Error::new(mfio::ErrorKind::Unsupported, mfio::Origin::Framework);
    if !w.info.caps.write_zeroes {
        return if fast { Err(unsupported) } else { mfio::zero_fill(q, pos, len, CHUNK).await };
    }
    let how = if req.flags & cmd_flag::NO_HOLE != 0 { Zeroes::Allocate } else { Zeroes::MayUnmap };
    match q.write_zeroes(pos, len, how).await {
        // A file system without zeroing (the file backend tries fallocate).
        Err(e) if e.kind() == mfio::ErrorKind::Unsupported && !fast => {
            mfio::zero_fill(q, pos, len, CHUNK).await
        }
        r => r,
    }
}

/// Polls every future to completion, in one task: the I/O they send on their first poll
/// reaches the device as one batch. Results in order.
async fn join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in out.iter_mut().zip(futs.iter_mut()) {
            if let Some(f) = fut {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *slot = Some(v);
                        *fut = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("every future finished")).collect()
}

/// Sends replies as they come, each batch in one vectored write; after a socket error it
/// only drains (so request tasks never wait on a dead client, and buffers go back).
async fn writer<W: AsyncWrite + Unpin, B: IoBuf + AsMut<[u8]>>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out<B>>,
    structured: bool,
    spin: Option<Rc<Spin>>,
) {
    let mut batch = Vec::new();
    let mut broken = false;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if !broken {
            let wrote =
                tokio::time::timeout(STALL_TIMEOUT, write_batch(&mut wr, &mut batch, structured));
            if !matches!(wrote.await, Ok(Ok(()))) {
                // A dead or stalled client: no more replies, and the reader stops at its next
                // request (what is queued is still drained, so buffers and slots come back).
                broken = true;
                rx.close();
            }
        }
        if let Some(s) = &spin {
            s.activity(); // the client's next request is likely on its way
        }
        for out in batch.drain(..) {
            out.reply.recycle(); // buffers to the pool, then the slot and quota (dropped)
        }
    }
    if !broken {
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    }
}

/// The wire form of a batch of replies: headers in one buffer, payloads in place.
async fn write_batch<W: AsyncWrite + Unpin, B: IoBuf + AsMut<[u8]>>(
    wr: &mut W,
    batch: &mut [Out<B>],
    structured: bool,
) -> std::io::Result<()> {
    // First the header bytes (so the slices below can borrow them), as (start, end) spans.
    let mut heads = Vec::with_capacity(batch.len() * 48);
    let mut spans = Vec::with_capacity(batch.len() * 2);
    for r in batch.iter().map(|o| &o.reply) {
        let a = heads.len();
        match r {
            Reply::Status { cookie, error } => {
                heads.extend_from_slice(&proto::simple_reply(*cookie, *error))
            }
            Reply::Read { cookie, error, .. } if !structured => {
                heads.extend_from_slice(&proto::simple_reply(*cookie, *error))
            }
            Reply::Read { cookie, offset, good, error, .. } => {
                if *good > 0 {
                    let done = if *error == 0 { reply::FLAG_DONE } else { 0 };
                    let len = (8 + *good) as u32;
                    let h = proto::chunk_header(done, reply::OFFSET_DATA, *cookie, len);
                    heads.extend_from_slice(&h);
                    heads.extend_from_slice(&offset.to_be_bytes());
                }
            }
        }
        let b = heads.len();
        // What follows a structured read's data: the error (at its offset when some data
        // came before it), or the end of an empty reply.
        if let Reply::Read { cookie, offset, good, error, .. } = r {
            if structured {
                let done = reply::FLAG_DONE;
                if *error != 0 && *good > 0 {
                    heads.extend_from_slice(&proto::chunk_header(
                        done,
                        reply::ERROR_OFFSET,
                        *cookie,
                        14,
                    ));
                    heads.extend_from_slice(&error.to_be_bytes());
                    heads.extend_from_slice(&0u16.to_be_bytes()); // no message
                    heads.extend_from_slice(&(offset + good).to_be_bytes());
                } else if *error != 0 {
                    heads.extend_from_slice(&proto::chunk_header(done, reply::ERROR, *cookie, 6));
                    heads.extend_from_slice(&error.to_be_bytes());
                    heads.extend_from_slice(&0u16.to_be_bytes());
                } else if *good == 0 {
                    heads.extend_from_slice(&proto::chunk_header(done, reply::NONE, *cookie, 0));
                }
            }
        }
        spans.push((a, b, heads.len()));
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 4);
    for (r, &(a, b, c)) in batch.iter_mut().map(|o| &mut o.reply).zip(&spans) {
        slices.push(IoSlice::new(&heads[a..b]));
        if let Reply::Read { pieces, good, error, .. } = r {
            // Data: all of it on success; the good prefix of a failed structured read; none
            // for a failed simple read (its header carries the error).
            let mut left = if *error == 0 || structured { *good as usize } else { 0 };
            for p in pieces.iter_mut() {
                if left == 0 {
                    break;
                }
                let s = &*p.as_mut_slice();
                let n = s.len().min(left);
                slices.push(IoSlice::new(&s[..n]));
                left -= n;
            }
        }
        slices.push(IoSlice::new(&heads[b..c]));
    }
    slices.retain(|s| !s.is_empty());
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = wr.write_vectored(&rest[..rest.len().min(1024)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    wr.flush().await
}
