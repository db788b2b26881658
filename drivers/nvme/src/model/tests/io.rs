//! Reads and writes through PRPs and SGLs, namespaces, command checks, queue mechanics,
//! completion modes, null I/O.

use std::collections::BTreeSet;

use super::*;
use crate::model::{CompletionMode, NamespaceConfig};
use crate::spec::io::{DATASET_MANAGEMENT, FLUSH, READ, WRITE, WRITE_ZEROES};
use crate::spec::sgl::SglDescriptor;
use crate::spec::status::generic as g;

/// Writes `data` through `prp1`/`prp2`, reads it back into `back` (same PRPs shape), compares.
fn round_trip(h: &mut Host, q: &mut Queue, slba: u64, wr: (u64, u64), rd: (u64, u64), nlb: u32) {
    assert_ok(&h.io_cmd(q, Host::rw(WRITE, slba, nlb, wr.0, wr.1)));
    assert_ok(&h.io_cmd(q, Host::rw(READ, slba, nlb, rd.0, rd.1)));
}

#[test]
fn prp1_only_with_offset() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let (w, r) = (alloc(&h.m, 4096), alloc(&h.m, 4096));
    let data = pattern(1024, 1);
    w.mem().copy_from_slice(2048, &data);
    r.mem().fill(0, 4096, 0xee);
    round_trip(&mut h, &mut q, 10, (w.iova().0 + 2048, 0), (r.iova().0 + 1024, 0xdead), 2);
    let mut back = vec![0u8; 4096];
    r.mem().copy_to_slice(0, &mut back);
    assert_eq!(&back[1024..2048], &data[..], "read data lands at PRP1's offset");
    assert!(back[..1024].iter().chain(&back[2048..]).all(|&b| b == 0xee), "nothing else touched");
    assert_eq!(h.m.read_blocks(1, 10, 2), data, "the namespace holds what was written");
}

#[test]
fn prp2_as_second_page() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let (w, r) = (alloc(&h.m, 16384), alloc(&h.m, 16384));
    let data = pattern(4608, 2);
    // Offset 512 in page 0, the rest in page 2 (not contiguous: PRP2 says where).
    w.mem().copy_from_slice(512, &data[..3584]);
    w.mem().copy_from_slice(8192, &data[3584..]);
    assert_ok(&h.io_cmd(&mut q, Host::rw(WRITE, 100, 9, w.iova().0 + 512, w.iova().0 + 8192)));
    assert!(h.m.read_blocks(1, 100, 9) == data);
    // Back with 1 KiB in the first page and 3.5 KiB in the second.
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 100, 9, r.iova().0 + 3072, r.iova().0 + 8192)));
    let mut back = vec![0u8; 4608];
    r.mem().copy_to_slice(3072, &mut back[..1024]);
    r.mem().copy_to_slice(8192, &mut back[1024..]);
    assert!(back == data);
}

#[test]
fn prp_list_and_chained_lists() {
    let mut h = Host::new(ModelConfig { mdts: 0, ..ModelConfig::default() });
    let mut q = h.create_pair(1, 16);
    let pages = 600; // more than one list page holds (512 entries)
    let buf = alloc(&h.m, pages * 4096);
    let lists = alloc(&h.m, 4 * 4096);
    let data = pattern(pages * 4096 - 512, 3);
    buf.mem().copy_from_slice(512, &data);

    // A page-aligned list: entries for pages 1..600 (599), 511 in the first list page plus a
    // chain pointer to the second list page.
    let entries: Vec<u64> = (1..pages).map(|p| buf.iova().0 + (p * 4096) as u64).collect();
    let l = lists.mem();
    for (i, e) in entries[..511].iter().enumerate() {
        l.write_le64(i * 8, *e);
    }
    l.write_le64(511 * 8, lists.iova().0 + 4096);
    for (i, e) in entries[511..].iter().enumerate() {
        l.write_le64(4096 + i * 8, *e);
    }
    let nlb = (data.len() / 512) as u32;
    let cmd = Host::rw(WRITE, 0, nlb, buf.iova().0 + 512, lists.iova().0);
    assert_ok(&h.io_cmd(&mut q, cmd));
    assert!(h.m.read_blocks(1, 0, u64::from(nlb)) == data);

    // A list starting 16 bytes before the end of a page: one data entry, then a chain pointer.
    let small = pattern(5 * 4096, 4);
    let b2 = alloc(&h.m, 5 * 4096);
    b2.mem().copy_from_slice(0, &small);
    let l0 = 3 * 4096 - 16;
    l.write_le64(l0, b2.iova().0 + 4096);
    l.write_le64(l0 + 8, lists.iova().0 + 3 * 4096);
    for i in 0..3 {
        l.write_le64(3 * 4096 + i * 8, b2.iova().0 + ((i + 2) * 4096) as u64);
    }
    assert_ok(
        &h.io_cmd(&mut q, Host::rw(WRITE, 2000, 40, b2.iova().0, lists.iova().0 + l0 as u64)),
    );
    assert!(h.m.read_blocks(1, 2000, 40) == small);

    // And back through the same chained list.
    b2.mem().fill(0, 5 * 4096, 0);
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 2000, 40, b2.iova().0, lists.iova().0 + l0 as u64)));
    let mut back = vec![0u8; 5 * 4096];
    b2.mem().copy_to_slice(0, &mut back);
    assert!(back == small);
}

