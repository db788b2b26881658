//! The command slots: a request takes a slot and becomes an SQE (`start`), and the CQE
//! that names the slot gives its segment back (`finish`). A slot owns its segment, and so its
//! memory, until the controller completes it.

use super::ids::SlotIds;
use super::*;

/// Commands other than Read and Write, carried by an empty packet view.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Other {
    Flush,
    /// `deac`: the controller may deallocate the blocks.
    WriteZeroes {
        slba: u64,
        blocks: u32,
        deac: bool,
    },
    Deallocate {
        slba: u64,
        blocks: u32,
    },
}

/// A request waiting for a slot (backpressure, never loss).
pub(super) enum Pending {
    Read(u64, PacketView<FromDevice>),
    Write(u64, PacketView<ToDevice>),
    /// A write with Force Unit Access: completes only once durable.
    WriteFua(u64, PacketView<ToDevice>),
    Other(Other, PacketView<ToDevice>),
}

/// What a busy slot carries.
pub(super) enum SlotIo {
    Free,
    Read(PacketView<FromDevice>),
    Write(PacketView<ToDevice>),
    Other(PacketView<ToDevice>),
}

pub(super) struct Slot {
    pub(super) io: SlotIo,
    /// PRP list pages, permanently this slot's, and the IOVA of each.
    pub(super) prp: PoolSlot,
    pub(super) prp_iovas: Box<[u64]>,
    /// A bounce buffer while the command uses one.
    pub(super) bounce: Option<PoolSlot>,
    /// Milliseconds since the queue's start when submitted.
    pub(super) started_ms: u64,
    /// Abort was requested after the deadline passed.
    pub(super) aborted: bool,
}

pub(super) struct Inner {
    pub(super) sq: SubmissionQueue,
    pub(super) cq: CompletionQueue,
    /// What each slot holds; which are free and the command IDs are in `ids`.
    pub(super) slots: Vec<Slot>,
    pub(super) ids: SlotIds,
    pub(super) prp_pool: DmaPool,
    pub(super) bounce_pool: DmaPool,
    pub(super) translator: Translator,
    pub(super) dptr: DataPointers,
    pub(super) pending: VecDeque<Pending>,
    pub(super) stats: QueueStats,
    /// The CPU's counter at the queue's start, and the clock that reads it.
    pub(super) t0: mfio_dma::clock::Ticks,
    pub(super) clock: &'static CycleClock,
    /// Milliseconds since `t0`, refreshed every `CLOCK_POLLS` busy polls, after a sleep and on
    /// the first command after the queue was idle: deadlines are seconds, and even the CPU's
    /// counter costs more than a poll in a guest.
    pub(super) now_ms: u64,
    pub(super) polls: u32,
    pub(super) last_check_ms: u64,
    /// The controller epoch this queue's rings belong to.
    pub(super) epoch: u64,
    /// The queue pair does not exist on the device (a reset failed): requests fail at once.
    pub(super) broken: bool,
    /// The queue's interrupt and waiting state; `None` for a polled queue.
    pub(super) wakeup: Option<Wakeup>,
    /// The waker of a poll that answered `Idle` or `Armed`, woken when work is next sent.
    pub(super) parked: Option<Waker>,
}

impl Inner {
    /// Refreshes `now_ms` (the CPU's counter: cheap even in a guest).
    pub(super) fn tick(&mut self) {
        self.now_ms = self.clock.to_ns(self.clock.now().saturating_sub(self.t0)) / 1_000_000;
    }

    /// Queues a request behind any already waiting, then submits what fits.
    pub(super) fn enqueue<D: PciDevice>(&mut self, p: Pending, q: &IoQueue<D>) {
        if self.broken {
            let e = q.lost();
            return match p {
                Pending::Read(_, v) => v.fail(e),
                Pending::Write(_, v) | Pending::WriteFua(_, v) | Pending::Other(_, v) => v.fail(e),
            };
        }
        if self.pending.is_empty() {
            if let Err(back) = self.submit(p, q) {
                self.wait_first(back);
            }
        } else {
            self.pending.push_back(p);
            self.stats.max_pending = self.stats.max_pending.max(self.pending.len() as u64);
        }
    }

