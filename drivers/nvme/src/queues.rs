//! Submission and completion rings in DMA memory.
//!
//! The submission queue keeps `tail` (where the next command goes) and `committed_tail` (what
//! the controller was last told), so [`SubmissionQueue::commit`] rings the doorbell once per
//! batch. The completion queue reads each entry's last dword with Acquire to test the phase
//! tag before it reads the rest of the entry.

use crate::error::NvmeError;
use crate::spec::{regs, Command, Completion, COMMAND_SIZE, COMPLETION_SIZE};
use mfio_dma::{DmaBuffer, DmaSpace};
use mfio_pci::PciDevice;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// A submission queue: commands for the controller.
pub(crate) struct SubmissionQueue {
    mem: DmaBuffer,
    iova: u64,
    entries: u16,
    tail: u16,
    committed_tail: u16,
    /// How far the controller has consumed (from completions' SQ head field).
    head: u16,
    doorbell: u64,
}

impl SubmissionQueue {
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        qid: u16,
        entries: u16,
        dstrd: u8,
    ) -> Result<Self, NvmeError> {
        let (mem, iova) = ring(space, usize::from(entries) * COMMAND_SIZE)?;
        Ok(Self {
            iova,
            mem,
            entries,
            tail: 0,
            committed_tail: 0,
            head: 0,
            doorbell: regs::sq_tail_doorbell(qid, dstrd),
        })
    }

    /// Where the controller finds the ring.
    pub(crate) fn iova(&self) -> u64 {
        self.iova
    }

    /// Number of entries.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Entries free for new commands (one is always left empty: full and empty differ).
    pub(crate) fn free(&self) -> u16 {
        let used = (self.tail + self.entries - self.head) % self.entries;
        self.entries - 1 - used
    }

    /// Writes `cmd` at the tail. The caller has checked [`free`](Self::free).
    pub(crate) fn push(&mut self, cmd: &Command) {
        debug_assert!(self.free() > 0, "push on a full submission queue");
        let off = usize::from(self.tail) * COMMAND_SIZE;
        self.mem.mem().copy_from_slice(off, &cmd.to_bytes());
        self.tail = (self.tail + 1) % self.entries;
    }

    /// Tells the controller about every command pushed since the last commit: one doorbell.
    /// Returns whether it rang.
    pub(crate) fn commit<D: PciDevice>(&mut self, dev: &D) -> bool {
        if self.tail == self.committed_tail {
            return false;
        }
        // The entries must be visible in memory before the controller learns of them.
        fence(Ordering::Release);
        dev.write32(0, self.doorbell, u32::from(self.tail));
        self.committed_tail = self.tail;
        true
    }

    /// Records the controller's SQ head from a completion.
    pub(crate) fn set_head(&mut self, head: u16) {
        if head < self.entries {
            self.head = head;
        }
    }

    /// Forgets every command (after the queue was deleted or the controller reset).
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
        self.committed_tail = 0;
        self.head = 0;
        self.mem.mem().zero();
    }
}

/// A completion queue: results from the controller, found by phase tag.
pub(crate) struct CompletionQueue {
    mem: DmaBuffer,
    iova: u64,
    entries: u16,
    head: u16,
    phase: bool,
    /// Entries consumed since the last head doorbell.
    unreported: u16,
    doorbell: u64,
}

impl CompletionQueue {
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        qid: u16,
        entries: u16,
        dstrd: u8,
    ) -> Result<Self, NvmeError> {
        let (mem, iova) = ring(space, usize::from(entries) * COMPLETION_SIZE)?;
        Ok(Self {
            iova,
            mem,
            entries,
            head: 0,
            phase: true,
            unreported: 0,
            doorbell: regs::cq_head_doorbell(qid, dstrd),
        })
    }

    /// Where the controller finds the ring.
    pub(crate) fn iova(&self) -> u64 {
        self.iova
    }

    /// The next completion, if the controller has posted it.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Completion> {
        let mem = self.mem.mem();
        let off = usize::from(self.head) * COMPLETION_SIZE;
        // The phase tag lives in the last dword: load it with Acquire so the rest of the entry,
        // read after, is the controller's and not stale.
        let dw3 = mem.load_acquire_u32(off + 12);
        if ((dw3 >> 16) & 1 != 0) != self.phase {
            return None;
        }
        let cqe = Completion::from_dwords([
            mem.read_le32(off),
            mem.read_le32(off + 4),
            mem.read_le32(off + 8),
            dw3,
        ]);
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        self.unreported += 1;
        Some(cqe)
    }

    /// Gives consumed entries back to the controller: one doorbell per batch.
    pub(crate) fn commit<D: PciDevice>(&mut self, dev: &D) -> bool {
        if self.unreported == 0 {
            return false;
        }
        dev.write32(0, self.doorbell, u32::from(self.head));
        self.unreported = 0;
        true
    }

    /// Gives consumed entries back only once half the ring is consumed and unreported.
    ///
    /// The controller only needs the head to know it may reuse entries; telling it after every
    /// batch costs an MMIO write (a VM exit under virtualization) per batch, at QD 1 one per
    /// I/O. This never stalls it for good: a controller blocked on a full ring means every
    /// entry is posted, and once the driver has consumed them, at least half are unreported.
    pub(crate) fn commit_lazy<D: PciDevice>(&mut self, dev: &D) -> bool {
        if self.unreported < self.entries / 2 {
            return false;
        }
        self.commit(dev)
    }

    /// Forgets every completion (after the queue was deleted or the controller reset).
    pub(crate) fn reset(&mut self) {
        self.head = 0;
        self.phase = true;
        self.unreported = 0;
        self.mem.mem().zero();
    }
}

/// Zeroed ring memory and its IOVA. Rings are created physically contiguous (PC=1): the device
/// must see them as one range.
fn ring(space: &Arc<DmaSpace>, len: usize) -> Result<(DmaBuffer, u64), NvmeError> {
    let mem = space.alloc(len)?;
    mem.mem().zero();
    let iova = mem.contiguous_iova(0, len).ok_or(NvmeError::NotContiguous(len))?.get();
    Ok((mem, iova))
}
