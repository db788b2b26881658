//! The packed ring against a hand-played device: wrap counters across many laps (chains
//! straddling the end of the ring), out-of-order completion by buffer ID, stale descriptors
//! that must not look used, notification suppression, and the indirect table format.

use super::*;
use crate::spec::packed::{DESC_FLAGS, DESC_ID, EVENT_F_ENABLE};
use crate::spec::ring::DESC_F_INDIRECT;
use mfio_dma::CheckingMapper;

fn queue(size: u16, event_idx: bool) -> PackedQueue {
    let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
    PackedQueue::new(&space, size, event_idx).unwrap()
}

fn d(k: usize) -> Desc {
    Desc { addr: 0x1000 * k as u64, len: 512, flags: if k > 0 { DESC_F_WRITE } else { 0 } }
}

/// The device side: its own wrap counters and positions, as the specification has them.
struct Dev {
    avail_pos: u16,
    avail_wrap: bool,
    used_pos: u16,
    used_wrap: bool,
}

impl Dev {
    fn new() -> Self {
        Dev { avail_pos: 0, avail_wrap: true, used_pos: 0, used_wrap: true }
    }

    /// Takes every available chain, checking the flags of each descriptor against the wrap
    /// counter of its own lap and the ID in each; returns `(id, descriptors)` in ring order.
    fn fetch(&mut self, q: &PackedQueue) -> Vec<(u16, u16)> {
        let m = q.ring.mem();
        let mut out = vec![];
        loop {
            let at = usize::from(self.avail_pos) * DESC_SIZE;
            let flags = u16::from_le(m.load_acquire_u16(at + DESC_FLAGS));
            let (a, u) = (flags & DESC_F_AVAIL != 0, flags & DESC_F_USED != 0);
            if a != self.avail_wrap || u == self.avail_wrap {
                return out;
            }
            let id = m.read_le16(at + DESC_ID);
            let mut n = 0u16;
            loop {
                let at = usize::from(self.avail_pos) * DESC_SIZE;
                let f = m.read_le16(at + DESC_FLAGS);
                assert_eq!(f & DESC_F_AVAIL != 0, self.avail_wrap, "AVAIL of its lap");
                assert_eq!(f & DESC_F_USED != 0, !self.avail_wrap, "USED the inverse");
                assert_eq!(m.read_le16(at + DESC_ID), id, "every descriptor carries the ID");
                n += 1;
                self.avail_pos += 1;
                if self.avail_pos == q.size {
                    self.avail_pos = 0;
                    self.avail_wrap = !self.avail_wrap;
                }
                if f & DESC_F_NEXT == 0 {
                    break;
                }
            }
            out.push((id, n));
        }
    }

    /// Writes the used descriptor of buffer `id` (a chain of `n`) at the next used position.
    fn complete(&mut self, q: &PackedQueue, id: u16, n: u16, len: u32) {
        let m = q.ring.mem();
        let at = usize::from(self.used_pos) * DESC_SIZE;
        m.write_le16(at + DESC_ID, id);
        m.write_le32(at + DESC_LEN, len);
        let bits = if self.used_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
        m.store_release_u16(at + DESC_FLAGS, (bits | DESC_F_WRITE).to_le());
        self.used_pos += n;
        if self.used_pos >= q.size {
            self.used_pos -= q.size;
            self.used_wrap = !self.used_wrap;
        }
    }
}

fn used(q: &mut PackedQueue) -> Used {
    match q.next_used() {
        Some(Completion::Used(u)) => u,
        other => panic!("expected a used buffer, got {other:?}"),
    }
}

