//! Submission and completion rings in DMA memory.
//!
//! The submission queue keeps `tail` (where the next command goes) and `committed_tail` (what
//! the controller was last told), so [`SubmissionQueue::commit`] rings the doorbell once per
//! batch. The completion queue reads each entry's last dword with Acquire to test the phase
//! tag before it reads the rest of the entry.
//!
//! With shadow doorbells (Doorbell Buffer Config, for emulated controllers), a new index goes
//! to the shadow page in memory and the register is written only when the controller's
//! EventIdx says it is waiting to be told: an MMIO write is a VM exit, a memory write is not.

use crate::error::NvmeError;
use crate::ring;
use crate::spec::{regs, Command, Completion, COMMAND_SIZE, COMPLETION_SIZE, PAGE_SIZE};
use mfio_dma::{DmaBuffer, DmaSpace};
use mfio_pci::PciDevice;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// The shadow doorbell and EventIdx pages given to the controller by Doorbell Buffer Config.
/// Both mirror the doorbell registers' layout (SQ y tail at slot 2y, CQ y head at 2y + 1).
pub(crate) struct ShadowDoorbells {
    /// The host's indexes (written by the driver, read by the controller).
    shadow: DmaBuffer,
    /// The controller's EventIdx per doorbell (written by the controller).
    event: DmaBuffer,
}

impl ShadowDoorbells {
    pub(crate) fn new(space: &Arc<DmaSpace>) -> Result<Self, NvmeError> {
        let (shadow, _) = ring(space, PAGE_SIZE)?;
        let (event, _) = ring(space, PAGE_SIZE)?;
        Ok(Self { shadow, event })
    }

    /// The pages' IOVAs: PRP1 and PRP2 of Doorbell Buffer Config.
    pub(crate) fn iovas(&self) -> (u64, u64) {
        (self.shadow.iova().get(), self.event.iova().get())
    }

    /// Zeroes both pages (before they are given to a freshly reset controller).
    pub(crate) fn clear(&self) {
        self.shadow.mem().zero();
        self.event.mem().zero();
    }
}

/// How a queue tells the controller a new index: the register, or the shadow page and the
/// register only when the controller's EventIdx asks for it.
pub(crate) struct Doorbell {
    reg: u64,
    shadow: Option<(Arc<ShadowDoorbells>, usize)>,
}

impl Doorbell {
    /// The doorbell at BAR0 offset `reg`, shadowed when `shadow` is given.
    pub(crate) fn new(reg: u64, shadow: Option<&Arc<ShadowDoorbells>>) -> Self {
        let off = (reg - regs::DOORBELL_BASE) as usize;
        let d =
            Self { reg, shadow: shadow.filter(|_| off + 4 <= PAGE_SIZE).map(|s| (s.clone(), off)) };
        // A queue ID used before still has the old queue's index in the shadow page; the
        // controller would read it as this queue's.
        d.reset();
        d
    }

    /// Whether the index goes through the shadow page.
    pub(crate) fn is_shadowed(&self) -> bool {
        self.shadow.is_some()
    }

    /// Tells the controller the index moved from `old` to `new` (mod `entries`). Returns whether
    /// the register was written.
    fn ring<D: PciDevice>(&self, dev: &D, old: u16, new: u16, entries: u16) -> bool {
        let Some((pages, off)) = &self.shadow else {
            dev.write32(0, self.reg, u32::from(new));
            return true;
        };
        pages.shadow.mem().write_le32(*off, u32::from(new));
        // The shadow store must be visible before the EventIdx load (store-load ordering, a
        // full fence): otherwise the controller could go idle at an EventIdx we read stale, and
        // neither side would see the other's update.
        fence(Ordering::SeqCst);
        let event = pages.event.mem().read_le32(*off);
        if !need_event(event, old, new, entries) {
            return false;
        }
        dev.write32(0, self.reg, u32::from(new));
        true
    }

    /// Sets the shadow index to zero (the queue starts afresh on the device).
    fn reset(&self) {
        if let Some((pages, off)) = &self.shadow {
            pages.shadow.mem().write_le32(*off, 0);
            pages.event.mem().write_le32(*off, 0);
        }
    }
}

/// Whether moving an index from `old` to `new` passes the controller's EventIdx `event`, i.e.
/// `event` lies in `[old, new)` on the ring of `entries`. An EventIdx outside the ring (a
/// confused controller) always rings: a spurious doorbell is harmless, a missing one hangs.
pub(crate) fn need_event(event: u32, old: u16, new: u16, entries: u16) -> bool {
    let n = u32::from(entries);
    if event >= n {
        return true;
    }
    let (old, new) = (u32::from(old), u32::from(new));
    (new + n - event - 1) % n < (new + n - old) % n
}

/// A submission queue: commands for the controller.
pub(crate) struct SubmissionQueue {
    mem: DmaBuffer,
    iova: u64,
    entries: u16,
    tail: u16,
    committed_tail: u16,
    doorbell: Doorbell,
}

