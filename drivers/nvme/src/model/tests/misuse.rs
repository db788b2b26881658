//! Driver bugs: each panics with a clear message (or, with panics off, is recorded).

use mfio_pci::PciDevice;

use super::*;
use crate::model::{Injection, Target, ViolationKind};
use crate::spec::io::READ;
use crate::spec::status::generic as g;

#[test]
#[should_panic(expected = "SQ 1 tail doorbell 16 is not below the queue size 16")]
fn sq_doorbell_out_of_range_panics() {
    let mut h = Host::new(ModelConfig::default());
    let q = h.create_pair(1, 16);
    h.m.write32(0, regs::sq_tail_doorbell(q.qid, 0), 16);
}

#[test]
#[should_panic(expected = "SQ tail doorbell written (1) for queue 3, which does not exist")]
fn doorbell_of_missing_queue_panics() {
    let h = Host::new(ModelConfig::default());
    h.m.write32(0, regs::sq_tail_doorbell(3, 0), 1);
}

#[test]
#[should_panic(expected = "CQ 1 head doorbell 2 passes the controller's tail 1")]
fn cq_head_passing_the_tail_panics() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    q.push(&Host::rw(READ, 0, 1, buf.iova().0, 0));
    h.ring_sq(&q);
    h.m.write32(0, regs::cq_head_doorbell(1, 0), 2);
}

#[test]
#[should_panic(expected = "bus mastering disabled")]
fn dma_without_bus_mastering_panics() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    h.m.set_bus_master(false).unwrap();
    q.push(&Command::new(crate::spec::io::FLUSH, 1));
    h.ring_sq(&q);
}

#[test]
#[should_panic(expected = "outside every mapped range")]
fn stray_dma_panics() {
    let mut h = Host::new(ModelConfig::default());
    let mut q = h.create_pair(1, 16);
    // A virtual address instead of an IOVA.
    let v = vec![0u8; 4096];
    h.io_cmd(&mut q, Host::rw(READ, 0, 1, v.as_ptr() as u64 & !3, 0));
}

#[test]
#[should_panic(expected = "registers are 32 or 64 bits wide")]
fn narrow_register_access_panics() {
    let m = NvmeModel::new(ModelConfig::default());
    m.read16(0, regs::CSTS);
}

#[test]
#[should_panic(expected = "access to BAR0 offset 0x4000")]
fn access_past_bar0_panics() {
    let m = NvmeModel::new(ModelConfig::default());
    m.write32(0, 0x4000, 0);
}

#[test]
fn violations_are_recorded_when_not_panicking() {
    let mut h = Host::new(no_panic_config());
    let mut q = h.create_pair(1, 16);
    let buf = alloc(&h.m, 4096);
    // Doorbell while disabled, bad values, stray DMA, CID reuse while held.
    h.m.write32(0, regs::sq_tail_doorbell(1, 0), 99);
    h.m.write32(0, regs::cq_head_doorbell(1, 0), 5);
    let c = h.io_cmd(&mut q, Host::rw(READ, 0, 1, 0x1000, 0));
    assert_status(&c, sct::GENERIC, g::DATA_TRANSFER_ERROR);
    h.m.inject(Injection::Hold(Target::io()));
    let mut r = Host::rw(READ, 0, 1, buf.iova().0, 0);
    r.cid = 7;
    q.push(&r);
    q.push(&r);
    h.ring_sq(&q);
    let c = q.pop().expect("the conflicting command completes at once");
    assert_status(&c, sct::GENERIC, g::CID_CONFLICT);
    h.m.write32(0, regs::CC, 0);
    h.m.write32(0, regs::sq_tail_doorbell(0, 0), 1);
    h.m.write32(0, regs::CC, Cc::enabled_nvm().0);
    h.m.write32(0, regs::AQA, 0);
    let kinds: Vec<ViolationKind> = h.m.violations().iter().map(|v| v.kind).collect();
    use ViolationKind::*;
    assert_eq!(kinds, vec![Doorbell, Doorbell, Dma, Command, Doorbell, Register]);
    assert!(h.m.violations()[4].message.contains("CSTS.RDY is 0"));
    assert_eq!(h.m.mapper().fault_count(), 1);
}

#[test]
fn a_violation_panic_leaves_the_model_usable() {
    let h = Host::new(ModelConfig::default());
    let m = h.m.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.write32(0, regs::sq_tail_doorbell(5, 0), 1);
    }));
    assert!(r.is_err());
    assert_eq!(h.m.violations().len(), 1);
    assert!(Csts(h.m.read32(0, regs::CSTS)).rdy());
}
