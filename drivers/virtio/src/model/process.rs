//! The model's device loop for one queue: fetch what the driver made available (split or
//! packed ring, checked as it goes), then carry requests out and complete them per the
//! [`CompletionMode`]: at once in ring order, reversed or shuffled, or later (deferred) from
//! whichever thread next notifies or releases.
//!
//! Nothing here allocates once warm: fetched chains keep their buffer lists in a spare pool
//! and move between the pending list and the batch by value.

use super::chain::{Each, Fetched};
use super::requests;
use super::{packed, split, CompletionMode, State, VirtioBlkModel, R};
use crate::spec::feature;
use mfio_dma::DmaView;
use std::sync::atomic::{fence, Ordering};

/// One queue's device-side state beyond its registers.
#[derive(Default)]
pub(super) struct QueueWork {
    /// Fetched, not completed, in fetch order.
    pub pending: Vec<Fetched>,
    /// Split: descriptors held by fetched chains.
    pub busy: Vec<bool>,
    /// Packed: flags last seen (fetched) or written (used) at each ring position.
    pub seen: Vec<u16>,
    /// Packed: buffer IDs in flight, a bitmap over all 65536.
    pub ids: Vec<u64>,
    /// Packed: descriptors in flight.
    pub in_flight: u32,
}

impl QueueWork {
    /// Back to a fresh queue's state (device reset), keeping the fetched chains' memory.
    pub fn reset(&mut self, spare: &mut Vec<Fetched>) {
        spare.append(&mut self.pending);
        self.busy.clear();
        self.seen.clear();
        self.ids.clear();
        self.in_flight = 0;
    }
}

/// Processes queue `q`: fetches what is new, then completes what is due (everything when
/// `all`, as on [`VirtioBlkModel::release`]).
///
/// In ring order ([`CompletionMode::InOrder`]) each chain is carried out and completed as soon
/// as it is fetched, in the entry it was fetched into: the driver, which waits in the notify
/// write, sees the same rings as if the model had fetched them all first.
pub(super) fn process_queue(model: &VirtioBlkModel, st: &mut State, q: usize, all: bool) -> R<()> {
    let m = model.inner.dma.lock();
    let before = used_position(st, q);
    run(model, st, &m, q, all)?;
    if used_position(st, q) != before {
        notify_used(st, &m, q, before)?;
    }
    Ok(())
}

/// Where the device's next used entry goes: split, the used index; packed, the used position
/// and its wrap counter.
fn used_position(st: &State, q: usize) -> (u16, bool) {
    let mq = &st.queues[q];
    if st.driver_features & feature::RING_PACKED != 0 {
        (mq.used_pos, mq.used_wrap)
    } else {
        (mq.used_idx, false)
    }
}

/// Sends queue `q`'s used buffer notification (its MSI-X vector) if the driver's event
/// suppression asks for one, now that the used entries moved on from `before`. Split:
/// `used_event` with EVENT_IDX, else the available ring's NO_INTERRUPT flag; packed: the
/// driver event suppression structure (ENABLE, DISABLE, or DESC with EVENT_IDX).
fn notify_used(st: &mut State, m: &DmaView, q: usize, before: (u16, bool)) -> R<()> {
    let mq = st.queues[q];
    let Some(vector) = mq.vector else { return Ok(()) };
    // The used entries are visible before the driver's suppression state is read, or a driver
    // that arms and then looks at the ring could miss both.
    fence(Ordering::SeqCst);
    let wanted = if st.driver_features & feature::RING_PACKED != 0 {
        packed::wants_notification(st, m, q, before)?
    } else {
        split::wants_notification(st, m, q, before.0)?
    };
    if wanted {
        st.irq.raise(vector);
    }
    Ok(())
}

/// Fetches and completes what queue `q` has (see [`process_queue`]).
fn run(model: &VirtioBlkModel, st: &mut State, m: &DmaView, q: usize, all: bool) -> R<()> {
    let mode = model.inner.opts.completion;
    let packed = st.driver_features & feature::RING_PACKED != 0;
    if mode == CompletionMode::InOrder {
        if packed {
            packed::check_driver_event(st, m, q)?;
        }
        let mut done = 0u32;
        let mut each = |st: &mut State, f: &mut Fetched| {
            done += 1;
            carry_out(model, st, m, q, packed, f)
        };
        let r = fetch(st, m, q, packed, &mut each);
        if !packed && done > 0 {
            split::publish_used(st, m, q)?;
        }
        return r;
    }
    let due = match mode {
        CompletionMode::Deferred { notifies, .. } => st.notifies + u64::from(notifies.max(1)),
        _ => 0,
    };
    // The others: onto the pending list first, each entry replaced by a spare.
    let mut hold = |st: &mut State, f: &mut Fetched| {
        f.due = due;
        let spare = st.spare.pop().unwrap_or_default();
        st.work[q].pending.push(std::mem::replace(f, spare));
        Ok(())
    };
    fetch(st, m, q, packed, &mut hold)?;
    // What completes now, in fetch order.
    let mut batch = std::mem::take(&mut st.batch);
    let pending = &mut st.work[q].pending;
    match mode {
        CompletionMode::Deferred { .. } if !all => {
            let mut i = 0;
            while i < pending.len() {
                if pending[i].due <= st.notifies {
                    batch.push(pending.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        _ => batch.append(pending),
    }
    // In the order the mode says.
    match mode {
        CompletionMode::Reversed => batch.reverse(),
        CompletionMode::Shuffled { seed } | CompletionMode::Deferred { seed, .. } if seed != 0 => {
            if st.rng == 0 {
                st.rng = seed;
            }
            for i in (1..batch.len()).rev() {
                // xorshift64
                st.rng ^= st.rng << 13;
                st.rng ^= st.rng >> 7;
                st.rng ^= st.rng << 17;
                batch.swap(i, (st.rng % (i as u64 + 1)) as usize);
            }
        }
        _ => {}
    }
    let r = complete(model, st, m, q, packed, &mut batch);
    st.batch = batch;
    r
}

/// Fetches queue `q`'s new chains (either layout) into a spare entry, handing each to `each`.
fn fetch(st: &mut State, m: &DmaView, q: usize, packed: bool, each: &mut impl Each) -> R<()> {
    let mut f = st.spare.pop().unwrap_or_default();
    let r = if packed {
        packed::fetch(st, m, q, &mut f, each)
    } else {
        split::fetch(st, m, q, &mut f, each)
    };
    st.spare.push(f);
    r
}

/// Carries out the request of `f` and writes its used entry (split: the used index follows
/// in [`split::publish_used`]).
#[inline]
fn carry_out(
    model: &VirtioBlkModel,
    st: &mut State,
    m: &DmaView,
    q: usize,
    packed: bool,
    f: &Fetched,
) -> R<()> {
    let written = requests::request(model, st, m, f)?;
    st.requests += 1;
    st.indirect_requests += u64::from(f.indirect);
    if packed {
        packed::complete(st, m, q, f, written)
    } else {
        split::complete(st, m, q, f, written)
    }
}

/// Carries out and completes `batch` in its order.
fn complete(
    model: &VirtioBlkModel,
    st: &mut State,
    m: &DmaView,
    q: usize,
    packed: bool,
    batch: &mut Vec<Fetched>,
) -> R<()> {
    if batch.is_empty() {
        return Ok(());
    }
    if packed {
        packed::check_driver_event(st, m, q)?;
    }
    for f in batch.drain(..) {
        carry_out(model, st, m, q, packed, &f)?;
        st.spare.push(f);
    }
    if !packed {
        split::publish_used(st, m, q)?;
    }
    Ok(())
}