#[test]
fn chains_straddle_the_end_and_the_wrap_counters_flip_every_lap() {
    // Chains of 3 on a ring of 8: most laps end inside a chain.
    let mut q = queue(8, false);
    let mut dev = Dev::new();
    let mut laps_seen = 0u32;
    for i in 0..5000u32 {
        let wrap_before = q.avail_wrap();
        let id = q.add_chain(3, d).unwrap();
        q.publish();
        let got = dev.fetch(&q);
        assert_eq!(got, vec![(id, 3)], "request {i}");
        assert!(q.next_used().is_none(), "nothing used yet (request {i})");
        dev.complete(&q, id, 3, 513);
        assert_eq!(used(&mut q), Used { id: u32::from(id), len: 513 });
        assert!(q.next_used().is_none());
        assert_eq!(q.num_free(), 8);
        laps_seen += u32::from(wrap_before != q.avail_wrap());
    }
    assert_eq!(laps_seen, 5000 * 3 / 8, "the driver's counter flipped once per lap");
    assert_eq!((q.next_used, q.used_wrap), (dev.used_pos, dev.used_wrap));
}

#[test]
fn out_of_order_completions_skip_each_chain_by_its_own_length() {
    let mut q = queue(16, false);
    let mut dev = Dev::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2000usize {
        // A batch of chains of 1 to 4 descriptors while they fit.
        let mut ids = vec![];
        loop {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = 1 + (rng % 4) as u16;
            let Some(id) = q.add_chain(n, d) else { break };
            ids.push((id, n));
        }
        q.publish();
        let mut got = dev.fetch(&q);
        assert_eq!(got, ids, "round {round}");
        // The device completes them in a scrambled order.
        got.reverse();
        let turn = round % got.len();
        got.rotate_left(turn);
        for &(id, n) in &got {
            dev.complete(&q, id, n, u32::from(id));
        }
        for &(id, _) in &got {
            let u = used(&mut q);
            assert_eq!(u.id, u32::from(id), "used in the device's order (round {round})");
            assert_eq!(u.len, u32::from(id));
        }
        assert!(q.next_used().is_none());
        assert_eq!(q.num_free(), 16);
    }
}

#[test]
fn the_inside_of_a_chain_in_flight_never_looks_used() {
    // Out of order, the next used position can land inside a chain still in flight: its
    // descriptors carry our flags for that lap, which must not read as used, in either lap.
    let mut q = queue(8, false);
    let mut dev = Dev::new();
    for round in 0..8 {
        let x = q.add_chain(3, d).unwrap();
        let y = q.add_chain(1, d).unwrap();
        dev.fetch(&q);
        dev.complete(&q, y, 1, 1); // over x's head
        assert_eq!(used(&mut q).id, u32::from(y));
        assert!(q.next_used().is_none(), "round {round}: x's second descriptor is not used");
        dev.complete(&q, x, 3, 1); // over x's second descriptor
        assert_eq!(used(&mut q).id, u32::from(x));
        assert!(q.next_used().is_none(), "round {round}: y's old descriptor is not used");
        assert_eq!(q.num_free(), 8);
    }
    assert!(q.avail_wrap() && q.used_wrap, "four laps: both counters back at 1");
    assert_eq!((q.next_avail, q.next_used), (0, 0));
}

#[test]
fn ids_are_reused_only_after_use_and_a_bogus_id_is_fatal() {
    let mut q = queue(4, false);
    let mut dev = Dev::new();
    let ids: Vec<u16> = (0..4).map(|_| q.add_chain(1, d).unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3], "four distinct IDs");
    assert!(q.add_chain(1, d).is_none(), "ring full");
    dev.fetch(&q);
    dev.complete(&q, ids[2], 1, 1);
    assert_eq!(used(&mut q).id, u32::from(ids[2]));
    assert_eq!(q.add_chain(1, d), Some(ids[2]), "the freed ID, and only it, comes back");
    // A used descriptor naming an ID not in flight: the driver cannot know how far to skip.
    q.abandon(ids[0]);
    dev.complete(&q, ids[0], 1, 1);
    assert!(matches!(q.next_used(), Some(Completion::Broken(_))));
}

