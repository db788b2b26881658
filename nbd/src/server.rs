//! Listeners, worker threads, and where each connection goes.
//!
//! Thread per core: each worker thread owns one device queue (in an interrupt-driven
//! completion mode, so an idle worker sleeps), one current-thread tokio runtime that waits
//! on the queue's polling handle and on its sockets together, and a buffer pool. An acceptor
//! thread takes connections on every listener (TCP, Unix) and hands them to the workers in
//! turn, so several connections spread over the device's queues.

use crate::export::{ExportInfo, MAX_PAYLOAD};
use crate::handshake::{self, HandshakeError};
use crate::pool::{Pool, CHUNK};
use crate::spin::{Spin, Spinner};
pub use crate::stats::Stats;
use crate::transmission::{self, Ended, Worker};
use mfio::{BlockCommands, BlockDevice};
use mfio_devices::Device;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::mpsc;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The export's name (clients asking for the empty name get it too).
    pub name: String,
    /// A description for people.
    pub description: String,
    /// Refuse writes, trims and zeroing (`NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
    /// Worker threads, each with a queue of its own (at most the device's queues).
    pub workers: usize,
    /// Payload buffer memory per worker, in bytes (rounded to 128 KiB buffers; at least what
    /// the largest request needs).
    pub buffer_bytes: usize,
    /// A client that has not finished its handshake by then is disconnected.
    pub handshake_timeout: Duration,
    /// Adaptive polling of the sockets: after a request or a reply, a worker polls its
    /// sockets instead of sleeping for this long, or four times the recent gap between
    /// requests when that is longer, up to 1 ms ([`MAX_SPIN_WINDOW`](crate::MAX_SPIN_WINDOW)).
    /// `None`: sleep at once (the least CPU; each request then wakes the thread). An idle
    /// server sleeps either way.
    pub spin: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: String::new(),
            description: String::new(),
            read_only: false,
            workers: 1,
            buffer_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
            spin: Some(mfio_pci::DEFAULT_SPIN),
        }
    }
}

