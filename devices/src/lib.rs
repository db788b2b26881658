//! mfio-devices: block devices as a server or an engine opens them. A [`Device`] gives a queue
//! per thread (queues belong to one thread: see mfio-rt's threading model) and the buffers
//! payloads land in; [`Nvme`], [`Virtio`] and [`File`] are the backends this project has (an
//! NVMe namespace and a virtio-blk device, through VFIO or their models; an image file or a
//! block device). The NBD server, the write-ahead log and the redb backend all take one.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use mfio::backends::{FileBackend, FileOptions};
use mfio::{BlockCommands, IoBufMut, ReadAt, Window};
use mfio_dma::{DmaBuffer, PagePolicy};
use mfio_nvme::{Controller, IoQueue};
use mfio_pci::{CompletionMode, PciDevice};
use mfio_virtio::{BlkQueue, VirtioBlk};
use std::sync::Arc;

/// A block device that opens one queue per thread and makes the buffers payloads land in.
pub trait Device: Send + Sync + 'static {
    /// A worker thread's queue: reads, writes and the block commands.
    type Queue: BlockCommands + ReadAt + 'static;
    /// A payload buffer: the caller fills it (from a socket, a log record) or reads it, and the
    /// device reads or writes it without a copy (DMA memory for a VFIO device).
    type Buf: IoBufMut + AsMut<[u8]> + 'static;

    /// Opens queue `index` (one per thread, `0..max_queues()`), on the thread that will use it.
    fn open_queue(&self, index: usize) -> Result<Self::Queue, String>;

    /// How many queues [`open_queue`](Self::open_queue) can give.
    fn max_queues(&self) -> usize;

    /// A payload buffer of at least `len` bytes.
    fn buffer(&self, len: usize) -> Result<Self::Buf, String>;

    /// Flush and FUA on one queue cover writes completed on every queue (one cache per
    /// device: NVMe, virtio-blk and files all work this way), so a flush on one thread's queue
    /// makes every thread's completed writes durable (NBD's `CAN_MULTI_CONN`).
    fn flush_covers_all_queues(&self) -> bool {
        true
    }
}

/// An NVMe namespace: a queue pair per worker, payloads in the controller's DMA memory.
pub struct Nvme<D: PciDevice> {
    ctrl: Arc<Controller<D>>,
    nsid: u32,
    mode: CompletionMode,
}

impl<D: PciDevice> Nvme<D> {
    /// Namespace `nsid` of `ctrl`; the workers' queues wait for completions in `mode`
    /// (`Adaptive` or `Interrupt` lets an idle worker sleep).
    pub fn new(ctrl: Arc<Controller<D>>, nsid: u32, mode: CompletionMode) -> Self {
        Self { ctrl, nsid, mode }
    }
}

/// Payload buffers of 4 KiB pages: a 2 MiB huge page each would waste most of it.
fn dma_buffer(space: &Arc<mfio_dma::DmaSpace>, len: usize) -> Result<DmaBuffer, String> {
    space.alloc_with(len, PagePolicy::SmallOnly).map_err(|e| format!("DMA memory: {e}"))
}

impl<D: PciDevice + Send + Sync + 'static> Device for Nvme<D> {
    type Queue = IoQueue<D>;
    type Buf = DmaBuffer;

    fn open_queue(&self, _index: usize) -> Result<IoQueue<D>, String> {
        self.ctrl.io_queue_with(self.nsid, self.mode).map_err(|e| format!("NVMe queue: {e}"))
    }

    fn max_queues(&self) -> usize {
        usize::from(self.ctrl.io_queues_granted())
    }

    fn buffer(&self, len: usize) -> Result<DmaBuffer, String> {
        dma_buffer(self.ctrl.device().dma(), len)
    }
}

/// A virtio-blk device: a virtqueue per worker.
pub struct Virtio<D: PciDevice> {
    dev: Arc<VirtioBlk<D>>,
    mode: CompletionMode,
}

impl<D: PciDevice> Virtio<D> {
    /// `dev`'s queues, waiting in `mode` (interrupts need `Options::completion` at bring-up).
    pub fn new(dev: Arc<VirtioBlk<D>>, mode: CompletionMode) -> Self {
        Self { dev, mode }
    }
}

impl<D: PciDevice + Send + Sync + 'static> Device for Virtio<D> {
    type Queue = BlkQueue<D>;
    type Buf = DmaBuffer;

    fn open_queue(&self, index: usize) -> Result<BlkQueue<D>, String> {
        let index = u16::try_from(index).map_err(|_| format!("queue {index}"))?;
        self.dev.queue_with(index, self.mode).map_err(|e| format!("virtqueue {index}: {e}"))
    }

    fn max_queues(&self) -> usize {
        usize::from(self.dev.queue_count())
    }

    fn buffer(&self, len: usize) -> Result<DmaBuffer, String> {
        dma_buffer(self.dev.device().dma(), len)
    }
}

/// An image file or block device: each worker opens it with an io_uring of its own.
pub struct File {
    path: std::path::PathBuf,
    opts: FileOptions,
    direct: bool,
}

impl File {
    /// `path`, opened by each worker with `opts` (`block_size` is what clients must align
    /// to: 512 for an image that stands in for a disk).
    pub fn new(path: impl Into<std::path::PathBuf>, opts: FileOptions) -> Self {
        Self { path: path.into(), opts, direct: false }
    }

    /// Opens with `O_DIRECT`: I/O bypasses the page cache (the kernel's block path, as a
    /// database on a raw device uses it), so offsets, lengths and buffers must be aligned to
    /// the device's logical block size (`opts.block_size`; buffers are page-aligned).
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }
}

/// Buffers start on a page boundary, as `O_DIRECT` needs: a window into a vector a page
/// longer (its heap memory does not move with it).
const PAGE: usize = 4096;

impl Device for File {
    type Queue = FileBackend;
    type Buf = Window<Vec<u8>>;

    fn open_queue(&self, _index: usize) -> Result<FileBackend, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.read(true).write(self.opts.writable);
        if self.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let named = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let file = o.open(&self.path).map_err(named)?;
        FileBackend::from_file(file, &self.opts).map_err(named)
    }

    fn max_queues(&self) -> usize {
        64
    }

    fn buffer(&self, len: usize) -> Result<Window<Vec<u8>>, String> {
        let v = vec![0u8; len + PAGE];
        let skew = v.as_ptr() as usize % PAGE;
        let start = if skew == 0 { 0 } else { PAGE - skew };
        Window::new(v, start, len).ok_or_else(|| "buffer".to_string())
    }
}
