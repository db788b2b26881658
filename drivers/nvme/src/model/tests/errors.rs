//! Error injection: media errors, lost completions, fatal status, bogus CIDs, held and
//! delayed commands, Abort.

use super::*;
use crate::model::{Injection, Target};
use crate::spec::admin::{ABORT, DELETE_SQ, GET_LOG_PAGE};
use crate::spec::io::{READ, WRITE, WRITE_ZEROES};
use crate::spec::status::{generic as g, media};

#[test]
fn media_errors_fail_reads_and_writes_and_are_logged() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 8192);
    let b = buf.iova().0;
    h.m.inject(Injection::MediaError { nsid: 1, lba: 20 });
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 12, 8, b, 0)));
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 21, 8, b, 0)));
    let c = h.io_cmd(&mut q, Host::rw(READ, 16, 8, b, 0));
    assert_status(&c, sct::MEDIA, media::UNRECOVERED_READ);
    assert!(c.status().more() && c.status().dnr());
    let read_cid = c.cid;
    buf.mem().fill(0, 4096, 0x77);
    let c = h.io_cmd(&mut q, Host::rw(WRITE, 20, 1, b, 0));
    assert_status(&c, sct::MEDIA, media::WRITE_FAULT);
    assert!(h.m.read_blocks(1, 20, 1).iter().all(|&x| x == 0), "the failed write stored nothing");
    let wz = Command { cdw10: 19, cdw12: 3, ..Command::new(WRITE_ZEROES, 1) };
    assert_status(&h.io_cmd(&mut q, wz), sct::MEDIA, media::WRITE_FAULT);
    // Another namespace's LBA 20 is fine.
    h.m.inject(Injection::MediaError { nsid: 2, lba: 5 });
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 5, 1, b, 0)));

    // Error log, newest first: write zeroes, write, read.
    let (c, log) = h.admin_read(
        Command {
            cdw10: u32::from(crate::spec::log::ERROR_INFORMATION) | (47 << 16),
            ..Command::new(GET_LOG_PAGE, 0)
        },
        192,
    );
    assert_ok(&c);
    let entry = |i: usize| &log[i * 64..(i + 1) * 64];
    let u64_at = |e: &[u8], o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap());
    assert_eq!(u64_at(entry(0), 0), 3, "error count");
    assert_eq!(u64_at(entry(2), 0), 1);
    assert_eq!(u16::from_le_bytes([entry(2)[10], entry(2)[11]]), read_cid);
    assert_eq!(u16::from_le_bytes([entry(2)[8], entry(2)[9]]), 1, "SQ ID");
    assert_eq!(u64_at(entry(2), 16), 20, "failing LBA");
    assert_eq!(u16::from_le_bytes([entry(2)[12], entry(2)[13]]) >> 1 & 0x7ff, 0x281);

    h.m.clear_injections();
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 16, 8, b, 0)));
}

#[test]
fn lost_completion_never_appears() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    h.m.inject(Injection::LoseCompletion(Target::io_opcode(WRITE)));
    // A read first: not the target.
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 0, 1, buf.iova().0, 0)));
    buf.mem().copy_from_slice(0, &pattern(512, 1));
    let mut w = Host::rw(WRITE, 3, 1, buf.iova().0, 0);
    w.cid = 500;
    q.push(&w);
    h.ring_sq(&q);
    assert!(q.peek().is_none(), "its CQE was lost");
    assert_eq!(h.m.read_blocks(1, 3, 1), pattern(512, 1), "but it executed");
    // One-shot: the next write completes, and the CQ carries on where it was.
    let c = h.io_cmd(&mut q, Host::rw(WRITE, 4, 1, buf.iova().0, 0));
    assert_ok(&c);
    assert_eq!(h.m.stats().completions_lost, 1);
}

#[test]
fn fatal_status_stops_everything_until_reset() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    h.m.inject(Injection::Fatal);
    assert!(Csts(h.m.read32(0, regs::CSTS)).cfs());
    let mut r = Host::rw(READ, 0, 1, buf.iova().0, 0);
    r.cid = 9;
    q.push(&r);
    h.ring_sq(&q);
    assert!(q.peek().is_none(), "a failed controller processes nothing");
    assert_eq!(h.m.stats().ignored_doorbells, 1);
    assert!(h.m.violations().is_empty(), "doorbells to a failed controller are not driver bugs");
    // Reset and bring up again.
    h.m.write32(0, regs::CC, 0);
    assert_eq!(h.m.read32(0, regs::CSTS), 0);
    h.admin = Queue::new(&h.m, 0, 16, 16);
    h.m.write64(0, regs::ASQ, h.admin.sq.iova().0);
    h.m.write64(0, regs::ACQ, h.admin.cq.iova().0);
    h.m.write32(0, regs::CC, Cc::enabled_nvm().0);
    assert!(Csts(h.m.read32(0, regs::CSTS)).rdy());
    let c = h.admin_cmd(Command {
        cdw10: crate::spec::feature::NUMBER_OF_QUEUES as u32,
        cdw11: 0,
        ..Command::new(crate::spec::admin::SET_FEATURES, 0)
    });
    assert_ok(&c);
    let mut q = h.create_pair(1, 16);
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 0, 1, buf.iova().0, 0)));
}

