//! Queues and doorbells: fetching commands on an SQ tail doorbell, posting CQEs with phase tags,
//! holding CQEs back while a CQ is full, deferral, reordering and the injections that act on
//! completions.

use std::time::{Duration, Instant};

use super::config::CompletionMode;
use super::inject::{Injection, ViolationKind};
use super::records::{Group, Outcome, Pending, Release};
use super::state::State;
use crate::ring;
use crate::spec::status::generic;
use crate::spec::{Command, Completion, Status, COMMAND_SIZE};

impl State {
    /// A doorbell write at BAR0 offset `off` (at or above 0x1000).
    pub fn doorbell(&mut self, off: u64, value: u32) {
        let idx = (off - crate::spec::regs::DOORBELL_BASE) / 4;
        let (qid, is_cq) = ((idx / 2) as usize, idx % 2 == 1);
        let name = if is_cq { "CQ head" } else { "SQ tail" };
        if self.fatal() {
            // A failed controller ignores everything until reset; the driver learns it from
            // CSTS.CFS.
            self.counters.ignored_doorbells += 1;
            return;
        }
        if !self.ready() {
            self.violation(
                ViolationKind::Doorbell,
                format!("{name} doorbell of queue {qid} written ({value}) while CSTS.RDY is 0"),
            );
            return;
        }
        let exists = if is_cq {
            self.cqs.get(qid).is_some_and(Option::is_some)
        } else {
            self.sqs.get(qid).is_some_and(Option::is_some)
        };
        if !exists {
            self.violation(
                ViolationKind::Doorbell,
                format!("{name} doorbell written ({value}) for queue {qid}, which does not exist"),
            );
            return;
        }
        let qid = qid as u16;
        if !self.check_register_matches_shadow(qid, is_cq, value) {
            return;
        }
        if is_cq {
            self.counters.cq_doorbells[usize::from(qid)] += 1;
            if !self.cq_head_doorbell(qid, value) {
                return;
            }
        } else {
            self.counters.sq_doorbells[usize::from(qid)] += 1;
            if !self.sq_tail_doorbell(qid, value) {
                return;
            }
        }
        self.age_pending();
        if !is_cq {
            self.process_sq(qid);
            // Fetched up to the tail: the next submission must ring.
            if let Some(tail) = self.sqs[usize::from(qid)].as_ref().map(|q| q.tail) {
                self.set_event_idx(qid, false, tail);
            }
        }
        self.flush_batch();
    }

    /// Validates and applies a CQ head doorbell, then posts held CQEs into the freed slots.
    pub(crate) fn cq_head_doorbell(&mut self, qid: u16, value: u32) -> bool {
        let Some(cq) = self.cqs[usize::from(qid)].as_ref() else { return false };
        let (size, head, tail) = (cq.size, cq.head, cq.tail);
        if value >= size {
            self.violation(
                ViolationKind::Doorbell,
                format!("CQ {qid} head doorbell {value} is not below the queue size {size}"),
            );
            return false;
        }
        let advance = (value + size - head) % size;
        let posted = (tail + size - head) % size;
        if advance > posted {
            self.violation(
                ViolationKind::Doorbell,
                format!(
                    "CQ {qid} head doorbell {value} passes the controller's tail {tail} (head was \
                     {head}): it releases {advance} entries but only {posted} were posted"
                ),
            );
            return false;
        }
        self.apply_cq_head(qid, value)
    }

    /// Takes a checked CQ head and posts held CQEs
    /// into the freed slots.
    fn apply_cq_head(&mut self, qid: u16, value: u32) -> bool {
        if let Some(cq) = self.cqs[usize::from(qid)].as_mut() {
            cq.head = value;
        }
        self.drain_backlog(qid);
        true
    }

    /// Validates and applies an SQ tail doorbell.
    fn sq_tail_doorbell(&mut self, qid: u16, value: u32) -> bool {
        let Some(sq) = self.sqs[usize::from(qid)].as_ref() else { return false };
        let (size, head, tail) = (sq.size, sq.head, sq.tail);
        if value >= size {
            self.violation(
                ViolationKind::Doorbell,
                format!("SQ {qid} tail doorbell {value} is not below the queue size {size}"),
            );
            return false;
        }
        let used = (tail + size - head) % size;
        let free = size - 1 - used;
        let advance = (value + size - tail) % size;
        if advance > free {
            self.violation(
                ViolationKind::Doorbell,
                format!(
                    "SQ {qid} tail doorbell {value} passes the controller's head {head} (tail was \
                     {tail}): {advance} new entries but only {free} free slots"
                ),
            );
            return false;
        }
        if let Some(sq) = self.sqs[usize::from(qid)].as_mut() {
            sq.tail = value;
        }
        true
    }

