//! Replies: what a request task hands the writer, and the writer, which sends whatever is
//! ready in one vectored write (headers in one buffer, read payloads in place).

use super::*;

/// A reply waiting for the writer.
pub(super) enum Reply<B: IoBuf> {
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
    pub(super) fn failed(req: &Request, error: u32) -> Self {
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

/// A reply, with what it holds of its connection's limits (its in-flight slot, and for a read
/// its share of the buffer pool): both are given back only once the writer has sent it, so a
/// client that stops reading its replies stops being served, instead of queueing without end.
pub(super) struct Out<B: IoBuf> {
    reply: Reply<B>,
    _slot: OwnedSemaphorePermit,
    _quota: Option<OwnedSemaphorePermit>,
}

pub(super) type Replies<B> = mpsc::UnboundedSender<Out<B>>;

/// Counts an error reply and hands the reply to the writer, with the limits it holds.
pub(super) fn send<B: IoBuf>(
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

/// Sends replies as they come, each batch in one vectored write; after a socket error it
/// only drains (so request tasks never wait on a dead client, and buffers go back).
pub(super) async fn writer<W: AsyncWrite + Unpin, B: IoBuf + AsMut<[u8]>>(
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
pub(super) async fn write_batch<W: AsyncWrite + Unpin, B: IoBuf + AsMut<[u8]>>(
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
