//! The parts a queue is made of, set up at bring-up and kept by the device while no
//! [`BlkQueue`](crate::BlkQueue) holds them: the virtqueue, a control slot per buffer ID
//! (header, status, range, GET_ID answer, indirect table, in DMA memory) and the bounce pool.

use crate::spec::ring;
use crate::virtqueue::{RingLayout, Virtqueue};
use mfio_dma::{DmaBuffer, DmaPool, DmaSlice, DmaSpace};
use mfio_pci::EventFd;
use std::sync::Arc;

/// Control slot layout: header, status, one range, the GET_ID answer, the indirect table.
pub(crate) const CTRL_HEADER: usize = 0;
pub(crate) const CTRL_STATUS: usize = 16;
pub(crate) const CTRL_RANGE: usize = 32;
pub(crate) const CTRL_ID: usize = 64;
pub(crate) const CTRL_TABLE: usize = 128;
pub(crate) const CTRL_SLOT: usize = 2048;
/// Descriptors in a request's indirect table.
pub(crate) const TABLE_ENTRIES: usize = (CTRL_SLOT - CTRL_TABLE) / ring::DESC_SIZE;
/// What the status byte holds until the device writes it.
pub(crate) const STATUS_UNSET: u8 = 0xff;
/// Per-queue limits, from the negotiated features and the options.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Limits {
    pub layout: RingLayout,
    pub indirect: bool,
    pub event_idx: bool,
    /// Data segments per request (SEG_MAX, else 1).
    pub seg_max: usize,
    /// Bytes per segment (SIZE_MAX, else no limit), a multiple of 512.
    pub size_max: usize,
    pub max_transfer: usize,
    pub bounce_size: usize,
    pub bounce_slots: usize,
}

/// A virtqueue and its pools, set up at bring-up; moved into a [`BlkQueue`](crate::BlkQueue) while one exists.
pub(crate) struct QueueParts {
    pub(crate) index: u16,
    pub(crate) notify: u64,
    pub(crate) vq: Virtqueue,
    /// The control slots, one per buffer ID (so a request's is known before it is added, and
    /// never allocated or freed on the I/O path).
    pub(crate) ctrl: DmaBuffer,
    /// Each control slot's IOVA.
    pub(crate) ctrl_iova: Vec<u64>,
    pub(crate) bounce: DmaPool,
    /// The driver's end of the queue's MSI-X eventfd, when it was given a vector.
    pub(crate) irq: Option<EventFd>,
}

impl QueueParts {
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        index: u16,
        size: u16,
        limits: &Limits,
        irq: Option<EventFd>,
    ) -> Result<Self, String> {
        let vq = Virtqueue::new(space, size, limits.layout, limits.event_idx)?;
        let n = usize::from(size);
        let ctrl = space
            .alloc(n * CTRL_SLOT)
            .map_err(|e| format!("request control slots ({} bytes): {e}", n * CTRL_SLOT))?;
        // Every control slot lies in one page, so each has one IOVA: find them now, once.
        let ctrl_iova = (0..n)
            .map(|k| ctrl.contiguous_iova(k * CTRL_SLOT, CTRL_SLOT).map(|i| i.get()))
            .collect::<Option<Vec<u64>>>()
            .ok_or("a request control slot is not IOVA-contiguous")?;
        let bounce = DmaPool::new(space, limits.bounce_size, limits.bounce_slots, 4096)
            .map_err(|e| format!("bounce pool: {e}"))?;
        Ok(Self { index, notify: 0, vq, ctrl, ctrl_iova, bounce, irq })
    }

    /// Whether the queue has an MSI-X vector.
    pub(crate) fn has_interrupt(&self) -> bool {
        self.irq.is_some()
    }

    /// A descriptor of its own for the queue's interrupt eventfd (for a [`Wakeup`]).
    pub(crate) fn interrupt(&self) -> Option<Result<EventFd, mfio_pci::Errno>> {
        self.irq.as_ref().map(mfio_pci::dup_eventfd)
    }

    pub(crate) fn with_notify(mut self, notify: u64) -> Self {
        self.notify = notify;
        self
    }

    pub(crate) fn size(&self) -> u16 {
        self.vq.size()
    }

    pub(crate) fn ring_iovas(&self) -> (u64, u64, u64) {
        self.vq.iovas()
    }

    /// The control slot of buffer `id`.
    #[inline]
    pub(crate) fn ctrl_mem(&self, id: u16) -> DmaSlice<'_> {
        self.ctrl
            .mem()
            .sub(usize::from(id) * CTRL_SLOT, CTRL_SLOT)
            .expect("a control slot per buffer ID")
    }
}