#[test]
fn invalid_prp_offsets_fail_with_status() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4 * 4096);
    let list = alloc(&h.m, 4096);
    let base = buf.iova().0;
    let bad = |c: &Completion| assert_status(c, sct::GENERIC, g::INVALID_PRP_OFFSET);
    // PRP1 not dword aligned.
    bad(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 1, base + 2, 0)));
    // PRP2 data pointer with an offset.
    bad(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 16, base, base + 4096 + 512)));
    // A list entry with an offset.
    list.mem().write_le64(0, base + 4096);
    list.mem().write_le64(8, base + 8192 + 8);
    bad(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 24, base, list.iova().0)));
    // A list pointer not dword aligned.
    bad(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 24, base, list.iova().0 + 2)));
    // Nothing was written.
    assert!(h.m.read_blocks(1, 0, 24).iter().all(|&b| b == 0));
    // A list pointer with a (dword-aligned) offset is fine.
    list.mem().write_le64(8, base + 4096);
    list.mem().write_le64(16, base + 8192);
    assert_ok(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 24, base, list.iova().0 + 8)));
    assert!(h.m.violations().is_empty());
}

#[test]
fn range_namespace_mdts_and_opcode_checks() {
    let cfg = ModelConfig {
        namespaces: vec![NamespaceConfig::new(1000, 512), NamespaceConfig::new(64, 4096)],
        mdts: 2, // 16 KiB
        ..ModelConfig::default()
    };
    let mut h = Host::new(cfg);
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 8 * 4096);
    let list = alloc(&h.m, 4096);
    for i in 0..8 {
        list.mem().write_le64(i * 8, buf.iova().0 + 4096 * (i as u64 + 1));
    }
    let io = buf.iova().0;
    let lo = list.iova().0;
    assert_status(
        &h.io_cmd(&mut q, Host::rw(READ, 999, 2, io, io + 4096)),
        sct::GENERIC,
        g::LBA_OUT_OF_RANGE,
    );
    assert_status(
        &h.io_cmd(&mut q, Host::rw(READ, u64::MAX, 2, io, 0)),
        sct::GENERIC,
        g::LBA_OUT_OF_RANGE,
    );
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 998, 2, io, 0)));
    // 32 blocks = 16 KiB: at MDTS; 33 is over.
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 0, 32, io, lo)));
    let c = h.io_cmd(&mut q, Host::rw(READ, 0, 33, io, lo));
    assert_status(&c, sct::GENERIC, g::INVALID_FIELD);
    assert!(c.status().dnr());
    let mut cmd = Host::rw(READ, 0, 1, io, 0);
    cmd.nsid = 3;
    assert_status(&h.io_cmd(&mut q, cmd), sct::GENERIC, g::INVALID_NAMESPACE);
    cmd.nsid = 0;
    assert_status(&h.io_cmd(&mut q, cmd), sct::GENERIC, g::INVALID_NAMESPACE);
    assert_status(&h.io_cmd(&mut q, Command::new(0x7f, 1)), sct::GENERIC, g::INVALID_OPCODE);
    let fused = Command { flags: 1, ..Host::rw(READ, 0, 1, io, 0) };
    assert_status(&h.io_cmd(&mut q, fused), sct::GENERIC, g::INVALID_FIELD);
    // SGL asked for but not offered.
    let sgl = Command { flags: Command::PSDT_SGL, ..Host::rw(READ, 0, 1, io, 0) };
    assert_status(&h.io_cmd(&mut q, sgl), sct::GENERIC, g::INVALID_FIELD);

    // Namespace 2, 4 KiB blocks: 4 blocks = 16 KiB, at MDTS.
    let data = pattern(16384, 9);
    buf.mem().copy_from_slice(0, &data);
    let w = Command { nsid: 2, ..Host::rw(WRITE, 60, 4, io, lo) };
    assert_ok(&h.io_cmd(&mut q, w));
    assert_eq!(h.m.read_blocks(2, 60, 4), data);
    let over = Command { nsid: 2, ..Host::rw(WRITE, 61, 4, io, lo) };
    assert_status(&h.io_cmd(&mut q, over), sct::GENERIC, g::LBA_OUT_OF_RANGE);
    let flush = Command::new(FLUSH, 0xffff_ffff);
    assert_ok(&h.io_cmd(&mut q, flush));
    assert_status(&h.io_cmd(&mut q, Command::new(FLUSH, 9)), sct::GENERIC, g::INVALID_NAMESPACE);
}