#[test]
fn fatal_on_a_chosen_command() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    h.m.inject(Injection::FatalOn(Target::io_opcode(WRITE)));
    for (i, op) in [READ, WRITE, READ].into_iter().enumerate() {
        let mut c = Host::rw(op, 0, 1, buf.iova().0, 0);
        c.cid = i as u16;
        q.push(&c);
    }
    h.ring_sq(&q);
    assert_eq!(q.pop().map(|c| c.cid), Some(0));
    assert!(q.peek().is_none(), "the write and what follows never complete");
    assert!(h.m.is_fatal());
}

#[test]
fn bad_cid_is_posted_before_the_real_completion() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    h.m.inject(Injection::BadCid { target: Target::io(), cid: 0xffff });
    let mut r = Host::rw(READ, 0, 1, buf.iova().0, 0);
    r.cid = 77;
    q.push(&r);
    h.ring_sq(&q);
    let bogus = q.pop().expect("bogus CQE");
    let real = q.pop().expect("real CQE");
    assert_eq!((bogus.cid, bogus.sq_id, real.cid), (0xffff, 1, 77));
    assert_ok(&real);
    h.ring_cq(&q);
    assert_eq!(h.m.stats().bad_cids_posted, 1);
}

#[test]
fn held_commands_complete_on_release_or_abort() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    h.m.inject(Injection::Hold(Target::sq(1)));
    for cid in 1..=3u16 {
        let mut c = Host::rw(READ, u64::from(cid), 1, buf.iova().0, 0);
        c.cid = cid;
        q.push(&c);
    }
    h.ring_sq(&q);
    assert!(q.peek().is_none());
    assert_eq!(h.m.pending_commands(), 3);
    // Abort CID 2: it completes as aborted, the Abort says "aborted" (dw0 bit 0 clear).
    let c = h.admin_cmd(Command { cdw10: (2 << 16) | 1, ..Command::new(ABORT, 0) });
    assert_eq!(c.dw0 & 1, 0);
    let aborted = q.pop().expect("aborted command's CQE");
    assert_eq!(aborted.cid, 2);
    assert_status(&aborted, sct::GENERIC, g::ABORT_REQUESTED);
    // Aborting something not held: not aborted (dw0 bit 0 set).
    let c = h.admin_cmd(Command { cdw10: (99 << 16) | 1, ..Command::new(ABORT, 0) });
    assert_eq!(c.dw0 & 1, 1);
    assert_eq!(h.m.release_held(), 2);
    let rest: Vec<u16> = std::iter::from_fn(|| q.pop()).map(|c| c.cid).collect();
    assert_eq!(rest, vec![1, 3]);
    h.ring_cq(&q);
    // The hold ended with the release.
    assert_ok(&h.io_cmd(&mut q, Host::rw(READ, 0, 1, buf.iova().0, 0)));
}

#[test]
fn delayed_command_and_sq_deletion_with_held_commands() {
    let mut h = Host::new(ModelConfig { deferred_timeout: None, ..ModelConfig::default() });
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    h.m.inject(Injection::Delay { target: Target::io(), doorbells: 1 });
    let mut r = Host::rw(READ, 0, 1, buf.iova().0, 0);
    r.cid = 40;
    q.push(&r);
    h.ring_sq(&q);
    assert!(q.peek().is_none());
    h.ring_cq(&q);
    assert_eq!(q.pop().map(|c| c.cid), Some(40), "done on the next doorbell");
    h.ring_cq(&q);

    h.m.inject(Injection::Hold(Target::io()));
    r.cid = 41;
    q.push(&r);
    h.ring_sq(&q);
    assert!(q.peek().is_none());
    let c = h.admin_cmd(Command { cdw10: 1, ..Command::new(DELETE_SQ, 0) });
    assert_ok(&c);
    let gone = q.pop().expect("held command completes when its SQ is deleted");
    assert_eq!(gone.cid, 41);
    assert_status(&gone, sct::GENERIC, g::ABORTED_SQ_DELETION);
    assert_eq!(h.m.pending_commands(), 0);
}

#[test]
fn deferred_commands_complete_on_their_own_when_the_driver_goes_quiet() {
    let cfg = ModelConfig {
        completion: crate::model::CompletionMode::Deferred { doorbells: 100 },
        deferred_timeout: Some(std::time::Duration::from_millis(5)),
        ..ModelConfig::default()
    };
    let mut h = Host::new(cfg);
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    let mut r = Host::rw(READ, 0, 1, buf.iova().0, 0);
    r.cid = 8;
    q.push(&r);
    let start = std::time::Instant::now();
    h.ring_sq(&q);
    let c = loop {
        if let Some(c) = q.pop() {
            break c;
        }
        assert!(start.elapsed().as_secs() < 10, "the deferred command never completed");
        std::thread::sleep(std::time::Duration::from_micros(200));
    };
    assert!(start.elapsed().as_millis() >= 5);
    assert_eq!(c.cid, 8);
    h.ring_cq(&q);
}
