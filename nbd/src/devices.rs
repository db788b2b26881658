//! [`Device`]s for the backends this project has: an NVMe namespace and a virtio-blk device
//! (through VFIO, or their models), and an image file or block device.

use crate::export::Device;
use mfio::backends::{FileBackend, FileOptions};
use mfio_dma::{DmaBuffer, PagePolicy};
use mfio_nvme::{Controller, IoQueue};
use mfio_pci::{CompletionMode, PciDevice};
use mfio_virtio::{BlkQueue, VirtioBlk};
use std::sync::Arc;

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
}

impl File {
    /// `path`, opened by each worker with `opts` (`block_size` is what clients must align
    /// to: 512 for an image that stands in for a disk).
    pub fn new(path: impl Into<std::path::PathBuf>, opts: FileOptions) -> Self {
        Self { path: path.into(), opts }
    }
}

impl Device for File {
    type Queue = FileBackend;
    type Buf = Vec<u8>;

    fn open_queue(&self, _index: usize) -> Result<FileBackend, String> {
        FileBackend::open_with(&self.path, &self.opts)
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn max_queues(&self) -> usize {
        64
    }

    fn buffer(&self, len: usize) -> Result<Vec<u8>, String> {
        Ok(vec![0u8; len])
    }
}