    /// Puts a request that could not be submitted first in line.
    pub(super) fn wait_first(&mut self, p: Pending) {
        self.pending.push_front(p);
        self.stats.max_pending = self.stats.max_pending.max(self.pending.len() as u64);
    }

    /// Submits waiting requests while slots last.
    pub(super) fn submit_pending<D: PciDevice>(&mut self, q: &IoQueue<D>) {
        while let Some(p) = self.pending.pop_front() {
            if let Err(back) = self.submit(p, q) {
                self.pending.push_front(back);
                break;
            }
        }
    }

    /// A free slot is a free SQ entry too: a queue has one slot fewer than SQ entries and a
    /// command holds its slot until it completes, long after the controller consumed its
    /// entry. So the SQ head the controller reports is not needed, and a wrong one (a buggy
    /// or hostile device) cannot make the ring look full or empty.
    pub(super) fn has_room(&self) -> bool {
        self.ids.has_room()
    }

    /// Submits `p` (in pieces if it must be split); what cannot be submitted for lack of a
    /// slot, SQ entry or bounce buffer comes back.
    pub(super) fn submit<D: PciDevice>(
        &mut self,
        p: Pending,
        q: &IoQueue<D>,
    ) -> Result<(), Pending> {
        match p {
            Pending::Read(pos, v) => {
                self.submit_rw(q, pos, v, 0).map_err(|(p, v)| Pending::Read(p, v))
            }
            Pending::Write(pos, v) => {
                self.submit_rw(q, pos, v, 0).map_err(|(p, v)| Pending::Write(p, v))
            }
            Pending::WriteFua(pos, v) => {
                self.submit_rw(q, pos, v, Command::FUA).map_err(|(p, v)| Pending::WriteFua(p, v))
            }
            Pending::Other(op, v) => {
                if !self.has_room() {
                    return Err(Pending::Other(op, v));
                }
                self.submit_other(q, op, v);
                Ok(())
            }
        }
    }

    #[inline(always)]
    pub(super) fn submit_rw<D: PciDevice, P: RwDir>(
        &mut self,
        q: &IoQueue<D>,
        mut pos: u64,
        mut view: PacketView<P>,
        cdw12: u32,
    ) -> Result<(), (u64, PacketView<P>)> {
        loop {
            if !self.has_room() {
                return Err((pos, view));
            }
            let piece_len = view.len().min(q.max_transfer);
            let (piece, rest) = split(view, piece_len);
            let idx = self.ids.take().expect("has_room checked a free slot");
            let s = &self.slots[usize::from(idx)];
            let list = PrpList { mem: self.prp_pool.mem(&s.prp), page_iovas: &s.prp_iovas };
            let zero_copy =
                match short(&mut self.translator, self.dptr, piece.as_ptr(), piece.len()) {
                    Some(d) => Ok(d),
                    None => describe(
                        &mut self.translator,
                        self.dptr,
                        piece.as_ptr(),
                        piece.len(),
                        &list,
                    ),
                };
            let (dptr, bounce, piece, rest) = match zero_copy {
                Ok(d) => (d, None, piece, rest),
                Err(_) => {
                    // Bounce: at most one bounce buffer per command.
                    let Some(b) = self.bounce_pool.alloc() else {
                        // No bounce buffer free: wait (the remainder queued behind the piece).
                        self.ids.release(idx);
                        if let Some(r) = rest {
                            self.pending.push_front(P::pending(pos + piece.len() as u64, r, cdw12));
                        }
                        return Err((pos, piece));
                    };
                    let (piece, rest2) = split(piece, q.bounce_size);
                    let rest = match (rest2, rest) {
                        (Some(r2), Some(r)) => {
                            // Pieces of one request complete independently; send the far tail
                            // back to wait and go on with the near one.
                            self.pending.push_front(P::pending(
                                pos + (piece.len() + r2.len()) as u64,
                                r,
                                cdw12,
                            ));
                            Some(r2)
                        }
                        (r2, r) => r2.or(r),
                    };
                    P::fill_bounce(&piece, &self.bounce_pool.mem(&b));
                    // Bounce buffers are whole, page-aligned pages: always PRP-able (and
                    // SGL-able), whether the device sees them as one range or as scattered
                    // pages (no-IOMMU).
                    let ptr = self.bounce_pool.ptr(&b);
                    let d = describe(&mut self.translator, self.dptr, ptr, piece.len(), &list)
                        .expect("page-aligned mapped bounce pages always fit in PRPs and SGLs");
                    self.stats.bounced += 1;
                    (d, Some(b), piece, rest)
                }
            };
            let shift = q.ns.block_size.trailing_zeros(); // 2^LBADS: a shift, not a division
            let mut cmd =
                Command::rw(P::OPCODE, q.ns.nsid, pos >> shift, (piece.len() >> shift) as u32);
            (cmd.prp1, cmd.prp2, cmd.flags) = dptr;
            cmd.cdw12 |= cdw12;
            self.stats.sgl += u64::from(cmd.flags & Command::PSDT_SGL != 0);
            let len = piece.len();
            self.start(idx, &mut cmd, P::slot_io(piece), bounce);
            pos += len as u64;
            match rest {
                Some(r) => view = r,
                None => return Ok(()),
            }
        }
    }