#[test]
fn write_zeroes_dsm_deallocate_and_flush() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 8192);
    buf.mem().copy_from_slice(0, &pattern(8192, 5));
    assert_ok(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 16, buf.iova().0, buf.iova().0 + 4096)));
    assert_ok(&h.io_cmd(&mut q, Host::rw(WRITE, 100, 16, buf.iova().0, buf.iova().0 + 4096)));
    assert_ok(&h.io_cmd(&mut q, Command { cdw10: 2, cdw12: 3, ..Command::new(WRITE_ZEROES, 1) }));
    let blocks = h.m.read_blocks(1, 0, 16);
    assert!(blocks[..1024].iter().any(|&b| b != 0));
    assert!(blocks[1024..3072].iter().all(|&b| b == 0), "blocks 2..6 zeroed");
    assert!(blocks[3072..].iter().any(|&b| b != 0));
    let wz = Command { cdw10: 32767, cdw12: 1, ..Command::new(WRITE_ZEROES, 1) };
    assert_status(&h.io_cmd(&mut q, wz), sct::GENERIC, g::LBA_OUT_OF_RANGE);

    // Deallocate blocks 100..108 and 110 (two ranges).
    let ranges = alloc(&h.m, 4096);
    ranges.mem().write_le32(4, 8);
    ranges.mem().write_le64(8, 100);
    ranges.mem().write_le32(16 + 4, 1);
    ranges.mem().write_le64(16 + 8, 110);
    let dsm = Command {
        prp1: ranges.iova().0,
        cdw10: 1,
        cdw11: 1 << 2,
        ..Command::new(DATASET_MANAGEMENT, 1)
    };
    assert_ok(&h.io_cmd(&mut q, dsm));
    buf.mem().fill(0, 8192, 0xaa);
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 100, 16, buf.iova().0, buf.iova().0 + 4096)));
    let mut back = vec![0u8; 8192];
    buf.mem().copy_to_slice(0, &mut back);
    let want = pattern(8192, 5);
    assert!(back[..4096].iter().all(|&b| b == 0), "deallocated reads as zeroes");
    assert_eq!(&back[4096..5120], &want[4096..5120]);
    assert!(back[5120..5632].iter().all(|&b| b == 0));
    assert_eq!(&back[5632..], &want[5632..]);
    ranges.mem().write_le64(8, 1_000_000);
    assert_status(&h.io_cmd(&mut q, dsm), sct::GENERIC, g::LBA_OUT_OF_RANGE);
    assert_ok(&h.io_cmd(&mut q, Command::new(FLUSH, 1)));
    assert_eq!(h.m.io_commands(FLUSH), 1);
    assert_eq!(h.m.io_commands(WRITE_ZEROES), 2);
}

