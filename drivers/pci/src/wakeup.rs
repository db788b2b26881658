//! How a queue learns of completions: polling, interrupts, or both in turn.
//!
//! Both drivers keep one [`Wakeup`] per interrupt-driven queue. It owns the queue's MSI-X
//! eventfd and decides, after each poll of the queue, whether the caller should poll again
//! (`Busy`) or may sleep on the eventfd (`Armed`). The lost wake-up is avoided by the order of
//! three steps, which every driver keeps:
//!
//! 1. [`Wakeup::woke`] at the start of a poll after an `Armed` answer: reads the eventfd (so an
//!    interrupt already handled is not slept on again) and notes whether one came;
//! 2. the driver arms the device (virtio-blk: used-buffer notifications back on) and then looks
//!    at its completion ring, as it does on every poll;
//! 3. only a poll that found nothing after arming answers `Armed`.
//!
//! The eventfd is never read between the look at the ring and the sleep, so an interrupt for
//! a completion posted after the look is still counted in the eventfd when the caller sleeps.
//!
//! An interrupt that never comes (a masked vector, a lost message, a vector routed nowhere) is
//! noticed: after an `Armed` answer, a poll that finds completions while the eventfd says no
//! interrupt came is *unannounced*. [`UNANNOUNCED_LIMIT`] of those in a row and the queue falls
//! back to polling for good, said once through `tracing`. Callers sleep at most a bounded time
//! (mfio's `block_on` 50 ms), so the fallback comes within a fraction of a second, not never.

use std::time::Duration;

use mfio_dma::clock::{CycleClock, Ticks};
use nix::sys::eventfd::EventFd;

/// How an I/O queue waits for its completions.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// Poll the completion ring; no interrupts (the lowest latency, a core while waiting).
    #[default]
    Poll,
    /// Sleep on the queue's interrupt whenever a poll finds nothing.
    Interrupt,
    /// Poll while completions keep coming at their usual pace; once none has come for the
    /// window (`spin`, or four times the recent average gap between completions when that is
    /// longer, up to [`ADAPTIVE_MAX_WINDOW`]), arm the interrupt and sleep. A queue under load
    /// so never sleeps between two completions, and one whose device stalls, or whose I/O is
    /// slow, sleeps.
    Adaptive {
        /// The shortest window after the last completion.
        spin: Duration,
    },
}

impl CompletionMode {
    /// Adaptive with the default spin window (50 us: about a device round trip, so a queue
    /// under load never sleeps, and one that goes idle sleeps soon).
    pub const ADAPTIVE: CompletionMode = CompletionMode::Adaptive { spin: DEFAULT_SPIN };

    /// Whether the queue needs an interrupt vector.
    pub fn uses_interrupts(self) -> bool {
        !matches!(self, CompletionMode::Poll)
    }
}

impl std::fmt::Display for CompletionMode {
    /// The form [`FromStr`](std::str::FromStr) reads: `poll`, `interrupt`, `adaptive:<us>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompletionMode::Poll => f.write_str("poll"),
            CompletionMode::Interrupt => f.write_str("interrupt"),
            CompletionMode::Adaptive { spin } => write!(f, "adaptive:{}", spin.as_micros()),
        }
    }
}

impl std::str::FromStr for CompletionMode {
    type Err = String;

    /// `poll`, `interrupt`, `adaptive` or `adaptive:<microseconds>`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poll" => Ok(CompletionMode::Poll),
            "interrupt" => Ok(CompletionMode::Interrupt),
            "adaptive" => Ok(CompletionMode::ADAPTIVE),
            _ => s
                .strip_prefix("adaptive:")
                .and_then(|us| us.parse::<u64>().ok())
                .map(|us| CompletionMode::Adaptive { spin: Duration::from_micros(us) })
                .ok_or_else(|| {
                    format!(
                        "`{s}` is not a completion mode: poll, interrupt, adaptive, or \
                         adaptive:<spin microseconds>"
                    )
                }),
        }
    }
}