    /// Fetches and dispatches every entry between the SQ's head and tail.
    fn process_sq(&mut self, qid: u16) {
        let q = usize::from(qid);
        let mut fetched = 0u32;
        while !self.fatal() {
            let Some(sq) = self.sqs[q].as_ref() else { break };
            if sq.head == sq.tail {
                break;
            }
            let addr = sq.base + u64::from(sq.head) * COMMAND_SIZE as u64;
            let (size, head) = (sq.size, sq.head);
            // A fixed description: formatting one per command would allocate on the hot path
            // (the fault message carries the IOVA).
            let Ok(raw) = self
                .dma_read_le64s::<{ COMMAND_SIZE / 8 }>(addr, "fetching a submission queue entry")
            else {
                // A controller that cannot fetch its commands is dead.
                self.set_fatal();
                break;
            };
            if let Some(sq) = self.sqs[q].as_mut() {
                sq.head = ring::next(head, size);
            }
            fetched += 1;
            self.dispatch(qid, Command::from_qwords(&raw));
        }
        self.counters.last_batch[q] = fetched;
        self.counters.max_batch[q] = self.counters.max_batch[q].max(fetched);
    }

    /// A command just fetched: apply injections, check the CID, execute now or later.
    fn dispatch(&mut self, sqid: u16, cmd: Command) {
        let counts = if sqid == 0 {
            &mut self.counters.admin_commands
        } else {
            &mut self.counters.io_commands
        };
        counts[usize::from(cmd.opcode)] += 1;

        if self.cid_in_flight(sqid, cmd.cid) {
            self.violation(
                ViolationKind::Command,
                format!(
                    "command ID {:#x} submitted on SQ {sqid} while a command with that ID is \
                     still in flight there",
                    cmd.cid
                ),
            );
            let st = Status::new(0, generic::CID_CONFLICT).with_dnr();
            // The command holding that CID is still in flight: this CQE does not end it.
            self.push_completion(sqid, &cmd, Outcome::err(st), None, false);
            return;
        }

        // The common case, no injection armed and completions made at once: straight on.
        let at_once = match self.cfg.completion {
            CompletionMode::Inline | CompletionMode::Reversed | CompletionMode::Shuffled { .. } => {
                true
            }
            CompletionMode::Deferred { .. } | CompletionMode::Timed { .. } => sqid == 0,
        };
        if at_once && self.injections.is_empty() {
            return self.run(sqid, &cmd, false, None);
        }

        let mut p = Pending {
            sqid,
            cmd,
            release: Release::After(0),
            // Set when the command is deferred: a clock read per command is most of a null
            // command's cost.
            since: self.created,
            lose: false,
            bad_cid: None,
        };
        let mut hold = false;
        let mut i = 0;
        while i < self.injections.len() {
            let inj = self.injections[i];
            let hit = |t: &super::Target| t.matches(sqid, cmd.opcode);
            let consume = match inj {
                Injection::FatalOn(t) if hit(&t) => {
                    self.injections.remove(i);
                    self.set_fatal();
                    return;
                }
                Injection::LoseCompletion(t) if hit(&t) && !p.lose => {
                    p.lose = true;
                    true
                }
                Injection::BadCid { target, cid } if hit(&target) && p.bad_cid.is_none() => {
                    p.bad_cid = Some(cid);
                    true
                }
                Injection::Delay { target, doorbells }
                    if hit(&target) && p.release == Release::After(0) =>
                {
                    p.release = Release::After(doorbells.max(1));
                    true
                }
                Injection::Hold(t) if hit(&t) => {
                    hold = true;
                    false
                }
                _ => false,
            };
            if consume {
                self.injections.remove(i);
            } else {
                i += 1;
            }
        }

        if hold {
            p.release = Release::Held;
        } else if let (Release::After(0), CompletionMode::Deferred { doorbells }, true) =
            (p.release, self.cfg.completion, sqid != 0)
        {
            p.release = Release::After(doorbells);
        } else if let (Release::After(0), CompletionMode::Timed { micros }, true) =
            (p.release, self.cfg.completion, sqid != 0)
        {
            p.release = Release::At(Instant::now() + Duration::from_micros(micros));
        }
        if p.release == Release::After(0) {
            self.execute(p);
        } else {
            p.since = Instant::now();
            self.pending.push(p);
        }
    }

