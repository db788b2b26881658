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
use crate::spin::{Busy, Spin};
use crate::stats::Stats;
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

mod replies;
mod requests;

use replies::*;
use requests::*;

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

/// What a checked request asks of the device.
enum Op {
    Read,
    Write,
    Flush,
    Trim,
    Zeroes,
}

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