/// The default spin window of [`CompletionMode::ADAPTIVE`].
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// The longest an adaptive queue's window grows to with the gaps between its completions.
pub const ADAPTIVE_MAX_WINDOW: Duration = Duration::from_millis(1);

/// Unannounced completions in a row after which a queue stops trusting its interrupt.
pub const UNANNOUNCED_LIMIT: u32 = 3;

/// How long after an `Armed` answer a completion found without its interrupt counts as
/// unannounced: far longer than an MSI takes to arrive, shorter than a bounded sleep (50 ms).
pub const UNANNOUNCED_AFTER: Duration = Duration::from_millis(10);

/// Empty polls between clock reads while an adaptive queue spins. The clock is the CPU's
/// counter (`CycleClock`): `Instant::now` can be a system call and an emulated HPET read in a
/// guest, which would eat the window it measures.
const CLOCK_EVERY: u32 = 4;

/// What a queue should tell its caller after a poll.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Poll again.
    Spin,
    /// Arm the device (where it has notification suppression), look at the ring once more,
    /// and answer `Armed` if that finds nothing.
    Arm,
}

/// Counters of a queue's waiting.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WakeupStats {
    /// Polls answered `Armed` (the caller could sleep).
    pub armed: u64,
    /// Polls after an `Armed` answer that found the eventfd signalled.
    pub interrupts: u64,
    /// Polls after an `Armed` answer that found completions no interrupt announced.
    pub unannounced: u64,
    /// Whether the queue gave up on its interrupt and polls (see [`UNANNOUNCED_LIMIT`]).
    pub fell_back: bool,
}

/// One queue's interrupt and the state of its waiting (see the module documentation).
pub struct Wakeup {
    mode: CompletionMode,
    fd: EventFd,
    /// The last poll answered `Armed`.
    armed: bool,
    /// This poll follows an `Armed` answer: its completions should have been announced.
    after_sleep: bool,
    /// When the queue last answered `Armed`.
    slept_at: Ticks,
    /// The last poll answered `Idle`.
    was_idle: bool,
    /// An interrupt was seen at the start of this poll.
    interrupted: bool,
    unannounced_run: u32,
    /// Adaptive: empty polls since the last completion, and when the spin window started.
    empty_polls: u32,
    spin_start: Option<Ticks>,
    /// Adaptive: the spin window in clock ticks, and whether it ran out since the last
    /// completion (a poll after a sleep that found nothing arms again at once, instead of
    /// spinning a window that is measured from the last completion, not from the wake).
    spin_ticks: Ticks,
    spun: bool,
    /// Adaptive: when the last completion was seen, and the moving average of the gaps between
    /// completions (weight 1/8), in ticks; the window is at least four times that.
    last_done: Ticks,
    gap_avg: Ticks,
    max_window: Ticks,
    clock: &'static CycleClock,
    stats: WakeupStats,
    /// For the log line.
    name: String,
}

impl Wakeup {
    /// A queue's wakeup in `mode` on `fd`, the queue's MSI-X eventfd (nonblocking).
    pub fn new(mode: CompletionMode, fd: EventFd, name: String) -> Self {
        let clock = CycleClock::get();
        let spin_ticks = match mode {
            CompletionMode::Adaptive { spin } => clock.ticks_in(spin),
            _ => 0,
        };
        Self {
            spin_ticks,
            spun: false,
            last_done: 0,
            gap_avg: 0,
            max_window: clock.ticks_in(ADAPTIVE_MAX_WINDOW).max(spin_ticks),
            clock,
            mode,
            fd,
            armed: false,
            after_sleep: false,
            slept_at: 0,
            was_idle: false,
            interrupted: false,
            unannounced_run: 0,
            empty_polls: 0,
            spin_start: None,
            stats: WakeupStats::default(),
            name,
        }
    }

    /// The mode the queue waits in now (`Poll` after a fallback).
    pub fn mode(&self) -> CompletionMode {
        if self.stats.fell_back {
            CompletionMode::Poll
        } else {
            self.mode
        }
    }