#[test]
fn phase_tag_wraps_over_many_laps_of_a_small_queue() {
    let mut h = Host::new(ModelConfig::default());
    // SQ of 3, CQ of 4: the two wrap at different points.
    let mut q = h.create_pair_sized(1, 3, 4);
    let buf = alloc(&h.m, 4096);
    let mut phases = Vec::new();
    for i in 0..20u32 {
        let c = h.io_cmd(&mut q, Host::rw(READ, u64::from(i), 1, buf.iova().0, 0));
        assert_ok(&c);
        assert_eq!(u32::from(c.sq_head), (i + 1) % 3, "SQ head after {} fetches", i + 1);
        phases.push(c.phase());
    }
    // Lap k of the CQ (4 entries) carries phase 1 when k is even.
    let want: Vec<bool> = (0..20).map(|i| (i / 4) % 2 == 0).collect();
    assert_eq!(phases, want);
    assert_eq!(h.m.stats().completions_posted, 20 + h.m.stats().admin_commands.iter().sum::<u64>());
}

#[test]
fn batch_of_commands_behind_one_doorbell() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 32);
    let buf = alloc(&h.m, 4096);
    for i in 0..8 {
        let mut c = Host::rw(READ, i, 1, buf.iova().0, 0);
        c.cid = 100 + i as u16;
        q.push(&c);
    }
    h.ring_sq(&q);
    let cids: Vec<u16> = std::iter::from_fn(|| q.pop()).map(|c| c.cid).collect();
    assert_eq!(cids, (100..108).collect::<Vec<_>>());
    h.ring_cq(&q);
    let s = h.m.stats();
    assert_eq!(
        (s.sq_doorbells[1], s.cq_doorbells[1], s.last_batch[1], s.max_batch[1]),
        (1, 1, 8, 8)
    );
    assert_eq!(h.m.io_commands(READ), 8);
    assert_eq!(h.m.sq_doorbells(1), 1);
}

#[test]
fn full_cq_holds_completions_back_until_the_head_moves() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair_sized(1, 16, 4); // 3 usable CQ slots
    let buf = alloc(&h.m, 4096);
    for i in 0..7u16 {
        let mut c = Host::rw(READ, 0, 1, buf.iova().0, 0);
        c.cid = 10 + i;
        q.push(&c);
    }
    h.ring_sq(&q);
    assert_eq!(h.m.held_completions(), 4, "3 posted, 4 held");
    let mut got = Vec::new();
    while let Some(c) = q.pop() {
        got.push(c.cid);
    }
    assert_eq!(got, vec![10, 11, 12], "the slot before the head was never overwritten");
    // Releasing 3 slots posts 3 more.
    h.ring_cq(&q);
    assert_eq!(h.m.held_completions(), 1);
    while let Some(c) = q.pop() {
        got.push(c.cid);
    }
    h.ring_cq(&q);
    while let Some(c) = q.pop() {
        got.push(c.cid);
    }
    h.ring_cq(&q);
    assert_eq!(got, (10..17).collect::<Vec<_>>());
    assert_eq!(h.m.stats().cq_full_holds, 4);
}

fn submit_reads(q: &mut Queue, n: u16, iova: u64) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let mut c = Host::rw(READ, u64::from(i), 1, iova, 0);
            c.cid = 200 + i;
            q.push(&c);
            c.cid
        })
        .collect()
}

#[test]
fn reversed_and_shuffled_completion_orders() {
    for (mode, expect_reverse) in
        [(CompletionMode::Reversed, true), (CompletionMode::Shuffled { seed: 42 }, false)]
    {
        let mut h = Host::new(ModelConfig { completion: mode, ..ModelConfig::default() });
        let mut q = h.create_pair(1, 32);
        let buf = alloc(&h.m, 4096);
        let cids = submit_reads(&mut q, 10, buf.iova().0);
        h.ring_sq(&q);
        let got: Vec<u16> = std::iter::from_fn(|| q.pop()).map(|c| c.cid).collect();
        h.ring_cq(&q);
        assert_ne!(got, cids, "{mode:?} must not complete in order");
        assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), cids.iter().copied().collect());
        if expect_reverse {
            assert_eq!(got, cids.iter().rev().copied().collect::<Vec<_>>());
        }
    }
}