    /// Whether the driver reused a CID the controller has not completed yet (fetched, and its
    /// CQE not yet written); otherwise marks it in flight.
    fn cid_in_flight(&mut self, sqid: u16, cid: u16) -> bool {
        let Some(sq) = self.sqs.get_mut(usize::from(sqid)).and_then(|s| s.as_mut()) else {
            return false;
        };
        if sq.cid_busy(cid) {
            return true;
        }
        sq.set_cid(cid, true);
        false
    }

    /// A command's CQE was written (or dropped): its CID may be used again.
    fn cid_done(&mut self, sqid: u16, cid: u16) {
        if let Some(sq) = self.sqs.get_mut(usize::from(sqid)).and_then(|s| s.as_mut()) {
            sq.set_cid(cid, false);
        }
    }

    /// Executes a command and queues its CQE (unless lost) in the current batch.
    pub fn execute(&mut self, p: Pending) {
        self.run(p.sqid, &p.cmd, p.lose, p.bad_cid);
    }

    /// Executes `cmd` from SQ `sqid` and queues its CQE: dropped when `lose`, after a bogus
    /// one with CID `bad_cid` when set.
    fn run(&mut self, sqid: u16, cmd: &Command, lose: bool, bad_cid: Option<u16>) {
        let outcome = if sqid == 0 { self.admin(cmd) } else { self.io(sqid, cmd) };
        // Some admin commands (Asynchronous Event Request) complete later or never.
        let Some(outcome) = outcome else { return };
        if lose {
            self.counters.completions_lost += 1;
            self.cid_done(sqid, cmd.cid);
            return;
        }
        self.push_completion(sqid, cmd, outcome, bad_cid, true);
    }

    /// Posts a CQE for `cmd` (preceded by a bogus one when `bad_cid` is set), or queues it in
    /// the current batch when completions are reordered or a batch is already building.
    /// `frees_cid`: the CQE ends its command (not so for the answer to a CID conflict).
    pub fn push_completion(
        &mut self,
        sqid: u16,
        cmd: &Command,
        outcome: Outcome,
        bad_cid: Option<u16>,
        frees_cid: bool,
    ) {
        let Some(cqid) = self.sqs.get(usize::from(sqid)).and_then(|s| s.as_ref()).map(|s| s.cqid)
        else {
            return;
        };
        let bogus = bad_cid.map(|cid| {
            self.counters.bad_cids_posted += 1;
            Completion { sq_id: sqid, cid, ..Completion::default() }
        });
        let real = Completion {
            dw0: outcome.dw0,
            dw1: 0,
            sq_head: 0,
            sq_id: sqid,
            cid: cmd.cid,
            status: outcome.status.0 << 1,
        };
        let g = Group { cqid, bogus, real, frees_cid };
        // In order, nothing to reorder: post now (the batch would post it in the same order).
        if matches!(self.cfg.completion, CompletionMode::Inline) && self.batch.is_empty() {
            self.post_group(g);
        } else {
            self.batch.push(g);
        }
    }