    /// The eventfd to sleep on.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// The counters.
    pub fn stats(&self) -> WakeupStats {
        self.stats
    }

    /// Step 1: at the start of a poll. After an `Armed` answer, reads (clears) the eventfd,
    /// remembers whether an interrupt came, and returns `true` (the queue may turn its device's
    /// notifications off again while it polls).
    #[inline]
    pub fn woke(&mut self) -> bool {
        if !self.armed {
            return false;
        }
        self.armed = false;
        self.after_sleep = true;
        self.interrupted = self.drain();
        if self.interrupted {
            self.stats.interrupts += 1;
        }
        true
    }

    /// Reads the eventfd; whether it was signalled.
    fn drain(&self) -> bool {
        matches!(self.fd.read(), Ok(n) if n > 0)
    }

    /// Step 2, after the ring was looked at: `reaped` completions found, `busy` whether
    /// anything is still in flight. `Arm` when the queue should arm and answer `Armed` if one
    /// more look at its ring finds nothing; the eventfd has then been cleared of interrupts for
    /// completions already reaped (which would end the sleep at once), and the look after
    /// catches any completion whose interrupt that cleared.
    #[inline]
    pub fn after_poll(&mut self, reaped: u32, busy: bool) -> Verdict {
        if reaped > 0 {
            self.completed();
        }
        self.after_sleep = false;
        self.interrupted = false;
        if !busy {
            // Idle twice in a row, nothing reaped: the caller came back without sending
            // anything, perhaps
            // because the eventfd is readable with interrupts for what was reaped (or one that
            // landed after its completion). Clear it, so a caller that sleeps on it until work
            // is sent really sleeps (nothing in flight: nothing to miss). Not on the first idle
            // answer: at QD1 every I/O ends in one, and a read there is a system call per I/O;
            // a sleeper pays at most one early wake instead.
            if std::mem::replace(&mut self.was_idle, true) && reaped == 0 {
                self.drain();
            }
            return Verdict::Spin;
        }
        self.was_idle = false;
        if reaped > 0 || self.stats.fell_back {
            return Verdict::Spin;
        }
        let verdict = match self.mode {
            CompletionMode::Poll => Verdict::Spin,
            CompletionMode::Interrupt => Verdict::Arm,
            CompletionMode::Adaptive { .. } => self.spun_out(),
        };
        if verdict == Verdict::Arm {
            self.drain();
        }
        verdict
    }

    /// Completions came: check they were announced (after a sleep), restart the spin window.
    fn completed(&mut self) {
        self.empty_polls = 0;
        self.spin_start = None;
        self.spun = false;
        if matches!(self.mode, CompletionMode::Adaptive { .. }) {
            let now = self.clock.now();
            // Gaps after a sleep are the device's stalls, not its pace: left out.
            if self.last_done != 0 && !self.after_sleep {
                let gap = now.saturating_sub(self.last_done).min(self.max_window);
                self.gap_avg = self.gap_avg - self.gap_avg / 8 + gap / 8;
            }
            self.last_done = now;
        }
        if !self.after_sleep {
            return;
        }
        if self.interrupted {
            self.unannounced_run = 0;
            return;
        }
        // Found without its interrupt, but soon after the `Armed` answer: the caller did not
        // sleep out a bound (it polls regardless, or something else woke it) and the message may
        // still be on its way. Only a completion that waited that long unannounced counts.
        if self.clock.now().saturating_sub(self.slept_at) < self.clock.ticks_in(UNANNOUNCED_AFTER) {
            return;
        }
        // Its message may have landed after the read at the start of this poll (the device
        // posted while the queue woke from a bound): look again. Draining here loses nothing:
        // this poll reaped, so it answers `Busy` and the caller polls again.
        if self.drain() {
            self.stats.interrupts += 1;
            self.unannounced_run = 0;
            return;
        }
        // A completion no interrupt announced; too many in a row and the queue polls for good.
        self.stats.unannounced += 1;
        self.unannounced_run += 1;
        if self.unannounced_run >= UNANNOUNCED_LIMIT && !self.stats.fell_back {
            self.stats.fell_back = true;
            tracing::warn!(
                queue = %self.name,
                "{UNANNOUNCED_LIMIT} completions in a row came without their interrupt (a masked \
                 or lost MSI-X vector?): this queue polls from now on"
            );
        }
    }

