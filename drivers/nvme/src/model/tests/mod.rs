//! Tests of the model, driving it like a minimal driver would: raw register writes, commands
//! built by hand in DMA memory from the model's own space, CQEs read by phase tag.

mod admin;
mod errors;
mod io;
mod misuse;

use mfio_dma::{DmaBuffer, PagePolicy};
use mfio_pci::PciDevice;

use super::{ModelConfig, NvmeModel};
use crate::spec::status::sct;
use crate::spec::{self, regs, Cc, Command, Completion, Csts};

/// Pinned 4 KiB-page DMA memory from the model's space.
pub fn alloc(m: &NvmeModel, len: usize) -> DmaBuffer {
    m.dma().alloc_with(len, PagePolicy::SmallOnly).expect("DMA allocation")
}

/// A queue pair as a driver keeps it.
pub struct Queue {
    pub qid: u16,
    pub sq: DmaBuffer,
    pub cq: DmaBuffer,
    pub entries: u32,
    pub cq_entries: u32,
    pub tail: u32,
    pub head: u32,
    pub phase: bool,
}

impl Queue {
    fn new(m: &NvmeModel, qid: u16, entries: u32, cq_entries: u32) -> Queue {
        Queue {
            qid,
            sq: alloc(m, entries as usize * 64),
            cq: alloc(m, cq_entries as usize * 16),
            entries,
            cq_entries,
            tail: 0,
            head: 0,
            phase: true,
        }
    }

    /// Writes a command at the tail (no doorbell).
    pub fn push(&mut self, cmd: &Command) {
        self.sq.mem().copy_from_slice(self.tail as usize * 64, &cmd.to_bytes());
        self.tail = (self.tail + 1) % self.entries;
    }

    /// The CQE at the head if its phase tag says it is new.
    pub fn peek(&self) -> Option<Completion> {
        let m = self.cq.mem();
        let o = self.head as usize * 16;
        let dw = [m.read_le32(o), m.read_le32(o + 4), m.read_le32(o + 8), m.read_le32(o + 12)];
        let c = Completion::from_dwords(dw);
        (c.phase() == self.phase).then_some(c)
    }

    /// Consumes the CQE at the head (no doorbell).
    pub fn pop(&mut self) -> Option<Completion> {
        let c = self.peek()?;
        self.head = (self.head + 1) % self.cq_entries;
        if self.head == 0 {
            self.phase = !self.phase;
        }
        Some(c)
    }
}

/// A minimal host: an enabled controller with its admin queue.
pub struct Host {
    pub m: NvmeModel,
    pub admin: Queue,
    next_cid: u16,
}

impl Host {
    /// Enables a controller with a 16-entry admin queue and asks for 8 I/O queue pairs.
    pub fn new(cfg: ModelConfig) -> Host {
        let m = NvmeModel::new(cfg);
        m.set_bus_master(true).unwrap();
        let admin = Queue::new(&m, 0, 16, 16);
        m.write32(0, regs::AQA, (15 << 16) | 15);
        m.write64(0, regs::ASQ, admin.sq.iova().0);
        m.write64(0, regs::ACQ, admin.cq.iova().0);
        m.write32(0, regs::CC, Cc::enabled_nvm().0);
        assert!(Csts(m.read32(0, regs::CSTS)).rdy(), "controller ready after enable");
        let mut h = Host { m, admin, next_cid: 1 };
        let c = h.admin_cmd(Command {
            cdw10: spec::feature::NUMBER_OF_QUEUES as u32,
            cdw11: (7 << 16) | 7,
            ..Command::new(spec::admin::SET_FEATURES, 0)
        });
        assert_ok(&c);
        h
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    pub fn ring_sq(&self, q: &Queue) {
        self.m.write32(0, regs::sq_tail_doorbell(q.qid, 0), q.tail);
    }

    pub fn ring_cq(&self, q: &Queue) {
        self.m.write32(0, regs::cq_head_doorbell(q.qid, 0), q.head);
    }

    /// Submits an admin command and returns its completion (admin commands complete inline).
    pub fn admin_cmd(&mut self, mut cmd: Command) -> Completion {
        cmd.cid = self.cid();
        self.admin.push(&cmd);
        self.m.write32(0, regs::sq_tail_doorbell(0, 0), self.admin.tail);
        let c = self.admin.pop().expect("admin command completed during its doorbell write");
        self.m.write32(0, regs::cq_head_doorbell(0, 0), self.admin.head);
        assert_eq!((c.cid, c.sq_id), (cmd.cid, 0));
        c
    }

    /// An admin command reading `len` bytes into a fresh buffer (PRP1, plus PRP2 if needed).
    pub fn admin_read(&mut self, mut cmd: Command, len: usize) -> (Completion, Vec<u8>) {
        let buf = alloc(&self.m, len);
        cmd.prp1 = buf.iova().0;
        cmd.prp2 = buf.iova().0 + 4096;
        let c = self.admin_cmd(cmd);
        let mut out = vec![0u8; len];
        buf.mem().copy_to_slice(0, &mut out);
        (c, out)
    }

    /// Creates I/O CQ and SQ `qid` with `entries` each.
    pub fn create_pair(&mut self, qid: u16, entries: u32) -> Queue {
        self.create_pair_sized(qid, entries, entries)
    }

    /// Creates I/O CQ and SQ `qid` with different sizes.
    pub fn create_pair_sized(&mut self, qid: u16, entries: u32, cq_entries: u32) -> Queue {
        let q = Queue::new(&self.m, qid, entries, cq_entries);
        let c = self.admin_cmd(Command {
            prp1: q.cq.iova().0,
            cdw10: ((cq_entries - 1) << 16) | u32::from(qid),
            cdw11: 1,
            ..Command::new(spec::admin::CREATE_CQ, 0)
        });
        assert_ok(&c);
        let c = self.admin_cmd(Command {
            prp1: q.sq.iova().0,
            cdw10: ((entries - 1) << 16) | u32::from(qid),
            cdw11: (u32::from(qid) << 16) | 1,
            ..Command::new(spec::admin::CREATE_SQ, 0)
        });
        assert_ok(&c);
        q
    }

    /// Submits one I/O command, rings, and returns its completion (inline mode).
    pub fn io_cmd(&mut self, q: &mut Queue, mut cmd: Command) -> Completion {
        cmd.cid = self.cid();
        q.push(&cmd);
        self.ring_sq(q);
        let c = q.pop().expect("I/O command completed during its doorbell write");
        self.ring_cq(q);
        assert_eq!((c.cid, c.sq_id), (cmd.cid, q.qid));
        c
    }

    /// A read or write of `nlb` blocks at `slba` with the data at `iova` (PRPs as given).
    pub fn rw(opcode: u8, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Command {
        Command { prp1, prp2, ..Command::rw(opcode, 1, slba, nlb) }
    }
}

pub fn assert_ok(c: &Completion) {
    assert!(c.status().is_success(), "command failed: {} ({c:?})", c.status());
}

pub fn assert_status(c: &Completion, sct_: u8, sc: u8) {
    assert_eq!((c.status().sct(), c.status().sc()), (sct_, sc), "got {}", c.status());
}

/// A recognisable pattern for `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

pub fn no_panic_config() -> ModelConfig {
    ModelConfig { panic_on_violation: false, ..ModelConfig::default() }
}