impl SubmissionQueue {
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        qid: u16,
        entries: u16,
        dstrd: u8,
        shadow: Option<&Arc<ShadowDoorbells>>,
    ) -> Result<Self, NvmeError> {
        let (mem, iova) = ring(space, usize::from(entries) * COMMAND_SIZE)?;
        Ok(Self {
            iova,
            mem,
            entries,
            tail: 0,
            committed_tail: 0,
            doorbell: Doorbell::new(regs::sq_tail_doorbell(qid, dstrd), shadow),
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

    /// Writes `cmd` at the tail. The caller knows there is room: an I/O queue by its slots
    /// (one fewer than entries), the admin queue by having one command at a time.
    #[inline(always)] // The command's fields come from registers, not reloaded from the stack.
    pub(crate) fn push(&mut self, cmd: &Command) {
        let off = usize::from(self.tail) * COMMAND_SIZE;
        self.mem.mem().write_le64s(off, cmd.to_qwords());
        self.tail = ring::next(self.tail.into(), self.entries.into()) as u16;
    }

    /// Tells the controller about every command pushed since the last commit: one doorbell.
    /// Returns whether it rang.
    pub(crate) fn commit<D: PciDevice>(&mut self, dev: &D) -> bool {
        if self.tail == self.committed_tail {
            return false;
        }
        // The entries must be visible in memory before the controller learns of them.
        fence(Ordering::Release);
        let rang = self.doorbell.ring(dev, self.committed_tail, self.tail, self.entries);
        self.committed_tail = self.tail;
        rang
    }

    /// Forgets every command (after the queue was deleted or the controller reset).
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
        self.committed_tail = 0;
        self.mem.mem().zero();
        self.doorbell.reset();
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
    doorbell: Doorbell,
}

impl CompletionQueue {
    pub(crate) fn new(
        space: &Arc<DmaSpace>,
        qid: u16,
        entries: u16,
        dstrd: u8,
        shadow: Option<&Arc<ShadowDoorbells>>,
    ) -> Result<Self, NvmeError> {
        let (mem, iova) = ring(space, usize::from(entries) * COMPLETION_SIZE)?;
        Ok(Self {
            iova,
            mem,
            entries,
            head: 0,
            phase: true,
            unreported: 0,
            doorbell: Doorbell::new(regs::cq_head_doorbell(qid, dstrd), shadow),
        })
    }

    /// Where the controller finds the ring.
    pub(crate) fn iova(&self) -> u64 {
        self.iova
    }

    /// The next completion, if the controller has posted it.
    #[inline(always)] // The CQE in registers, not through memory (store forwarding stalls).
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

    /// Whether the controller has posted the next completion (nothing is consumed).
    pub(crate) fn peek(&self) -> bool {
        let off = usize::from(self.head) * COMPLETION_SIZE;
        let dw3 = self.mem.mem().load_acquire_u32(off + 12);
        ((dw3 >> 16) & 1 != 0) == self.phase
    }

    /// Gives consumed entries back to the controller: one doorbell per batch.
    pub(crate) fn commit<D: PciDevice>(&mut self, dev: &D) -> bool {
        if self.unreported == 0 {
            return false;
        }
        let old = (self.head + self.entries - self.unreported % self.entries) % self.entries;
        self.unreported = 0;
        self.doorbell.ring(dev, old, self.head, self.entries)
    }

    /// Gives consumed entries back only once half the ring is consumed and unreported.
    ///
    /// The controller only needs the head to know it may reuse entries; telling it after every
    /// batch costs an MMIO write (a VM exit under virtualization) per batch, at QD 1 one per
    /// I/O. This never stalls it for good: a controller blocked on a full ring means every
    /// entry is posted, and once the driver has consumed them, at least half are unreported.
    ///
    /// With a shadow doorbell every batch updates the shadow (a plain memory write) and the
    /// EventIdx decides about the register.
    pub(crate) fn commit_lazy<D: PciDevice>(&mut self, dev: &D) -> bool {
        if self.unreported < self.entries / 2 && !self.doorbell.is_shadowed() {
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
        self.doorbell.reset();
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

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn event_index_is_passed_only_when_within_old_to_new() {
        // Moving 5 -> 8 passes EventIdx 5, 6 and 7, not 8 or 4.
        assert!(need_event(5, 5, 8, 16) && need_event(7, 5, 8, 16));
        assert!(!need_event(8, 5, 8, 16) && !need_event(4, 5, 8, 16));
        // Across the wrap: 14 -> 2 passes 14, 15, 0, 1.
        for e in [14, 15, 0, 1] {
            assert!(need_event(e, 14, 2, 16), "{e}");
        }
        for e in [2, 3, 13] {
            assert!(!need_event(e, 14, 2, 16), "{e}");
        }
        // No move passes nothing; a nonsense EventIdx always rings.
        assert!(!need_event(3, 3, 3, 16));
        assert!(need_event(16, 3, 4, 16));
    }
}