    /// Adaptive: whether the spin window since the last completion has passed.
    fn spun_out(&mut self) -> Verdict {
        if self.spun {
            return Verdict::Arm;
        }
        let n = self.empty_polls;
        self.empty_polls = n.wrapping_add(1);
        if n % CLOCK_EVERY != 0 {
            return Verdict::Spin;
        }
        let now = self.clock.now();
        match self.spin_start {
            None => {
                self.spin_start = Some(now);
                Verdict::Spin
            }
            Some(t) if now.saturating_sub(t) >= self.window() => {
                self.spun = true;
                Verdict::Arm
            }
            Some(_) => Verdict::Spin,
        }
    }

    /// Adaptive: how long to spin after the last completion.
    fn window(&self) -> Ticks {
        self.spin_ticks.max(self.gap_avg.saturating_mul(4)).min(self.max_window)
    }

    /// Step 3: the queue armed, looked at its ring and found nothing; it answers `Armed`.
    pub fn sleeping(&mut self) {
        self.slept_at = self.clock.now();
        self.armed = true;
        self.stats.armed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::EfdFlags;
    use std::time::Instant;

    fn wakeup(mode: CompletionMode) -> (Wakeup, EventFd) {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
        let device = crate::dup_eventfd(&fd).unwrap();
        (Wakeup::new(mode, fd, "test".into()), device)
    }

    fn readable(fd: &EventFd) -> bool {
        let n = fd.read().unwrap_or(0);
        if n > 0 {
            fd.write(n).unwrap();
        }
        n > 0
    }

    #[test]
    fn an_interrupt_after_the_arm_verdict_is_still_pending_when_the_caller_sleeps() {
        let (mut w, device) = wakeup(CompletionMode::Interrupt);
        device.write(1).unwrap(); // stale: for a completion reaped earlier
        assert_eq!(w.after_poll(0, true), Verdict::Arm);
        assert!(!readable(w.fd()), "the arm verdict cleared the stale interrupt");
        device.write(1).unwrap(); // posted between the look at the ring and the sleep
        w.sleeping();
        assert!(readable(w.fd()), "sleeping must not clear it: the sleep would miss it");
        w.woke();
        assert_eq!(w.after_poll(1, false), Verdict::Spin);
        assert_eq!((w.stats().interrupts, w.stats().unannounced), (1, 0));
    }

    #[test]
    fn poll_mode_never_arms_and_adaptive_arms_only_after_its_window() {
        let (mut w, _d) = wakeup(CompletionMode::Poll);
        assert_eq!(w.after_poll(0, true), Verdict::Spin);
        let spin = Duration::from_millis(20);
        let (mut w, _d) = wakeup(CompletionMode::Adaptive { spin });
        let t0 = Instant::now();
        let mut polls = 0u64;
        while w.after_poll(0, true) == Verdict::Spin {
            polls += 1;
        }
        // The window is measured on the CPU's counter, calibrated against the system clock
        // over 20 ms once: allow for the calibration's error.
        let elapsed = t0.elapsed();
        assert!(elapsed >= spin * 4 / 5, "armed after {elapsed:?} ({polls} polls)");
        // A completion restarts the window.
        assert_eq!(w.after_poll(1, true), Verdict::Spin);
        assert_eq!(w.after_poll(0, true), Verdict::Spin);
    }

    #[test]
    fn an_adaptive_window_grows_with_the_pace_of_completions() {
        let (mut w, _d) = wakeup(CompletionMode::ADAPTIVE);
        // Completions 2 ms apart (an emulated device, a deep queue served in batches): the
        // window becomes the cap, 1 ms, not the 50 us floor.
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(w.after_poll(1, true), Verdict::Spin);
        }
        let t0 = Instant::now();
        while w.after_poll(0, true) == Verdict::Spin {}
        let elapsed = t0.elapsed();
        assert!(elapsed >= ADAPTIVE_MAX_WINDOW * 3 / 5, "armed after {elapsed:?}");
    }

