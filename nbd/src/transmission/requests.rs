//! Requests at the device: reads, streamed writes, flush, trim and write zeroes, each
//! ending in its reply.

use super::*;

/// A write streamed to the device: each 128 KiB piece is written as soon as it has been read
/// from the socket, in a buffer of its own (so a client that stalls mid-payload holds one
/// buffer, not the whole request's); the reply goes out once every piece is done.
pub(super) async fn stream_write<D: Device, R: AsyncRead + Unpin>(
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
pub(super) type PendingReply<B> = (Replies<B>, OwnedSemaphorePermit, Option<Busy>);

/// The pieces of one write still in flight, and its reply once they are done.
pub(super) struct WriteDone<B: IoBuf> {
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

/// Payload buffers for `req`, each a window of its piece's length; `None` if no buffer could
/// be had (the device is out of DMA memory).
pub(super) async fn windows<D: Device>(
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

pub(super) async fn read<D: Device>(w: &Worker<D>, req: &Request) -> Reply<D::Buf> {
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

pub(super) async fn command<D: Device>(w: &Worker<D>, req: &Request, op: Op) -> Reply<D::Buf> {
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
pub(super) async fn zeroes<D: Device>(w: &Worker<D>, req: &Request) -> Result<(), mfio::Error> {
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
pub(super) async fn join_all<F: std::future::Future>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output> {
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