    /// Counts down deferred commands and executes those whose time has come, in fetch order.
    fn age_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut due = Vec::new();
        let mut keep = Vec::with_capacity(self.pending.len());
        for mut p in std::mem::take(&mut self.pending) {
            if let Release::After(n) = p.release {
                p.release = Release::After(n.saturating_sub(1));
                if n <= 1 {
                    due.push(p);
                    continue;
                }
            }
            keep.push(p);
        }
        self.pending = keep;
        for p in due {
            self.execute(p);
        }
    }

    /// Executes the timed commands whose instant has passed, and deferred ones older than
    /// `deferred_timeout` (the timer thread).
    pub fn release_due(&mut self, now: Instant) {
        if !self.ready() || self.fatal() || self.pending.is_empty() {
            return;
        }
        let timeout = self.cfg.deferred_timeout;
        let (due, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| match p.release {
                Release::At(t) => t <= now,
                Release::After(_) => timeout.is_some_and(|d| now >= p.since + d),
                Release::Held => false,
            });
        self.pending = keep;
        for p in due {
            self.execute(p);
        }
        self.flush_batch();
    }

    /// Executes every pending command now (held, delayed or deferred) and ends `Hold`
    /// injections. Returns how many ran.
    pub fn release_held(&mut self) -> usize {
        self.injections.retain(|i| !matches!(i, Injection::Hold(_)));
        let all = std::mem::take(&mut self.pending);
        let n = all.len();
        for p in all {
            self.execute(p);
        }
        self.flush_batch();
        n
    }

    /// Posts the current batch: admin CQEs in order, I/O CQEs in the configured order.
    pub fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        if !matches!(
            self.cfg.completion,
            CompletionMode::Reversed | CompletionMode::Shuffled { .. }
        ) {
            // In order, reusing the batch's memory: the I/O path allocates nothing.
            for g in batch.drain(..) {
                self.post_group(g);
            }
            self.batch = batch;
            return;
        }
        let (admin, mut io): (Vec<_>, Vec<_>) = batch.into_iter().partition(|g| g.real.sq_id == 0);
        match self.cfg.completion {
            CompletionMode::Reversed => io.reverse(),
            CompletionMode::Shuffled { .. } => {
                for i in (1..io.len()).rev() {
                    let j = (self.next_random() % (i as u64 + 1)) as usize;
                    io.swap(i, j);
                }
            }
            CompletionMode::Inline
            | CompletionMode::Deferred { .. }
            | CompletionMode::Timed { .. } => {}
        }
        for g in admin.into_iter().chain(io) {
            self.post_group(g);
        }
    }

    fn post_group(&mut self, g: Group) {
        if let Some(b) = g.bogus {
            self.post(g.cqid, b, false);
        }
        self.post(g.cqid, g.real, g.frees_cid);
    }

    /// Posts one CQE, or holds it while the CQ is full (or older CQEs are already held).
    fn post(&mut self, cqid: u16, c: Completion, real: bool) {
        if self.cqs.get(usize::from(cqid)).is_none_or(|q| q.is_none()) {
            return; // The CQ was deleted (or the controller reset) meanwhile.
        }
        // With shadow doorbells the host's head is in memory, not in a register write.
        self.refresh_cq_head(cqid);
        let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(|q| q.as_mut()) else {
            return;
        };
        if !cq.backlog.is_empty() || cq.is_full() {
            cq.backlog.push_back((c, real));
            self.counters.cq_full_holds += 1;
            // Waiting for room: ask for a register write as soon as the head moves.
            let head = cq.head;
            self.set_event_idx(cqid, true, head);
            return;
        }
        self.write_cqe(cqid, c, real);
    }

    /// Posts held CQEs while there is room.
    fn drain_backlog(&mut self, cqid: u16) {
        loop {
            let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(|q| q.as_mut()) else {
                return;
            };
            if cq.is_full() {
                return;
            }
            let Some((c, real)) = cq.backlog.pop_front() else { return };
            self.write_cqe(cqid, c, real);
        }
    }

    /// Writes a CQE at the tail with the current phase tag and advances the tail.
    fn write_cqe(&mut self, cqid: u16, mut c: Completion, real: bool) {
        if real {
            self.cid_done(c.sq_id, c.cid);
        }
        // SQ head as of posting: every entry before it has been fetched and may be reused.
        if let Some(sq) = self.sqs.get(usize::from(c.sq_id)).and_then(|s| s.as_ref()) {
            c.sq_head = sq.head as u16;
        }
        if cqid != 0 {
            if let Some(h) = self.hostile.as_mut() {
                let mut out = std::mem::take(&mut self.hostile_out);
                h.corrupt(c, &mut out);
                for &(e, flip) in &out {
                    if self.cqs[usize::from(cqid)].as_ref().is_none_or(|q| q.is_full()) {
                        break; // even a liar does not overrun the ring it owns
                    }
                    self.put_cqe(cqid, e, flip);
                }
                out.clear();
                self.hostile_out = out;
                return;
            }
        }
        self.put_cqe(cqid, c, false);
    }

    /// Writes one entry at the tail, with the current phase tag (inverted when `flip`), and
    /// advances the tail.
    fn put_cqe(&mut self, cqid: u16, mut c: Completion, flip: bool) {
        let Some(cq) = self.cqs[usize::from(cqid)].as_mut() else { return };
        c.status = (c.status & !1) | u16::from(cq.phase != flip);
        let addr = cq.base + u64::from(cq.tail) * 16;
        cq.tail = ring::next(cq.tail, cq.size);
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        let b = c.to_bytes();
        let what = "posting a completion queue entry";
        // Dword 3 (CID, status, phase) last: a driver polling the phase tag on another thread
        // must never see the new phase with stale dwords 0-2.
        let vector = cq.vector;
        let _ = self.dma_write_then(addr, &b[..12], &b[12..], what);
        self.counters.completions_posted += 1;
        // The message after the entry, as a device's write and its MSI are ordered on the bus.
        if let Some(v) = vector {
            self.irq.raise(v);
        }
    }
}
