//! A cheap clock for timing I/O: the CPU's timestamp counter, calibrated against the system
//! clock once.
//!
//! Latency percentiles need a timestamp per I/O. `Instant::now` is a vDSO call when the kernel
//! trusts the TSC, but a system call plus an emulated HPET read (microseconds, under QEMU's
//! lock) in a guest that fell back to the hpet clocksource, as TCG guests do. SPDK's perf times
//! I/O with `rdtsc` for the same reason. Elsewhere than x86-64 this is `Instant` underneath.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Ticks of the counter, converted to nanoseconds by [`CycleClock::to_ns`].
pub type Ticks = u64;

/// The calibrated counter.
#[derive(Copy, Clone, Debug)]
pub struct CycleClock {
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    ns_per_tick_q32: u64,
    base: Instant,
}

impl CycleClock {
    /// The process-wide clock, calibrated (over 20 ms) on first use.
    pub fn get() -> &'static CycleClock {
        static CLOCK: OnceLock<CycleClock> = OnceLock::new();
        CLOCK.get_or_init(|| CycleClock::calibrate(Duration::from_millis(20)))
    }

    /// Measures the counter's rate against `Instant` over `window`.
    pub fn calibrate(window: Duration) -> CycleClock {
        let base = Instant::now();
        if !HAS_TSC {
            return CycleClock { ns_per_tick_q32: 1 << 32, base };
        }
        let (i0, t0) = (Instant::now(), raw());
        std::thread::sleep(window);
        let (t1, i1) = (raw(), Instant::now());
        let ns = i1.duration_since(i0).as_nanos();
        let ticks = u128::from(t1.saturating_sub(t0)).max(1);
        let q32 = ((ns << 32) / ticks).clamp(1, u128::from(u64::MAX)) as u64;
        CycleClock { ns_per_tick_q32: q32, base }
    }

    /// The counter now.
    #[inline]
    pub fn now(&self) -> Ticks {
        if HAS_TSC {
            raw()
        } else {
            self.base.elapsed().as_nanos() as u64
        }
    }

    /// Nanoseconds in `ticks` (a difference of two [`now`](Self::now) readings).
    #[inline]
    pub fn to_ns(&self, ticks: Ticks) -> u64 {
        ((u128::from(ticks) * u128::from(self.ns_per_tick_q32)) >> 32) as u64
    }

    /// Ticks in `d`.
    pub fn ticks_in(&self, d: Duration) -> Ticks {
        ((d.as_nanos() << 32) / u128::from(self.ns_per_tick_q32)).min(u128::from(u64::MAX)) as u64
    }
}

const HAS_TSC: bool = cfg!(target_arch = "x86_64");

#[cfg(target_arch = "x86_64")]
#[inline]
fn raw() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86-64 (every x86-64 CPU has it; it reads a
    // counter and touches no memory).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn raw() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_system_clock() {
        let c = CycleClock::calibrate(Duration::from_millis(10));
        let (t0, i0) = (c.now(), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let (t1, i1) = (c.now(), Instant::now());
        let ns = c.to_ns(t1 - t0) as f64;
        let want = i1.duration_since(i0).as_nanos() as f64;
        assert!((ns / want - 1.0).abs() < 0.05, "cycle clock {ns} ns vs system {want} ns");
        let back = c.to_ns(c.ticks_in(Duration::from_millis(5)));
        assert!(back.abs_diff(5_000_000) < 1_000, "5 ms -> ticks -> {back} ns");
    }
}