#[test]
fn deferred_completions_wait_for_later_doorbells() {
    let cfg = ModelConfig {
        completion: CompletionMode::Deferred { doorbells: 2 },
        deferred_timeout: None,
        ..ModelConfig::default()
    };
    let mut h = Host::new(cfg);
    let mut q = h.create_pair(1, 32);
    let buf = alloc(&h.m, 4096);
    buf.mem().copy_from_slice(0, &pattern(512, 7));
    let mut w = Host::rw(WRITE, 5, 1, buf.iova().0, 0);
    w.cid = 1;
    q.push(&w);
    h.ring_sq(&q);
    assert!(q.peek().is_none(), "deferred: no CQE yet");
    assert_eq!(h.m.pending_commands(), 1);
    assert!(h.m.read_blocks(1, 5, 1).iter().all(|&b| b == 0), "not executed yet either");
    h.ring_cq(&q); // doorbell 1 after it (head unchanged is a valid write)
    assert!(q.peek().is_none());
    let mut r = Host::rw(READ, 5, 1, buf.iova().0 + 1024, 0);
    r.cid = 2;
    q.push(&r);
    h.ring_sq(&q); // doorbell 2: the write executes; the read waits for two more
    assert_eq!(q.pop().map(|c| c.cid), Some(1));
    assert!(q.peek().is_none());
    assert_eq!(h.m.read_blocks(1, 5, 1), pattern(512, 7));
    assert_eq!(h.m.release_held(), 1);
    assert_eq!(q.pop().map(|c| c.cid), Some(2));
    h.ring_cq(&q);
    // Admin commands are never deferred.
    let c = h.admin_cmd(Command {
        cdw10: crate::spec::cns::CONTROLLER,
        prp1: buf.iova().0,
        ..Command::new(crate::spec::admin::IDENTIFY, 0)
    });
    assert_ok(&c);
}

#[test]
fn null_io_validates_but_moves_no_data() {
    let mut h = Host::new(ModelConfig { null_io: true, ..ModelConfig::default() });
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 8192);
    buf.mem().fill(0, 8192, 0x5a);
    assert_ok(&h.io_cmd(&mut q, Host::rw(WRITE, 0, 16, buf.iova().0, buf.iova().0 + 4096)));
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 0, 16, buf.iova().0, buf.iova().0 + 4096)));
    let mut back = vec![0u8; 8192];
    buf.mem().copy_to_slice(0, &mut back);
    assert!(back.iter().all(|&b| b == 0x5a), "read left the buffer alone");
    assert!(h.m.read_blocks(1, 0, 16).iter().all(|&b| b == 0), "write kept nothing");
    let bad = Host::rw(READ, 0, 16, buf.iova().0, buf.iova().0 + 4100);
    assert_status(&h.io_cmd(&mut q, bad), sct::GENERIC, g::INVALID_PRP_OFFSET);
    assert_status(
        &h.io_cmd(&mut q, Host::rw(READ, 1 << 40, 1, buf.iova().0, 0)),
        sct::GENERIC,
        g::LBA_OUT_OF_RANGE,
    );
}

#[test]
fn null_io_still_catches_unmapped_buffers() {
    let mut h = Host::new(ModelConfig { null_io: true, ..no_panic_config() });
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    let c = h.io_cmd(&mut q, Host::rw(READ, 0, 16, buf.iova().0, buf.iova().0 + 4096));
    assert_status(&c, sct::GENERIC, g::DATA_TRANSFER_ERROR);
    assert_eq!(h.m.violations().len(), 1);
    assert_eq!(h.m.stats().dma_faults, 1);
}

fn sgl_cmd(opcode: u8, slba: u64, nlb: u32, d: SglDescriptor) -> Command {
    let (prp1, prp2) = d.to_dptr();
    Command { flags: Command::PSDT_SGL, prp1, prp2, ..Command::rw(opcode, 1, slba, nlb) }
}