    #[test]
    fn unannounced_completions_make_the_queue_poll_after_the_limit() {
        let (mut w, device) = wakeup(CompletionMode::Interrupt);
        for i in 0..UNANNOUNCED_LIMIT {
            assert_eq!(w.mode(), CompletionMode::Interrupt, "{i}");
            assert_eq!(w.after_poll(0, true), Verdict::Arm);
            w.sleeping();
            std::thread::sleep(UNANNOUNCED_AFTER); // a bounded sleep ran out: no interrupt
            w.woke();
            assert_eq!(w.after_poll(1, true), Verdict::Spin);
        }
        assert!(w.stats().fell_back);
        assert_eq!(w.mode(), CompletionMode::Poll);
        assert_eq!(w.after_poll(0, true), Verdict::Spin, "a fallen-back queue polls");
        // An announced completion resets the run: it takes the limit in a row.
        let (mut w, _) = (wakeup(CompletionMode::Interrupt).0, ());
        for announced in [false, false, true, false, false] {
            w.after_poll(0, true);
            w.sleeping();
            std::thread::sleep(UNANNOUNCED_AFTER);
            if announced {
                crate::dup_eventfd(w.fd()).unwrap().write(1).unwrap();
            }
            w.woke();
            w.after_poll(1, true);
        }
        assert!(!w.stats().fell_back, "{:?}", w.stats());
        drop(device);
    }

    #[test]
    fn a_second_idle_answer_clears_interrupts_for_what_was_reaped() {
        let (mut w, device) = wakeup(CompletionMode::ADAPTIVE);
        device.write(3).unwrap();
        assert_eq!(w.after_poll(3, false), Verdict::Spin);
        assert!(readable(w.fd()), "going idle costs no system call (one per I/O at QD1)");
        assert_eq!(w.after_poll(0, false), Verdict::Spin);
        assert!(!readable(w.fd()), "an idle caller that came back sleeps for real next time");
        device.write(1).unwrap(); // a message landing after its completion was reaped
        assert_eq!(w.after_poll(0, false), Verdict::Spin);
        assert!(!readable(w.fd()), "a late interrupt does not keep an idle queue readable");
        // Busy again, then idle: the first idle answer reads nothing again.
        assert_eq!(w.after_poll(0, true), Verdict::Spin);
        device.write(1).unwrap();
        assert_eq!(w.after_poll(1, false), Verdict::Spin);
        assert!(readable(w.fd()));
    }

    #[test]
    fn a_completion_found_soon_after_arming_is_not_counted_unannounced() {
        // A caller that treats `Armed` as busy (a stripe of queues), or a sleep ended by
        // something else: the interrupt may still be on its way.
        let (mut w, _d) = wakeup(CompletionMode::Interrupt);
        for _ in 0..10 {
            assert_eq!(w.after_poll(0, true), Verdict::Arm);
            w.sleeping();
            w.woke();
            w.after_poll(1, true);
        }
        assert_eq!(w.stats().unannounced, 0);
        assert!(!w.stats().fell_back);
    }

    #[test]
    fn modes_parse_from_their_names() {
        assert_eq!("poll".parse(), Ok(CompletionMode::Poll));
        assert_eq!("interrupt".parse(), Ok(CompletionMode::Interrupt));
        assert_eq!("adaptive".parse(), Ok(CompletionMode::ADAPTIVE));
        assert_eq!(
            "adaptive:200".parse(),
            Ok(CompletionMode::Adaptive { spin: Duration::from_micros(200) })
        );
        for m in [CompletionMode::Poll, CompletionMode::Interrupt, CompletionMode::ADAPTIVE] {
            assert_eq!(m.to_string().parse(), Ok(m));
        }
        let e = "spin".parse::<CompletionMode>().unwrap_err();
        assert!(e.contains("poll, interrupt, adaptive"), "{e}");
    }
}
