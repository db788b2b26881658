//! The state a device and its queues share: what bring-up learnt ([`BlkInfo`], the queue
//! limits), the transport, the queues' parts while no queue holds them, and whether the device
//! was reset after a failure.

use crate::parts::{Limits, QueueParts};
use crate::spec::blk;
use crate::transport::Transport;
use mfio_pci::{CompletionMode, PciDevice};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

/// What the device told us in its configuration, after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkInfo {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size in bytes (BLK_SIZE, else 512): offsets and lengths must be multiples.
    pub block_size: u32,
    /// Largest segment, in bytes (SIZE_MAX).
    pub size_max: Option<u32>,
    /// Most data segments per request (SEG_MAX).
    pub seg_max: Option<u32>,
    /// Request queues the device has.
    pub num_queues: u16,
    /// The device refuses writes (RO).
    pub read_only: bool,
    /// Largest discard, in sectors (DISCARD).
    pub max_discard_sectors: u32,
    /// Largest write-zeroes, in sectors (WRITE_ZEROES).
    pub max_write_zeroes_sectors: u32,
    /// Whether write-zeroes may unmap (WRITE_ZEROES).
    pub write_zeroes_may_unmap: bool,
}

impl BlkInfo {
    /// Capacity in bytes, whole blocks.
    pub fn capacity_bytes(&self) -> u64 {
        let bs = u64::from(self.block_size);
        self.capacity_sectors.saturating_mul(blk::SECTOR_SIZE) / bs * bs
    }
}

/// State shared by the device handle and its queues.
pub(crate) struct Shared<D: PciDevice> {
    pub dev: D,
    pub transport: Transport,
    pub features: u64,
    pub info: BlkInfo,
    pub limits: Limits,
    pub slots: Mutex<Vec<Option<QueueParts>>>,
    /// The mode [`VirtioBlk::queue`] gives.
    pub completion: CompletionMode,
    /// MSI-X vectors were routed at bring-up.
    pub msix: bool,
    /// Set once the device was reset after a failure: every queue fails its I/O.
    pub broken: AtomicBool,
    pub broken_status: AtomicU8,
}

impl<D: PciDevice> Shared<D> {
    /// Resets the device (so it does no more DMA), marks it broken. The caller then fails its
    /// in-flight I/O; other queues see `broken` and fail theirs.
    pub(crate) fn quiesce(&self, why: &str) {
        if self.dev.is_removed() {
            return self.give_back();
        }
        let st = self.transport.status(&self.dev);
        tracing::error!(
            status = st,
            "virtio-blk {}: {why}; resetting the device",
            self.dev.address()
        );
        if let Err(e) = self.transport.reset(&self.dev) {
            tracing::error!("{e}; turning bus mastering off to stop its DMA");
            if !self.dev.stop_dma() {
                // The queues fail (and give back) what they hold once this returns: with a
                // device that may still write it, that would free memory under its DMA.
                // Not `eprintln!`: it panics on a closed stderr, and this must reach the abort.
                let _ = writeln!(
                    std::io::stderr(),
                    "mfio-virtio: {} neither resets nor stops its DMA; aborting rather than \
                     freeing memory it may still write",
                    self.dev.address()
                );
                std::process::abort();
            }
        }
        self.broken_status.store(st, Ordering::Relaxed);
        self.broken.store(true, Ordering::Release);
    }
}

impl<D: PciDevice> Shared<D> {
    /// The kernel asked for the device back (hot removal): reset it while its registers may
    /// still answer (a function already gone reads all ones, which ends the reset at once),
    /// give it back, and mark it broken, so every queue fails its I/O with `Gone`.
    #[cold]
    fn give_back(&self) {
        if !self.broken.load(Ordering::Acquire) {
            tracing::warn!(
                "virtio-blk {}: device removed: resetting and releasing it",
                self.dev.address()
            );
            let _ = self.transport.reset(&self.dev);
        }
        self.dev.release();
        if !self.dev.stop_dma() {
            // As in `quiesce`: the queues free what they hold once this returns.
            let _ = writeln!(
                std::io::stderr(),
                "mfio-virtio: {} was removed but its DMA could not be stopped; aborting rather                  than freeing memory it may still write",
                self.dev.address()
            );
            std::process::abort();
        }
        self.broken.store(true, Ordering::Release);
    }
}

impl<D: PciDevice> Drop for Shared<D> {
    fn drop(&mut self) {
        // No queue is left, so nothing is in flight; still, stop the device before its rings
        // are freed.
        if !self.broken.load(Ordering::Acquire)
            && !self.dev.is_removed()
            && self.transport.reset(&self.dev).is_err()
        {
            tracing::warn!("virtio-blk {}: reset on close timed out", self.dev.address());
        }
        if !self.dev.stop_dma() {
            tracing::warn!(
                "virtio-blk {}: bus mastering could not be turned off",
                self.dev.address()
            );
        }
        if self.msix {
            let _ = self.dev.disable_msix();
        }
    }
}
