//! When commands do not come back: deadlines, aborts, controller recovery, and a queue's
//! orderly end.

use super::*;

impl<D: PciDevice> IoQueue<D> {
    /// Every 100 ms with commands in flight: recovers at once from a fatal or removed
    /// controller (nothing it holds will complete), aborts commands past their deadline, and
    /// disables the controller when one neither completes nor aborts within a second deadline.
    pub(super) fn check_deadlines(&self) {
        let timeout_ms = self.ctrl.options().io_timeout.as_millis() as u64;
        let in_flight = {
            let inner = self.inner.borrow();
            !inner.ids.is_idle()
        };
        if in_flight {
            let csts = self.ctrl.status();
            if csts.cfs() || csts.is_gone() || self.ctrl.device().is_removed() {
                self.ctrl.recover();
                return;
            }
        }
        let (now, overdue): (u64, Vec<(u16, bool)>) = {
            let inner = self.inner.borrow();
            (
                inner.now_ms,
                inner
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !matches!(s.io, SlotIo::Free))
                    .filter(|(_, s)| inner.now_ms >= s.started_ms + timeout_ms)
                    .map(|(i, s)| (inner.ids.cid(i as u16), s.aborted))
                    .collect(),
            )
        };
        for (cid, already_aborted) in overdue {
            if already_aborted {
                // Aborted a full deadline ago and still not completed: the only safe way to get
                // the memory back is to stop the controller.
                self.ctrl.recover();
                return;
            }
            let t = Duration::from_millis(timeout_ms.clamp(100, 5000));
            let r = self.ctrl.admin().abort(self.ctrl.device(), self.qid, cid, t);
            tracing::warn!(qid = self.qid, cid, ?r, "command timed out: abort requested");
            let mut inner = self.inner.borrow_mut();
            if let Some(idx) = inner.ids.slot_of(cid) {
                let slot = &mut inner.slots[idx];
                slot.aborted = true;
                slot.started_ms = now;
            }
            inner.stats.timeouts += 1;
        }
    }

    /// After a controller reset: fail everything this queue held (safe: the controller was
    /// disabled, so it no longer touches that memory), then create the queue pair on the
    /// device again so I/O works once more.
    pub(super) fn recover(&self) {
        let epoch = self.ctrl.epoch();
        let failed = self.inner.borrow_mut().fail_all(self.lost());
        for (io, r) in failed {
            complete(io, r);
        }
        let mut inner = self.inner.borrow_mut();
        inner.epoch = epoch;
        inner.broken = true;
        // An odd epoch is a reset in progress: try again once it is done.
        if epoch % 2 == 1 || !self.ctrl.is_enabled() {
            return;
        }
        let t = self.ctrl.options().admin_timeout;
        let dev = self.ctrl.device();
        let entries = inner.sq.entries();
        let (sq_iova, cq_iova) = (inner.sq.iova(), inner.cq.iova());
        let iv = self.vector;
        let r =
            self.ctrl.admin().create_queue_pair(dev, self.qid, entries, sq_iova, cq_iova, iv, t);
        match r {
            Ok(()) => {
                inner.broken = false;
                tracing::warn!(qid = self.qid, "I/O queue re-created after a controller reset");
            }
            Err(e) => tracing::error!(qid = self.qid, error = %e, "cannot re-create the I/O queue"),
        }
    }
}

impl<D: PciDevice> IoQueue<D> {
    /// The error for what a reset or a removal took: `Gone` once the device is being removed
    /// (nothing on this queue can succeed again), else `Fatal` (a retry after the reset may).
    pub(super) fn lost(&self) -> Error {
        match self.ctrl.device().is_removed() {
            true => Error::new(ErrorKind::Gone, ORIGIN),
            false => Error::new(ErrorKind::Fatal, ORIGIN),
        }
    }

    /// A removal noticed on a wake-up or a send: stop the controller and fail everything now,
    /// rather than at the next deadline check.
    #[cold]
    pub(super) fn removed(&self) {
        self.ctrl.recover();
        self.recover();
    }
}

impl<D: PciDevice> Drop for IoQueue<D> {
    fn drop(&mut self) {
        // Let what is in flight finish (bounded), so the device is done with its memory before
        // the slots (and the segments they own) go.
        let deadline = Instant::now() + self.ctrl.options().io_timeout;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while self.in_flight() > 0 && Instant::now() < deadline {
            if self.inner.borrow().epoch != self.ctrl.epoch() {
                break;
            }
            self.poll_backend(&mut cx);
        }
        if self.in_flight() > 0 && self.inner.borrow().epoch == self.ctrl.epoch() {
            // Stuck commands own memory the device may still write: only a reset ends that.
            self.ctrl.recover();
            if self.inner.borrow().epoch == self.ctrl.epoch() {
                // The reset could not stop the device (the epoch moves only once it has), and
                // dropping the slots and rings would free memory it may still write.
                tracing::error!(qid = self.qid, "the controller cannot be stopped; aborting");
                // Not `eprintln!`: it panics on a closed stderr, and this must reach the abort.
                let _ = writeln!(
                    std::io::stderr(),
                    "mfio-nvme: queue {} is dropped with commands in flight on a controller \
                     that cannot be stopped (no reset, no bus-master off); aborting rather \
                     than freeing memory it may still write",
                    self.qid
                );
                std::process::abort();
            }
        }
        if self.inner.borrow().epoch == self.ctrl.epoch() && !self.inner.borrow().broken {
            let t = self.ctrl.options().admin_timeout;
            let dev = self.ctrl.device();
            let _ = self.ctrl.admin().delete_queue_pair(dev, self.qid, t);
        }
        self.ctrl.release_qid(self.qid);
    }
}