#[test]
fn event_suppression_enable_disable_and_desc_across_the_wrap() {
    let set = |q: &PackedQueue, off_wrap: u16, flags: u16| {
        let m = q.events.mem();
        m.write_le16(DEVICE_EVENT + EVENT_OFF_WRAP, off_wrap);
        m.write_le16(DEVICE_EVENT + EVENT_FLAGS, flags);
    };
    let mut q = queue(8, false);
    assert_eq!(q.events.mem().read_le16(DRIVER_EVENT + EVENT_FLAGS), EVENT_F_DISABLE);
    assert!(!q.publish(), "nothing new");
    q.add_chain(1, d).unwrap();
    assert!(q.publish(), "ENABLE (the zeroed structure)");
    set(&q, 0, EVENT_F_DISABLE);
    q.add_chain(1, d).unwrap();
    assert!(!q.publish(), "DISABLE");
    set(&q, 0, EVENT_F_DESC);
    q.add_chain(1, d).unwrap();
    assert!(q.publish(), "DESC without EVENT_IDX counts as ENABLE");

    let mut q = queue(8, true);
    let mut dev = Dev::new();
    // Positions 0..5 in lap 1 (counter 1), used.
    for _ in 0..3 {
        let id = q.add_chain(2, d).unwrap();
        dev.fetch(&q);
        dev.complete(&q, id, 2, 1);
        used(&mut q);
    }
    assert!(q.publish(), "ENABLE until the device says otherwise");
    // The device wants to hear when position 7 of lap 1 is made available.
    set(&q, 7 | EVENT_WRAP, EVENT_F_DESC);
    q.add_chain(1, d).unwrap(); // position 6
    assert!(!q.publish(), "6 is not 7");
    q.add_chain(3, d).unwrap(); // positions 7, 0, 1: the counter flips inside
    assert!(!q.avail_wrap());
    assert!(q.publish(), "7 of lap 1 was in this batch, though the driver is in lap 2 now");
    set(&q, 2, EVENT_F_DESC); // position 2 of lap 2 (wrap bit 0)
    q.add_chain(1, d).unwrap(); // position 2
    assert!(q.publish(), "2 of lap 2");
    q.add_chain(1, d).unwrap(); // position 3
    assert!(!q.publish(), "already passed");
    // The other wrap bit means the lap before: position 1 of lap 1, passed long ago.
    set(&q, 1 | EVENT_WRAP, EVENT_F_DESC);
    q.add_chain(1, d).unwrap(); // position 4
    assert!(!q.publish(), "position 1 of lap 1 is not in this batch");
    set(&q, EVENT_WRAP, EVENT_F_ENABLE);
    q.add_chain(1, d).unwrap();
    assert!(q.publish());
}

#[test]
fn indirect_tables_are_consecutive_with_write_as_the_only_flag() {
    let space = DmaSpace::new(Arc::new(CheckingMapper::new()));
    let buf = space.alloc(4096).unwrap();
    let m = buf.mem();
    m.fill(0, 4096, 0xee);
    write_table(&m, 4, |k| Desc {
        addr: 0x100 * k as u64,
        len: 16 + k as u32,
        flags: if k >= 2 { DESC_F_WRITE | DESC_F_NEXT | DESC_F_INDIRECT } else { DESC_F_NEXT },
    });
    for k in 0..4 {
        let at = k * DESC_SIZE;
        assert_eq!(m.read_le64(at), 0x100 * k as u64);
        assert_eq!(m.read_le32(at + DESC_LEN), 16 + k as u32);
        assert_eq!(m.read_le16(at + DESC_ID), 0, "the ID is reserved in tables");
        let want = if k >= 2 { DESC_F_WRITE } else { 0 };
        assert_eq!(m.read_le16(at + DESC_FLAGS), want, "entry {k}: WRITE only");
    }
    assert_eq!(m.read_u8(4 * DESC_SIZE), 0xee, "nothing past the table");
}