/// A socket to accept connections on.
pub enum Listener {
    /// TCP (`host:port`).
    Tcp(std::net::TcpListener),
    /// A Unix socket.
    Unix(std::os::unix::net::UnixListener),
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A worker could not open its queue, or the device is unfit to export.
    #[error("worker {worker}: {message}")]
    Worker {
        /// Which worker.
        worker: usize,
        /// What went wrong.
        message: String,
    },
    /// A thread or runtime could not be made, or a listener could not be registered.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running server. Dropping it stops accepting; open connections end with the process.
pub struct Server {
    info: Arc<ExportInfo>,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

/// An accepted connection on its way to a worker.
enum Conn {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Server {
    /// Starts `workers` threads on `device` and accepts on `listeners`.
    pub fn start<D: Device>(
        device: Arc<D>,
        cfg: Config,
        listeners: Vec<Listener>,
    ) -> Result<Server, ServeError> {
        let workers = cfg.workers.clamp(1, device.max_queues().max(1));
        let stats = Arc::new(Stats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut senders = Vec::new();
        for index in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel::<(Conn, Arc<ExportInfo>)>();
            senders.push(tx);
            let (device, ready, stats, cfg) =
                (device.clone(), ready_tx.clone(), stats.clone(), cfg.clone());
            std::thread::Builder::new()
                .name(format!("nbd-worker-{index}"))
                .spawn(move || worker(index, device, cfg, stats, ready, rx))?;
        }
        drop(ready_tx);
        // Every worker opens its queue and reports the device's geometry, or why it could not.
        let mut geometry = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok((_, Ok(g))) => geometry = geometry.or(Some(g)),
                Ok((worker, Err(message))) => return Err(ServeError::Worker { worker, message }),
                Err(_) => {
                    let message = "the worker thread ended while starting".into();
                    return Err(ServeError::Worker { worker: 0, message });
                }
            }
        }
        let (size, block, caps) = geometry.expect("at least one worker reported");
        let min_block = block.max(1);
        if !min_block.is_power_of_two() || min_block > 65536 {
            let message = format!("block size {min_block}: NBD needs a power of two up to 64 KiB");
            return Err(ServeError::Worker { worker: 0, message });
        }
        let info = Arc::new(ExportInfo {
            name: cfg.name.clone(),
            description: cfg.description.clone(),
            size: size / u64::from(min_block) * u64::from(min_block),
            min_block,
            preferred_block: min_block.max(4096),
            max_payload: MAX_PAYLOAD,
            caps,
            read_only: cfg.read_only || caps.read_only,
            multi_conn: device.flush_covers_all_queues(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (info2, stats2) = (info.clone(), stats.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // Register the listeners here, so a failure is this call's error.
        let mut tokio_listeners = Vec::new();
        {
            let _guard = rt.enter();
            for l in listeners {
                tokio_listeners.push(match l {
                    Listener::Tcp(l) => {
                        l.set_nonblocking(true)?;
                        Accept::Tcp(tokio::net::TcpListener::from_std(l)?)
                    }
                    Listener::Unix(l) => {
                        l.set_nonblocking(true)?;
                        Accept::Unix(tokio::net::UnixListener::from_std(l)?)
                    }
                });
            }
        }
        let acceptor = std::thread::Builder::new().name("nbd-accept".into()).spawn(move || {
            rt.block_on(accept(tokio_listeners, senders, info2, stats2, stop_rx));
        })?;
        Ok(Server { info, stats, stop: Some(stop_tx), acceptor: Some(acceptor) })
    }

    /// The export as clients see it.
    pub fn info(&self) -> &ExportInfo {
        &self.info
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Serves until the acceptor ends (it does not, unless a listener fails).
    pub fn wait(mut self) {
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

enum Accept {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

async fn accept(
    listeners: Vec<Accept>,
    workers: Vec<mpsc::UnboundedSender<(Conn, Arc<ExportInfo>)>>,
    info: Arc<ExportInfo>,
    stats: Arc<Stats>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<Conn>();
    let mut loops = Vec::new();
    for l in listeners {
        let tx = conn_tx.clone();
        loops.push(tokio::spawn(async move {
            loop {
                let conn = match &l {
                    Accept::Tcp(l) => l.accept().await.and_then(|(s, _)| {
                        s.set_nodelay(true)?; // a reply must not wait for the next one
                        s.into_std().map(Conn::Tcp)
                    }),
                    Accept::Unix(l) => {
                        l.accept().await.and_then(|(s, _)| s.into_std().map(Conn::Unix))
                    }
                };
                match conn {
                    Ok(c) => {
                        if tx.send(c).is_err() {
                            return;
                        }
                    }
                    // Out of descriptors, a connection reset before accept: wait and go on.
                    Err(e) => {
                        tracing::warn!("nbd: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    drop(conn_tx);
    let mut next = 0usize;
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            c = conn_rx.recv() => match c {
                Some(c) => {
                    stats.connections.fetch_add(1, Relaxed);
                    let _ = workers[next % workers.len()].send((c, info.clone()));
                    next += 1;
                }
                None => break,
            },
        }
    }
    for l in loops {
        l.abort();
    }
}

type Ready = std::sync::mpsc::Sender<(usize, Result<(u64, u32, mfio::Capabilities), String>)>;

/// A worker thread: its queue, its runtime, its connections.
fn worker<D: Device>(
    index: usize,
    device: Arc<D>,
    cfg: Config,
    stats: Arc<Stats>,
    ready: Ready,
    mut conns: mpsc::UnboundedReceiver<(Conn, Arc<ExportInfo>)>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send((index, Err(format!("runtime: {e}"))));
            return;
        }
    };
    let queue = match device.open_queue(index) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            let _ = ready.send((index, Err(e)));
            return;
        }
    };
    let _ = ready.send((index, Ok((queue.capacity(), queue.block_size(), queue.capabilities()))));
    let buffers = (cfg.buffer_bytes / CHUNK).max((MAX_PAYLOAD as usize).div_ceil(CHUNK));
    let dev = device.clone();
    let pool = Pool::new(buffers, move || dev.buffer(CHUNK));
    let local = tokio::task::LocalSet::new();
    let spin = cfg.spin.map(Spin::new);
    local.block_on(&rt, async move {
        tokio::task::spawn_local(mfio_rt::tokio::drive(queue.clone()));
        if let Some(s) = &spin {
            tokio::task::spawn_local(Spinner(s.clone()));
        }
        let mut shared: Option<Rc<Worker<D>>> = None;
        while let Some((conn, info)) = conns.recv().await {
            let w = shared
                .get_or_insert_with(|| {
                    Rc::new(Worker {
                        queue: queue.clone(),
                        pool: pool.clone(),
                        info,
                        stats: stats.clone(),
                        spin: spin.clone(),
                    })
                })
                .clone();
            let timeout = cfg.handshake_timeout;
            match conn {
                Conn::Tcp(s) => match tokio::net::TcpStream::from_std(s) {
                    Ok(s) => drop(tokio::task::spawn_local(connection(w, s, timeout))),
                    Err(e) => tracing::warn!("nbd: a TCP connection: {e}"),
                },
                Conn::Unix(s) => match tokio::net::UnixStream::from_std(s) {
                    Ok(s) => drop(tokio::task::spawn_local(connection(w, s, timeout))),
                    Err(e) => tracing::warn!("nbd: a Unix connection: {e}"),
                },
            }
        }
    });
}

/// Receive buffer of a connection: room for many request headers per socket read (reads
/// batch), small enough that little of a write's payload is read into it rather than into
/// its DMA buffer.
const RECV_BUF: usize = 1024;

/// One connection from handshake to close.
async fn connection<D, S>(w: Rc<Worker<D>>, stream: S, timeout: Duration)
where
    D: Device,
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    w.stats.active.fetch_add(1, Relaxed);
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(RECV_BUF, rd);
    let session = match tokio::time::timeout(
        timeout,
        handshake::negotiate(&mut rd, &mut wr, &w.info),
    )
    .await
    {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            if matches!(e, HandshakeError::Violation(_)) {
                w.stats.violations.fetch_add(1, Relaxed);
            }
            tracing::debug!("nbd: handshake: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("nbd: handshake timed out");
            None
        }
    };
    match session {
        None => {
            w.stats.failed_handshakes.fetch_add(1, Relaxed);
        }
        Some(session) => match transmission::serve(w.clone(), rd, wr, session).await {
            Ended::Violation(why) => {
                w.stats.violations.fetch_add(1, Relaxed);
                tracing::warn!("nbd: closed a connection that broke the protocol: {why}");
            }
            Ended::Io(e) => tracing::debug!("nbd: connection: {e}"),
            Ended::Disconnect | Ended::Closed => {}
        },
    }
    w.stats.active.fetch_sub(1, Relaxed);
}
