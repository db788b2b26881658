//! Property tests: splitting, partial success and out-of-range, against simple models.

mod common;

use common::Held;
use mfio::backends::{MemoryBackend, Stripe};
use mfio::{block_on, Error, ErrorKind, FromDevice, Origin, Packet, ReadAt, WriteAt};
use proptest::prelude::*;
use std::pin::pin;

fn error_for(code: u8) -> Error {
    match code % 4 {
        0 => Error::new(ErrorKind::Timeout, Origin::Nvme),
        1 => Error::nvme(2, 0x81),
        2 => Error::device(Origin::Virtio, 1),
        _ => Error::new(ErrorKind::Aborted, Origin::Framework),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// However a packet is split and in whatever order its segments complete, it reports the
    /// prefix before the lowest failed segment and that segment's error.
    #[test]
    fn split_and_complete_in_any_order(
        len in 1usize..3000,
        cuts in prop::collection::vec(0usize..3000, 0..12),
        outcomes in prop::collection::vec(prop::option::weighted(0.3, any::<u8>()), 13),
        order_seed in any::<u64>(),
    ) {
        let held = Held::default();
        let mut pkt = pin!(Packet::<FromDevice, _>::new(vec![0u8; len]));
        pkt.as_mut().submit(&held, 0).unwrap();
        let (_, mut view) = held.reads.borrow_mut().pop().unwrap();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % len).collect();
        cuts.sort();
        cuts.dedup();
        // Split left to right at every cut.
        let mut segments = Vec::new();
        let mut at = 0;
        for c in cuts {
            if c <= at { continue; }
            let (a, b) = view.split_at(c - at);
            segments.push(a);
            view = b;
            at = c;
        }
        segments.push(view);
        // Views tile the packet.
        let mut expect_off = 0;
        for s in &segments {
            prop_assert_eq!(s.offset(), expect_off);
            expect_off += s.len();
        }
        prop_assert_eq!(expect_off, len);
        // Expected outcome from the model.
        let mut expected = (len, None);
        for (i, s) in segments.iter().enumerate() {
            if let Some(code) = outcomes[i] {
                expected = (s.offset(), Some(error_for(code)));
                break;
            }
        }
        // Complete in a shuffled order.
        let mut tagged: Vec<_> = segments.into_iter().enumerate().collect();
        let mut x = order_seed | 1;
        for i in (1..tagged.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            tagged.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for (i, s) in tagged {
            match outcomes[i] {
                None => s.ok(),
                Some(code) => s.fail(error_for(code)),
            }
        }
        let t = block_on(&held, pkt.as_ref().wait());
        prop_assert_eq!((t.done, t.error), expected);
    }

    /// Random reads and writes, some past the end, on a striped set of memory devices agree
    /// with a plain byte-array model, including short results at the end.
    #[test]
    fn striped_memory_matches_a_model(
        unit_blocks in 1u64..5,
        ndev in 1usize..4,
        ops in prop::collection::vec((any::<bool>(), 0u64..40, 0usize..20, any::<u64>()), 1..40),
    ) {
        let bs = 64u64;
        let unit = unit_blocks * bs;
        let per_dev = 8 * unit as usize + 32; // not a whole number of units: capacity rounds down
        let devs = (0..ndev).map(|_| MemoryBackend::with_block_size(per_dev, bs as u32)).collect();
        let stripe = Stripe::new(devs, unit).unwrap();
        let cap = mfio::BlockDevice::capacity(&stripe) as usize;
        prop_assert_eq!(cap, 8 * unit as usize * ndev);
        let mut model = vec![0u8; cap];
        for (write, blk, nblk, seed) in ops {
            let pos = blk * bs;
            let len = nblk * bs as usize;
            let in_range = cap.saturating_sub(pos as usize).min(len);
            let at = (pos as usize).min(cap);
            if write {
                let data = common::pattern(seed, len);
                let r = block_on(&stripe, stripe.write_at(pos, data.clone())).0;
                prop_assert_eq!(r, Ok(in_range));
                model[at..at + in_range].copy_from_slice(&data[..in_range]);
            } else {
                let (r, buf) = block_on(&stripe, stripe.read_at(pos, vec![0xaau8; len]));
                prop_assert_eq!(r, Ok(in_range));
                prop_assert_eq!(&buf[..in_range], &model[at..at + in_range]);
                // Bytes past the end are untouched.
                prop_assert!(buf[in_range..].iter().all(|&b| b == 0xaa));
            }
        }
    }
}