#[test]
fn sgl_data_blocks_segments_and_bit_buckets() {
    let mut h = Host::new(ModelConfig { sgl: true, ..ModelConfig::default() });
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 16384);
    let segs = alloc(&h.m, 4096);
    let b = buf.iova().0;
    let data = pattern(4096, 11);
    // One data block, unaligned address (SGLS = 1: no alignment requirement).
    buf.mem().copy_from_slice(3, &data[..1024]);
    assert_ok(&h.io_cmd(&mut q, sgl_cmd(WRITE, 0, 2, SglDescriptor::data(b + 3, 1024))));
    assert_eq!(h.m.read_blocks(1, 0, 2), &data[..1024]);

    // Segment (2 data + chain) -> Last Segment (2 data): 4 pieces of 1 KiB scattered.
    let pieces = [b + 8192, b + 100, b + 12288 + 7, b + 5000];
    for (i, &p) in pieces.iter().enumerate() {
        buf.mem().copy_from_slice((p - b) as usize, &data[i * 1024..(i + 1) * 1024]);
    }
    let s = segs.mem();
    let put = |at: usize, d: SglDescriptor| s.copy_from_slice(at, &d.to_bytes());
    put(0, SglDescriptor::data(pieces[0], 1024));
    put(16, SglDescriptor::data(pieces[1], 1024));
    put(32, SglDescriptor::last_segment(segs.iova().0 + 256, 2));
    put(256, SglDescriptor::data(pieces[2], 1024));
    put(272, SglDescriptor::data(pieces[3], 1024));
    let first = SglDescriptor::segment(segs.iova().0, 3);
    assert_ok(&h.io_cmd(&mut q, sgl_cmd(WRITE, 10, 8, first)));
    assert_eq!(h.m.read_blocks(1, 10, 8), data);

    // Read back with a bit bucket dropping the second KiB.
    let out = alloc(&h.m, 4096);
    out.mem().fill(0, 4096, 0xcc);
    put(512, SglDescriptor::data(out.iova().0, 1024));
    put(528, SglDescriptor::bit_bucket(1024));
    put(544, SglDescriptor::data(out.iova().0 + 1024, 2048));
    assert_ok(
        &h.io_cmd(
            &mut q,
            sgl_cmd(READ, 10, 8, SglDescriptor::last_segment(segs.iova().0 + 512, 3)),
        ),
    );
    let mut back = vec![0u8; 4096];
    out.mem().copy_to_slice(0, &mut back);
    assert_eq!(&back[..1024], &data[..1024]);
    assert_eq!(&back[1024..3072], &data[2048..]);
    assert!(back[3072..].iter().all(|&x| x == 0xcc));
}

#[test]
fn sgl_rule_breaks_complete_with_sgl_status() {
    let mut h = Host::new(ModelConfig { sgl: true, ..ModelConfig::default() });
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 8192);
    let segs = alloc(&h.m, 4096);
    let b = buf.iova().0;
    let s = segs.mem();
    let put = |at: usize, d: SglDescriptor| s.copy_from_slice(at, &d.to_bytes());
    let sgl_err = |c: &Completion, sc: u8| assert_status(c, sct::GENERIC, sc);
    // Too short and too long.
    sgl_err(
        &h.io_cmd(&mut q, sgl_cmd(WRITE, 0, 2, SglDescriptor::data(b, 512))),
        g::SGL_LENGTH_INVALID,
    );
    sgl_err(
        &h.io_cmd(&mut q, sgl_cmd(WRITE, 0, 1, SglDescriptor::data(b, 1024))),
        g::SGL_LENGTH_INVALID,
    );
    // A bit bucket on a write.
    put(0, SglDescriptor::data(b, 512));
    put(16, SglDescriptor::bit_bucket(512));
    sgl_err(
        &h.io_cmd(&mut q, sgl_cmd(WRITE, 0, 2, SglDescriptor::last_segment(segs.iova().0, 2))),
        g::SGL_TYPE_INVALID,
    );
    // A reserved descriptor type.
    let mut weird = SglDescriptor::data(b, 512);
    weird.kind = 0x7;
    sgl_err(&h.io_cmd(&mut q, sgl_cmd(READ, 0, 1, weird)), g::SGL_TYPE_INVALID);
    // A Last Segment that chains on.
    put(32, SglDescriptor::data(b, 512));
    put(48, SglDescriptor::segment(segs.iova().0 + 1024, 1));
    sgl_err(
        &h.io_cmd(&mut q, sgl_cmd(READ, 0, 2, SglDescriptor::last_segment(segs.iova().0 + 32, 2))),
        g::SGL_TYPE_INVALID,
    );
    // A segment whose length is not a multiple of 16.
    let mut odd = SglDescriptor::last_segment(segs.iova().0, 1);
    odd.len = 20;
    sgl_err(
        &h.io_cmd(&mut q, sgl_cmd(READ, 0, 1, odd)),
        crate::spec::sgl::INVALID_SGL_DESCRIPTOR_COUNT,
    );
    // A segment pointing at itself loops until the model gives up.
    put(64, SglDescriptor::segment(segs.iova().0 + 64, 1));
    sgl_err(
        &h.io_cmd(&mut q, sgl_cmd(READ, 0, 1, SglDescriptor::segment(segs.iova().0 + 64, 1))),
        crate::spec::sgl::INVALID_SGL_DESCRIPTOR_COUNT,
    );
    // Admin commands must use PRPs.
    let admin = Command {
        flags: Command::PSDT_SGL,
        cdw10: 1,
        ..Command::new(crate::spec::admin::IDENTIFY, 0)
    };
    assert_status(&h.admin_cmd(admin), sct::GENERIC, g::INVALID_FIELD);
    assert!(h.m.violations().is_empty());
}