    pub(super) fn submit_other<D: PciDevice>(
        &mut self,
        q: &IoQueue<D>,
        op: Other,
        view: PacketView<ToDevice>,
    ) {
        let idx = self.ids.take().expect("caller checked room");
        let nsid = q.ns.nsid;
        let mut cmd = match op {
            Other::Flush => Command::new(spec::io::FLUSH, nsid),
            Other::WriteZeroes { slba, blocks, deac } => {
                let mut cmd = Command::rw(spec::io::WRITE_ZEROES, nsid, slba, blocks);
                cmd.cdw12 |= if deac { Command::DEAC } else { 0 };
                cmd
            }
            Other::Deallocate { slba, blocks } => {
                // One range descriptor (context attributes, length in blocks, starting LBA) in
                // the slot's PRP page, which this command does not otherwise use.
                let s = &self.slots[usize::from(idx)];
                let mem = self.prp_pool.mem(&s.prp);
                mem.write_le32(0, 0);
                mem.write_le32(4, blocks);
                mem.write_le64(8, slba);
                let mut c = Command::new(spec::io::DATASET_MANAGEMENT, nsid);
                c.prp1 = s.prp_iovas[0];
                c.cdw10 = 0; // one range
                c.cdw11 = 1 << 2; // AD: deallocate
                c
            }
        };
        self.start(idx, &mut cmd, SlotIo::Other(view), None);
    }

    /// Fills in the command ID, writes the SQE, records the slot as busy.
    #[inline(always)] // `io` in registers, not through memory (store forwarding stalls).
    pub(super) fn start(
        &mut self,
        idx: u16,
        cmd: &mut Command,
        io: SlotIo,
        bounce: Option<PoolSlot>,
    ) {
        let now = self.now_ms;
        cmd.cid = self.ids.issue(idx);
        let slot = &mut self.slots[usize::from(idx)];
        slot.io = io;
        slot.bounce = bounce;
        slot.started_ms = now;
        slot.aborted = false;
        self.sq.push(cmd);
        self.stats.submitted += 1;
    }

