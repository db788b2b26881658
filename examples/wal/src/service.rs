//! A log for many threads: one thread owns the queue and the [`Wal`], and appends reach it
//! over a channel from any thread, blocking or async. Appends that arrive together are
//! committed together (group commit across threads).

use crate::{Config, Lsn, Recovery, Wal, WalError};
use core::future::poll_fn;
use core::task::Poll;
use futures::channel::{mpsc, oneshot};
use futures::stream::{FuturesUnordered, StreamExt};
use mfio_devices::Device;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// How the service gets its log.
#[derive(Clone, Debug)]
pub enum Open {
    /// Format a new one.
    Format(Config),
    /// Open and recover the one there.
    Recover(Config),
}

enum Request {
    Append(Vec<u8>, oneshot::Sender<Result<Lsn, WalError>>),
    Checkpoint(Lsn, oneshot::Sender<Result<(), WalError>>),
    Shutdown,
}

/// The thread that owns a log. Dropping it (or [`shutdown`](Self::shutdown)) finishes the
/// appends already sent and stops the thread; later ones fail with [`WalError::Closed`].
pub struct WalService {
    handle: WalHandle,
    thread: Option<JoinHandle<()>>,
}

/// A way to the log from any thread: `Send`, `Sync` and cheap to clone.
#[derive(Clone)]
pub struct WalHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl WalService {
    /// Starts the service on queue `queue` of `dev`: it formats or recovers the log (handing
    /// every recovered record to `replay`, on the service thread) before it returns.
    pub fn start<D: Device>(
        dev: Arc<D>,
        queue: usize,
        open: Open,
        replay: impl FnMut(Lsn, &[u8]) + Send + 'static,
    ) -> Result<(Self, Recovery), WalError> {
        let (tx, rx) = mpsc::unbounded();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mfio-wal".into())
            .spawn(move || serve(dev, queue, open, replay, rx, ready_tx))
            .map_err(|_| WalError::Closed)?;
        let recovery = ready_rx.recv().map_err(|_| WalError::Closed)?;
        let service = WalService { handle: WalHandle { tx }, thread: Some(thread) };
        Ok((service, recovery?))
    }

    /// A handle for another thread.
    pub fn handle(&self) -> WalHandle {
        self.handle.clone()
    }

    /// Finishes the appends already sent and stops the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.handle.tx.unbounded_send(Request::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WalService {
    fn drop(&mut self) {
        self.stop();
    }
}

impl WalHandle {
    /// Appends `payload` and resolves once it is durable (see [`Wal::append`]). The future is
    /// `Send`: await it on any runtime.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Lsn, WalError> {
        let (tx, rx) = oneshot::channel();
        self.tx.unbounded_send(Request::Append(payload, tx)).map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Blocking [`append`](Self::append): waits on this thread.
    pub fn append_blocking(&self, payload: &[u8]) -> Result<Lsn, WalError> {
        futures::executor::block_on(self.append(payload.to_vec()))
    }

    /// [`Wal::checkpoint`].
    pub async fn checkpoint(&self, lsn: Lsn) -> Result<(), WalError> {
        let (tx, rx) = oneshot::channel();
        self.tx.unbounded_send(Request::Checkpoint(lsn, tx)).map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }

    /// Blocking [`checkpoint`](Self::checkpoint).
    pub fn checkpoint_blocking(&self, lsn: Lsn) -> Result<(), WalError> {
        futures::executor::block_on(self.checkpoint(lsn))
    }
}

/// The service thread: open the log, then serve requests until shut down.
fn serve<D: Device>(
    dev: Arc<D>,
    index: usize,
    open: Open,
    replay: impl FnMut(Lsn, &[u8]),
    mut rx: mpsc::UnboundedReceiver<Request>,
    ready: std::sync::mpsc::Sender<Result<Recovery, WalError>>,
) {
    let queue = match dev.open_queue(index) {
        Ok(q) => Rc::new(q),
        Err(_) => {
            let _ = ready.send(Err(WalError::NoQueue));
            return;
        }
    };
    let wal = match open {
        Open::Format(cfg) => Wal::format_blocking(dev, queue.clone(), &cfg),
        Open::Recover(cfg) => Wal::open_blocking(dev, queue.clone(), &cfg, replay),
    };
    let wal = match wal {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(wal.recovery()));
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    // One future per request in flight, all on this thread: the committer gathers whatever
    // they staged in a round into one batch.
    let requests = poll_fn(|cx| {
        while open {
            match rx.poll_next_unpin(cx) {
                Poll::Ready(Some(Request::Shutdown)) | Poll::Ready(None) => open = false,
                Poll::Ready(Some(req)) => pending.push(answer(&wal, req)),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(())) = pending.poll_next_unpin(cx) {}
        if !open && pending.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    mfio::block_on(&**wal.queue(), wal.run_with(requests));
}

async fn answer<D: Device>(wal: &Wal<D>, req: Request) {
    match req {
        Request::Append(payload, tx) => {
            let _ = tx.send(wal.append(&payload).await);
        }
        Request::Checkpoint(lsn, tx) => {
            let _ = tx.send(wal.checkpoint(lsn).await);
        }
        Request::Shutdown => {}
    }
}
