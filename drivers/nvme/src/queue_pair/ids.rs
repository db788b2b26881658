//! Command IDs: which of a queue's slots are free, and the ID each busy slot's command carries.
//!
//! A command ID holds its slot's index in the low bits and the slot's generation above them,
//! bumped each time the slot is issued, so a completion the controller posts twice, late or
//! with a made-up ID names no busy slot of that generation and is ignored (counted as stray)
//! instead of completing someone else's segment. The table knows nothing of the device or the
//! memory: it is tested on its own, below.

/// The free slots and each slot's generation (see the module docs).
pub(super) struct SlotIds {
    /// Free slot indices; the last one is taken first (the most recently used slot's PRP page
    /// is the likeliest to be in cache).
    free: Vec<u16>,
    generation: Box<[u16]>,
    /// Bits of a command ID that hold the slot index.
    bits: u32,
}

impl SlotIds {
    /// A table of `n` slots, all free. `n` is at least 1 and below 65536 (a queue has one
    /// slot fewer than its SQ's entries, at most 65536).
    pub(super) fn new(n: usize) -> SlotIds {
        assert!((1..=usize::from(u16::MAX)).contains(&n), "{n} slots: 1 to 65535");
        SlotIds {
            free: (0..n as u16).rev().collect(),
            generation: vec![0; n].into_boxed_slice(),
            bits: u16::BITS - (n as u16).leading_zeros(),
        }
    }

    /// Slots in all.
    pub(super) fn capacity(&self) -> usize {
        self.generation.len()
    }

    /// Slots taken and not yet released.
    pub(super) fn in_use(&self) -> usize {
        self.generation.len() - self.free.len()
    }

    /// No slot is taken.
    pub(super) fn is_idle(&self) -> bool {
        self.free.len() == self.generation.len()
    }

    /// A slot is free.
    #[inline]
    pub(super) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a free slot (its ID comes from [`issue`](Self::issue) once the command is built).
    #[inline]
    pub(super) fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Gives back a slot: its command completed, failed or was never issued.
    #[inline]
    pub(super) fn release(&mut self, idx: u16) {
        debug_assert!(usize::from(idx) < self.capacity() && !self.free.contains(&idx));
        self.free.push(idx);
    }

    /// Starts a new generation of slot `idx` and returns the command ID that names it.
    #[inline]
    pub(super) fn issue(&mut self, idx: u16) -> u16 {
        let g = &mut self.generation[usize::from(idx)];
        *g = g.wrapping_add(1);
        self.cid(idx)
    }

    /// The command ID slot `idx` was last issued with.
    #[inline]
    pub(super) fn cid(&self, idx: u16) -> u16 {
        let generation = self.generation[usize::from(idx)];
        if self.bits >= 16 {
            idx
        } else {
            idx | (generation << self.bits)
        }
    }

    /// The slot a command ID names, if it exists and was last issued with this ID. Whether
    /// the slot is still busy is the caller's to check (a released slot keeps its ID until it
    /// is issued again).
    #[inline]
    pub(super) fn slot_of(&self, cid: u16) -> Option<usize> {
        let mask = ((1u32 << self.bits) - 1) as u16;
        let idx = cid & mask;
        (usize::from(idx) < self.capacity() && self.cid(idx) == cid).then_some(usize::from(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn every_slot_is_taken_once_and_named_by_its_id() {
        for n in [1, 2, 3, 63, 64, 65, 4095] {
            let mut ids = SlotIds::new(n);
            let mut cids = BTreeSet::new();
            for _ in 0..n {
                let idx = ids.take().expect("a free slot");
                let cid = ids.issue(idx);
                assert!(cids.insert(cid), "{n} slots: ID {cid:#x} issued twice");
                assert_eq!(ids.slot_of(cid), Some(usize::from(idx)));
            }
            assert_eq!(ids.take(), None, "{n} slots: more taken than exist");
            assert!(!ids.has_room());
            assert_eq!(ids.in_use(), n);
        }
    }

    #[test]
    fn a_reissued_slot_rejects_its_old_ids() {
        let mut ids = SlotIds::new(4095); // 12 index bits: 16 generations before an ID recurs
        let idx = ids.take().unwrap();
        let first = ids.issue(idx);
        let mut old = vec![first];
        for _ in 1..16 {
            ids.release(idx);
            assert_eq!(ids.take(), Some(idx), "the slot just released is taken first");
            let cid = ids.issue(idx);
            for &o in &old {
                assert_eq!(ids.slot_of(o), None, "old ID {o:#x} still names the slot");
            }
            old.push(cid);
        }
        ids.release(idx);
        assert_eq!(ids.take(), Some(idx));
        assert_eq!(ids.issue(idx), first, "generations wrap after 2^(16 - index bits)");
    }

    #[test]
    fn ids_past_the_table_name_nothing() {
        let ids = SlotIds::new(5); // 3 index bits: indices 5..8 are representable, not slots
        for cid in 0..=u16::MAX {
            if let Some(idx) = ids.slot_of(cid) {
                assert!(idx < 5);
                assert_eq!(ids.cid(idx as u16), cid);
            }
        }
        assert_eq!(ids.slot_of(5), None);
        assert_eq!(ids.slot_of(7), None);
        assert_eq!(ids.slot_of(u16::MAX), None);
    }

    #[test]
    #[should_panic(expected = "0 slots")]
    fn an_empty_table_is_refused() {
        SlotIds::new(0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take,
        /// Release the i-th busy slot (mod their count).
        Release(usize),
        /// Look up a made-up command ID.
        Probe(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Take),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<u16>().prop_map(Op::Probe),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Against a reference: busy slots carry distinct IDs that each name their slot; a
        /// made-up ID names a busy slot only if it is that slot's ID; the counts add up.
        #[test]
        fn ids_follow_a_reference_table(n in 1usize..70, ops in proptest::collection::vec(op(), 1..300)) {
            let mut ids = SlotIds::new(n);
            let mut busy: BTreeMap<u16, u16> = BTreeMap::new(); // idx -> cid
            for op in ops {
                match op {
                    Op::Take => match ids.take() {
                        Some(idx) => {
                            prop_assert!(!busy.contains_key(&idx), "slot {} taken while busy", idx);
                            let cid = ids.issue(idx);
                            busy.insert(idx, cid);
                        }
                        None => prop_assert_eq!(busy.len(), n),
                    },
                    Op::Release(i) if !busy.is_empty() => {
                        let idx = *busy.keys().nth(i % busy.len()).unwrap();
                        busy.remove(&idx);
                        ids.release(idx);
                    }
                    Op::Release(_) => {}
                    Op::Probe(cid) => {
                        if let Some(idx) = ids.slot_of(cid) {
                            if let Some(&c) = busy.get(&(idx as u16)) {
                                prop_assert_eq!(c, cid);
                            }
                        } else {
                            prop_assert!(!busy.values().any(|&c| c == cid));
                        }
                    }
                }
                let distinct: BTreeSet<u16> = busy.values().copied().collect();
                prop_assert_eq!(distinct.len(), busy.len());
                for (&idx, &cid) in &busy {
                    prop_assert_eq!(ids.slot_of(cid), Some(usize::from(idx)));
                }
                prop_assert_eq!(ids.in_use(), busy.len());
                prop_assert_eq!(ids.is_idle(), busy.is_empty());
            }
        }
    }
}
