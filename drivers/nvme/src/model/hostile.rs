//! A hostile controller: I/O completion queue entries written with garbage (random command
//! IDs, statuses and SQ heads, duplicated and stale entries, now and then a wrong phase or a
//! lost entry), to show that the driver never panics, never completes a segment twice, never
//! reaches outside its own memory, and turns each lie into a typed error or a reset.
//!
//! A lying controller makes the driver's view and the model's differ (a command the driver
//! completed early on a forged entry may be reissued while the model still runs it), so tests
//! that use it turn [`ModelConfig::panic_on_violation`](super::ModelConfig) off.

use crate::spec::Completion;
use std::collections::VecDeque;

/// How hostile: see [`NvmeModel::set_hostile`](super::NvmeModel::set_hostile).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Hostile {
    /// Seeds the choice of entries and garbage.
    pub seed: u64,
    /// Entries corrupted per 1000 I/O completions posted.
    pub per_mille: u32,
    /// Also lose entries (a forged command ID in place of the real one, a wrong phase tag),
    /// which only the driver's timeouts and resets recover from.
    pub lossy: bool,
}

/// What the hostile controller did (see [`NvmeModel::hostile_counts`](super::NvmeModel::hostile_counts)).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct HostileCounts {
    /// Entries with a random command ID posted before the real one.
    pub forged: u64,
    /// Real entries posted twice.
    pub duplicated: u64,
    /// Earlier entries posted again.
    pub stale: u64,
    /// Entries with a random SQ head.
    pub sq_heads: u64,
    /// Entries with a random status.
    pub statuses: u64,
    /// Real entries replaced by one with a random command ID.
    pub replaced: u64,
    /// Entries written with the wrong phase tag.
    pub wrong_phase: u64,
}

pub(crate) struct HostileState {
    cfg: Hostile,
    rng: u64,
    /// The last entries posted, to post again.
    history: VecDeque<Completion>,
    pub counts: HostileCounts,
}

/// One entry to write: the entry, and whether its phase tag is inverted.
pub(crate) type Entry = (Completion, bool);

impl HostileState {
    pub fn new(cfg: Hostile) -> Self {
        Self { cfg, rng: cfg.seed | 1, history: VecDeque::new(), counts: HostileCounts::default() }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The entries to write in place of `c` (the real one, with its SQ head set): `c` itself
    /// most of the time.
    pub fn corrupt(&mut self, c: Completion, out: &mut Vec<Entry>) {
        self.history.push_back(c);
        if self.history.len() > 8 {
            self.history.pop_front();
        }
        if self.next() % 1000 >= u64::from(self.cfg.per_mille) {
            out.push((c, false));
            return;
        }
        let kinds = if self.cfg.lossy { 7 } else { 5 };
        let r = self.next();
        let mut bad = c;
        match r % kinds {
            0 => {
                bad.cid = (r >> 16) as u16;
                bad.status = (r >> 32) as u16 & !1;
                out.push((bad, false));
                out.push((c, false));
                self.counts.forged += 1;
            }
            1 => {
                out.push((c, false));
                out.push((c, false));
                self.counts.duplicated += 1;
            }
            2 => {
                let old = self.history[(r >> 8) as usize % self.history.len()];
                out.push((old, false));
                out.push((c, false));
                self.counts.stale += 1;
            }
            3 => {
                bad.sq_head = (r >> 16) as u16;
                out.push((bad, false));
                self.counts.sq_heads += 1;
            }
            4 => {
                bad.status = (r >> 16) as u16 & !1;
                out.push((bad, false));
                self.counts.statuses += 1;
            }
            5 => {
                bad.cid = (r >> 16) as u16;
                out.push((bad, false));
                self.counts.replaced += 1;
            }
            _ => {
                out.push((c, true));
                self.counts.wrong_phase += 1;
            }
        }
    }
}
