//! Adaptive polling of a worker's sockets: after a request comes in or a reply goes out, the
//! worker keeps its runtime polling (a task that yields, so tokio checks its sockets without
//! sleeping) for a short window, then sleeps in epoll as usual.
//!
//! Why: at queue depth 1 the server is idle between a reply and the client's next request,
//! and waking a sleeping thread costs more than the request itself in a guest (an IPI, a timer,
//! a scheduler round). A device queue in `Adaptive` mode spins for its completions for the same
//! reason; this is the same policy for the sockets: the window is `spin`, or four times the
//! recent average gap between events when that is longer (a client that comes back every
//! 200 us keeps the worker awake), up to [`MAX_WINDOW`]. A server nobody talks to sleeps.
//!
//! Only while the worker has no request at the device: with requests in flight the next event
//! is a completion or a request anyway, and a spinning thread takes the CPU the client and,
//! under emulation, the device itself need (QD32 in the TCG guest: 1.40x qemu-nbd spinning
//! against 1.72x sleeping, one boot).

use mfio_dma::clock::{CycleClock, Ticks};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The longest the window grows.
pub const MAX_WINDOW: Duration = Duration::from_millis(1);

/// A worker's spin state, shared by its connections (who report activity) and its spinner
/// task (who yields while the window is open).
pub(crate) struct Spin {
    clock: &'static CycleClock,
    floor: Ticks,
    max: Ticks,
    last: Cell<Ticks>,
    gap_avg: Cell<Ticks>,
    parked: Cell<Option<Waker>>,
    /// Requests of this worker at the device (see [`Busy`]).
    busy: Cell<usize>,
    /// Rounds the spinner yielded (for tests and the benchmark notes).
    pub spins: Cell<u64>,
}

/// A request at the device: the spinner rests while any is.
pub(crate) struct Busy(Rc<Spin>);

impl Busy {
    pub(crate) fn new(s: &Rc<Spin>) -> Busy {
        s.busy.set(s.busy.get() + 1);
        Busy(s.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(self.0.busy.get() - 1);
    }
}

impl Spin {
    /// Spinning at least `floor` after each event.
    pub(crate) fn new(floor: Duration) -> Rc<Spin> {
        let clock = CycleClock::get();
        Rc::new(Spin {
            clock,
            floor: clock.ticks_in(floor),
            max: clock.ticks_in(MAX_WINDOW.max(floor)),
            last: Cell::new(0),
            gap_avg: Cell::new(0),
            parked: Cell::new(None),
            busy: Cell::new(0),
            spins: Cell::new(0),
        })
    }

    /// A request arrived or a reply left: the window opens again (the spinner wakes).
    pub(crate) fn activity(&self) {
        self.activity_at(self.clock.now());
    }

    /// [`Spin::activity`] at a given time (the tests give exact gaps).
    fn activity_at(&self, now: Ticks) {
        let gap = now.saturating_sub(self.last.get()).min(self.max);
        let avg = self.gap_avg.get();
        self.gap_avg.set(avg - avg / 8 + gap / 8);
        self.last.set(now);
        if let Some(w) = self.parked.take() {
            w.wake();
        }
    }

    fn window(&self) -> Ticks {
        self.floor.max(self.gap_avg.get().saturating_mul(4)).min(self.max)
    }
}

/// The spinner: yields while the window is open, then parks until the next event.
pub(crate) struct Spinner(pub Rc<Spin>);

impl Future for Spinner {
    type Output = core::convert::Infallible;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let s = &self.0;
        // A reply's `activity` wakes a spinner that rested while requests were at the device.
        if s.busy.get() == 0 && s.clock.now().saturating_sub(s.last.get()) < s.window() {
            s.spins.set(s.spins.get() + 1);
            // A yield: tokio polls its sockets (without sleeping) before running us again.
            cx.waker().wake_by_ref();
        } else {
            s.parked.set(Some(cx.waker().clone()));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_the_gaps_between_events_within_its_bounds() {
        let s = Spin::new(Duration::from_micros(50));
        let us = |n: u64| s.clock.ticks_in(Duration::from_micros(n));
        assert_eq!(s.window(), us(50), "the floor before any gap is known");
        // Events exactly 200 us apart: the window grows towards four gaps (800 us).
        let mut t = us(1_000_000);
        for _ in 0..64 {
            t += us(200);
            s.activity_at(t);
        }
        let w = s.window();
        assert!(w > us(700) && w <= us(800), "{} us", s.clock.to_ns(w) / 1000);
        // Long silences count as the maximum, and the window never passes it.
        for _ in 0..64 {
            t += us(1_000_000);
            s.activity_at(t);
        }
        assert_eq!(s.window(), s.max);
    }

    #[test]
    fn the_spinner_yields_in_the_window_and_parks_after_it() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let s = Spin::new(Duration::from_micros(200));
        local.block_on(&rt, async {
            tokio::task::spawn_local(Spinner(s.clone()));
            s.activity();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let spun = s.spins.get();
            assert!(spun > 0, "no spinning after an event");
            // Long after the window: parked, not spinning.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(s.spins.get(), spun, "still spinning long after the last event");
            s.activity();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(s.spins.get() > spun, "an event did not wake the spinner");
            // With a request at the device it rests, events or not.
            let busy = Busy::new(&s);
            tokio::task::yield_now().await;
            let spun = s.spins.get();
            s.activity();
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(s.spins.get(), spun, "spinning with a request at the device");
            drop(busy);
            s.activity();
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            assert!(s.spins.get() > spun, "the last reply did not wake the spinner");
        });
    }
}