    /// Frees the slot of a completion; returns the I/O to complete (`None` for a stray CQE).
    #[inline(always)] // Its result in registers, as for `start`.
    pub(super) fn finish(&mut self, cqe: Completion) -> Option<(SlotIo, Result<(), Error>)> {
        let busy = self.ids.slot_of(cqe.cid).filter(|&i| !matches!(self.slots[i].io, SlotIo::Free));
        let Some(idx) = busy else {
            self.stats.stray_completions += 1;
            tracing::warn!(cid = cqe.cid, "completion for an unknown or stale command ID");
            return None;
        };
        let slot = &mut self.slots[idx];
        let mut io = std::mem::replace(&mut slot.io, SlotIo::Free);
        let status = cqe.status();
        let result = if status.is_success() {
            Ok(())
        } else if slot.aborted {
            Err(Error::new(ErrorKind::Timeout, ORIGIN).with_status(status.0 & 0x7ff))
        } else {
            Err(status.to_error())
        };
        if let Some(b) = slot.bounce.take() {
            if let (SlotIo::Read(v), Ok(())) = (&mut io, &result) {
                self.bounce_pool.mem(&b).copy_to_slice(0, v.as_mut_slice());
            }
            let _ = self.bounce_pool.free(b);
        }
        self.ids.release(idx as u16);
        self.stats.completed += 1;
        Some((io, result))
    }

    /// Fails everything in flight and waiting: the controller was disabled, so the device no
    /// longer touches any of this memory. The queue is rebuilt empty.
    pub(super) fn fail_all(&mut self, error: Error) -> Vec<(SlotIo, Result<(), Error>)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let io = std::mem::replace(&mut s.io, SlotIo::Free);
            if !matches!(io, SlotIo::Free) {
                if let Some(b) = s.bounce.take() {
                    let _ = self.bounce_pool.free(b);
                }
                self.ids.release(i as u16);
                // A command that timed out (its abort requested) says so, whatever ended it.
                // A removal says Gone whatever else happened: no retry here can succeed.
                let e = match s.aborted && error.kind() != ErrorKind::Gone {
                    true => Error::new(ErrorKind::Timeout, ORIGIN),
                    false => error,
                };
                out.push((io, Err(e)));
            }
        }
        while let Some(p) = self.pending.pop_front() {
            out.push(match p {
                Pending::Read(_, v) => (SlotIo::Read(v), Err(error)),
                Pending::Write(_, v) | Pending::WriteFua(_, v) => (SlotIo::Write(v), Err(error)),
                Pending::Other(_, v) => (SlotIo::Other(v), Err(error)),
            });
        }
        self.sq.reset();
        self.cq.reset();
        out
    }
}

#[inline(always)] // The view in registers (see `Inner::start`).
pub(super) fn complete(io: SlotIo, result: Result<(), Error>) {
    match io {
        SlotIo::Read(v) => v.complete(result),
        SlotIo::Write(v) | SlotIo::Other(v) => v.complete(result),
        SlotIo::Free => {}
    }
}

/// What differs between reads and writes on the hot path.
pub(super) trait RwDir: mfio::PacketPerms + Sized {
    const OPCODE: u8;
    fn slot_io(v: PacketView<Self>) -> SlotIo;
    fn fill_bounce(v: &PacketView<Self>, mem: &mfio_dma::DmaSlice<'_>);
    /// The request waiting with its CDW12 flags (FUA).
    fn pending(pos: u64, v: PacketView<Self>, cdw12: u32) -> Pending;
}

impl RwDir for FromDevice {
    const OPCODE: u8 = spec::io::READ;
    fn slot_io(v: PacketView<Self>) -> SlotIo {
        SlotIo::Read(v)
    }
    fn fill_bounce(_: &PacketView<Self>, _: &mfio_dma::DmaSlice<'_>) {}
    fn pending(pos: u64, v: PacketView<Self>, _: u32) -> Pending {
        Pending::Read(pos, v)
    }
}

impl RwDir for ToDevice {
    const OPCODE: u8 = spec::io::WRITE;
    fn slot_io(v: PacketView<Self>) -> SlotIo {
        SlotIo::Write(v)
    }
    fn fill_bounce(v: &PacketView<Self>, mem: &mfio_dma::DmaSlice<'_>) {
        mem.copy_from_slice(0, v.as_slice());
    }
    fn pending(pos: u64, v: PacketView<Self>, cdw12: u32) -> Pending {
        match cdw12 & Command::FUA {
            0 => Pending::Write(pos, v),
            _ => Pending::WriteFua(pos, v),
        }
    }
}
