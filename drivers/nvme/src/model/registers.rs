//! BAR0 registers: CAP, VS, CC (enable, reset, shutdown), CSTS, AQA/ASQ/ACQ, doorbells.

use super::inject::ViolationKind;
use super::records::{Cq, Sq};
use super::state::{Features, State};
use crate::spec::regs::{self, Cc, Csts};
use crate::spec::{COMMAND_SIZE, COMPLETION_SIZE, PAGE_SIZE};

/// VS: NVMe 1.4.
pub const VERSION: u32 = 0x0001_0400;
/// CAP.TO: 20 units of 500 ms (10 s).
const CAP_TIMEOUT: u64 = 20;

impl State {
    /// CAP: MQES from the config, contiguous queues required, TO 10 s, DSTRD 0, NVM command
    /// set, 4 KiB pages only (MPSMIN = MPSMAX = 0).
    pub fn cap(&self) -> u64 {
        u64::from(self.cfg.mqes) | 1 << 16 | CAP_TIMEOUT << 24 | 1 << 37
    }

    /// A 32-bit register read (`off` is 4-byte aligned and inside BAR0).
    pub fn read_reg32(&mut self, off: u64) -> u32 {
        if !self.pci.memory_enabled() {
            // Memory decoding off: the access is a master abort and reads as all ones.
            return u32::MAX;
        }
        match off {
            regs::CAP => self.cap() as u32,
            0x04 => (self.cap() >> 32) as u32,
            regs::VS => VERSION,
            regs::INTMS | regs::INTMC => self.intms,
            regs::CC => self.cc,
            regs::CSTS => self.csts,
            regs::AQA => self.aqa,
            regs::ASQ => self.asq as u32,
            0x2c => (self.asq >> 32) as u32,
            regs::ACQ => self.acq as u32,
            0x34 => (self.acq >> 32) as u32,
            // Doorbells are write-only (reads are undefined; QEMU returns 0) and the rest is
            // reserved or optional registers this controller lacks.
            _ => 0,
        }
    }

    /// A 32-bit register write.
    pub fn write_reg32(&mut self, off: u64, v: u32) {
        if !self.pci.memory_enabled() {
            return;
        }
        match off {
            regs::INTMS => self.intms |= v,
            regs::INTMC => self.intms &= !v,
            regs::CC => self.write_cc(v),
            regs::AQA | regs::ASQ | 0x2c | regs::ACQ | 0x34 => {
                if Cc(self.cc).en() {
                    self.violation(
                        ViolationKind::Register,
                        format!(
                            "admin queue register at {off:#x} written ({v:#x}) while CC.EN is 1: \
                             disable the controller first"
                        ),
                    );
                    return;
                }
                let set_lo = |r: u64| (r & !0xffff_ffff) | u64::from(v);
                let set_hi = |r: u64| (r & 0xffff_ffff) | u64::from(v) << 32;
                match off {
                    regs::AQA => self.aqa = v,
                    regs::ASQ => self.asq = set_lo(self.asq),
                    0x2c => self.asq = set_hi(self.asq),
                    regs::ACQ => self.acq = set_lo(self.acq),
                    _ => self.acq = set_hi(self.acq),
                }
            }
            o if o >= regs::DOORBELL_BASE => self.doorbell(o, v),
            // CAP, VS and CSTS are read-only; NSSR is not supported (CAP.NSSRS = 0); writes to
            // them and to reserved registers are ignored, as the spec says.
            _ => {}
        }
    }

    fn write_cc(&mut self, v: u32) {
        let (old, new) = (Cc(self.cc), Cc(v));
        if old.en() && !new.en() && self.stuck_enabled {
            // A hung controller: CC reads back as written, but nothing stops (CSTS.RDY stays).
            self.cc = v;
            return;
        }
        if old.en() && !new.en() {
            // Controller reset: every queue and command is gone, CSTS clears (CFS included).
            self.cc = v;
            self.reset();
            return;
        }
        if old.en() && new.en() {
            let fixed = 0xf << 7 | 7 << 4 | 7 << 11; // MPS, CSS, AMS
            if (old.0 ^ new.0) & fixed != 0 {
                self.violation(
                    ViolationKind::Register,
                    format!("CC changed MPS/CSS/AMS while enabled ({:#x} -> {v:#x})", old.0),
                );
                return;
            }
        }
        self.cc = v;
        if !old.en() && new.en() {
            self.enable();
        }
        if new.shn() != 0 && old.shn() == 0 {
            // Shutdown completes at once: nothing is cached that is not already "persisted".
            self.csts = (self.csts & !(3 << 2)) | Csts::SHST_COMPLETE;
        } else if new.shn() == 0 {
            self.csts &= !(3 << 2);
        }
    }

    /// CC.EN 0 -> 1: validate the admin queue and CC, then become ready.
    fn enable(&mut self) {
        let cc = Cc(self.cc);
        let (sqs, cqs) = ((self.aqa & 0xfff) + 1, ((self.aqa >> 16) & 0xfff) + 1);
        let page = PAGE_SIZE as u64;
        let problem = if sqs < 2 || cqs < 2 {
            Some(format!("AQA {:#x}: admin queues need at least 2 entries", self.aqa))
        } else if self.asq == 0 || self.asq % page != 0 {
            Some(format!("ASQ {:#x} is not set or not 4 KiB aligned", self.asq))
        } else if self.acq == 0 || self.acq % page != 0 {
            Some(format!("ACQ {:#x} is not set or not 4 KiB aligned", self.acq))
        } else if cc.page_size() != PAGE_SIZE {
            Some(format!("CC.MPS selects {} byte pages; CAP allows 4096 only", cc.page_size()))
        } else if cc.css() != 0 {
            Some(format!("CC.CSS {} selects a command set other than NVM", cc.css()))
        } else if cc.ams() != 0 {
            Some(format!("CC.AMS {} is not round robin (CAP.AMS offers nothing else)", cc.ams()))
        } else if cc.iosqes() != COMMAND_SIZE || cc.iocqes() != COMPLETION_SIZE {
            Some(format!(
                "CC.IOSQES/IOCQES give {}/{} byte entries; this controller needs 64/16",
                cc.iosqes(),
                cc.iocqes()
            ))
        } else if !mfio_dma::DeviceMemory::is_mapped(
            &self.dma,
            mfio_dma::Iova(self.asq),
            sqs as usize * COMMAND_SIZE,
        ) || !mfio_dma::DeviceMemory::is_mapped(
            &self.dma,
            mfio_dma::Iova(self.acq),
            cqs as usize * COMPLETION_SIZE,
        ) {
            Some(format!(
                "admin queues (ASQ {:#x} x{sqs}, ACQ {:#x} x{cqs}) are not in mapped DMA memory",
                self.asq, self.acq
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            self.violation(
                ViolationKind::Config,
                format!("CC.EN set with a bad configuration: {p}"),
            );
            self.set_fatal();
            return;
        }
        self.sqs[0] = Some(Sq::new(self.asq, sqs, 0));
        self.cqs[0] = Some(Cq::new(self.acq, cqs, Some(0)));
        self.csts |= Csts::RDY;
    }

    /// Controller reset (CC.EN 1 -> 0, or a function reset): queues, pending commands and
    /// features go; namespaces, injections and counters stay.
    pub fn reset(&mut self) {
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.pending.clear();
        self.aers.clear();
        self.batch.clear();
        self.granted = None;
        self.dbbuf = None;
        self.features = Features::defaults(&self.cfg);
        self.csts = 0;
    }
}
