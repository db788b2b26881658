//! A report for a dropped packet that waits too long: the one hang the framework cannot rule out
//! (a view leaked with `mem::forget`, or held by a backend nobody drives, keeps its packet's
//! memory lent out for ever), said once on stderr so it is not silent.

use crate::backend::Activity;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::time::Instant;

/// Milliseconds a dropped packet waits before the report.
static REPORT_AFTER_MS: AtomicU64 = AtomicU64::new(10_000);

/// Sets how long a dropped packet waits for its segments before it reports, once, on stderr
/// that it is still waiting (default 10 s). It keeps waiting after the report: its memory is
/// lent to the device until the segments complete.
pub fn report_stalled_drops_after(after: Duration) {
    REPORT_AFTER_MS.store(after.as_millis().min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// Loop iterations between clock reads.
const CHECK_EVERY: u32 = 256;

/// Watches one wait.
pub(crate) struct Watch {
    start: Instant,
    iterations: u32,
    last: Option<Activity>,
    reported: bool,
}

impl Watch {
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), iterations: 0, last: None, reported: false }
    }

    /// The backend's answer to the last poll.
    pub(crate) fn polled(&mut self, activity: Activity) {
        self.last = Some(activity);
    }

    /// One turn of the wait with `outstanding` segments in flight.
    pub(crate) fn check(&mut self, outstanding: usize, has_driver: bool) {
        self.iterations = self.iterations.wrapping_add(1);
        if self.reported || self.iterations % CHECK_EVERY != 0 {
            return;
        }
        let waited = self.start.elapsed();
        if waited.as_millis() < u128::from(REPORT_AFTER_MS.load(Ordering::Relaxed)) {
            return;
        }
        self.reported = true;
        let why = match (has_driver, self.last) {
            (false, _) => {
                "it was started without a backend to drive, so whoever holds its views must \
                 complete them"
            }
            (true, Some(Activity::Idle)) => {
                "its backend reports nothing in flight, so a view was probably leaked \
                 (mem::forget) or handed to a backend that nobody polls"
            }
            _ => "its backend is still busy (a slow or stuck device: its timeout applies)",
        };
        // Not `eprintln!`, which panics on a closed stderr (this runs inside the wait).
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "mfio: a dropped packet has waited {:.1} s for {outstanding} segment(s) in flight; \
             {why}. Its memory stays lent out until they complete, so this thread keeps waiting.",
            waited.as_secs_f64()
        );
    }
}