#[test]
fn queue_pairs_on_several_threads() {
    let mut h = Host::new(ModelConfig::default());
    let queues: Vec<Queue> = (1..=4).map(|qid| h.create_pair(qid, 8)).collect();
    let m = h.m.clone();
    std::thread::scope(|s| {
        for (t, mut q) in queues.into_iter().enumerate() {
            let m = m.clone();
            s.spawn(move || {
                let buf = alloc(&m, 4096);
                for i in 0..50u64 {
                    let lba = t as u64 * 1000 + i;
                    let data = pattern(512, (lba % 251) as u8);
                    buf.mem().copy_from_slice(0, &data);
                    for (cid, op) in [(1u16, WRITE), (2, READ)] {
                        let mut c = Host::rw(op, lba, 1, buf.iova().0, 0);
                        c.cid = cid;
                        if op == READ {
                            buf.mem().fill(0, 512, 0);
                        }
                        q.push(&c);
                        m.write32(0, regs::sq_tail_doorbell(q.qid, 0), q.tail);
                        let done = q.pop().expect("inline completion");
                        m.write32(0, regs::cq_head_doorbell(q.qid, 0), q.head);
                        assert_ok(&done);
                        assert_eq!(done.cid, cid);
                    }
                    let mut back = vec![0u8; 512];
                    buf.mem().copy_to_slice(0, &mut back);
                    assert_eq!(back, data);
                }
            });
        }
    });
    assert_eq!(m.io_commands(READ), 200);
    assert!(m.violations().is_empty());
}

#[test]
fn timed_completions_arrive_from_the_timer_thread() {
    let cfg = ModelConfig {
        completion: CompletionMode::Timed { micros: 100_000 },
        ..ModelConfig::default()
    };
    let mut h = Host::new(cfg);
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    let mut r = Host::rw(READ, 0, 1, buf.iova().0, 0);
    r.cid = 3;
    let start = std::time::Instant::now();
    q.push(&r);
    h.ring_sq(&q);
    assert!(q.peek().is_none() || start.elapsed().as_millis() >= 100, "not before its time");
    let c = loop {
        if let Some(c) = q.pop() {
            break c;
        }
        assert!(start.elapsed().as_secs() < 10, "timed completion never came");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert!(start.elapsed().as_millis() >= 100);
    assert_eq!(c.cid, 3);
    assert_ok(&c);
    h.ring_cq(&q);
    // Admin commands stay inline.
    let c = h.admin_cmd(Command {
        cdw10: crate::spec::cns::CONTROLLER,
        prp1: buf.iova().0,
        ..Command::new(crate::spec::admin::IDENTIFY, 0)
    });
    assert_ok(&c);
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<NvmeModel>();
}
