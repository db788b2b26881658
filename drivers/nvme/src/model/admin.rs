//! Admin commands: Identify, Set/Get Features, I/O queue creation and deletion, Get Log Page,
//! Abort, Asynchronous Event Request.

use super::inject::ViolationKind;
use super::records::{Cq, Outcome, Release, Sq};
use super::state::{State, ERROR_LOG_ENTRIES};
use crate::spec::status::{generic, sct, specific};
use crate::spec::{
    admin, cns, feature, log, Command, IdentifyController, IdentifyNamespace, LbaFormat, Status,
    COMMAND_SIZE, COMPLETION_SIZE, PAGE_SIZE,
};

fn status(sc: u8) -> Status {
    Status::new(sct::GENERIC, sc).with_dnr()
}

fn specific(sc: u8) -> Status {
    Status::new(sct::COMMAND_SPECIFIC, sc).with_dnr()
}

/// Asynchronous Event Request opcode.
const ASYNC_EVENT_REQUEST: u8 = 0x0c;
/// Abort Command Limit, 0-based (4 concurrent Aborts).
const ACL: u8 = 3;
/// Asynchronous Event Request Limit, 0-based.
const AERL: u8 = 3;
/// Specific status: Asynchronous Event Request Limit Exceeded.
const AER_LIMIT: u8 = 0x05;
/// Specific status: Invalid Interrupt Vector.
const INVALID_INTERRUPT_VECTOR: u8 = 0x08;
/// Specific status: Feature Identifier Not Saveable.
const FEATURE_NOT_SAVEABLE: u8 = 0x0d;
/// Generic status: Command Sequence Error.
const COMMAND_SEQUENCE_ERROR: u8 = 0x0c;
/// Feature: Interrupt Coalescing.
const FEATURE_INTERRUPT_COALESCING: u8 = 0x08;
/// Feature: Asynchronous Event Configuration.
const FEATURE_ASYNC_EVENT_CONFIG: u8 = 0x0b;

impl State {
    /// Executes an admin command; `None` for one that completes later (an AER).
    pub fn admin(&mut self, cmd: &Command) -> Option<Outcome> {
        if cmd.flags & 3 != 0 {
            return Some(status(generic::INVALID_FIELD).into());
        }
        let r = match cmd.opcode {
            admin::IDENTIFY => self.identify(cmd),
            admin::SET_FEATURES => self.set_features(cmd),
            admin::GET_FEATURES => self.get_features(cmd),
            admin::CREATE_CQ => self.create_cq(cmd),
            admin::CREATE_SQ => self.create_sq(cmd),
            admin::DELETE_SQ => self.delete_sq(cmd),
            admin::DELETE_CQ => self.delete_cq(cmd),
            admin::GET_LOG_PAGE => self.get_log_page(cmd),
            admin::ABORT => Ok(self.abort(cmd)),
            admin::DOORBELL_BUFFER_CONFIG if self.cfg.shadow_doorbells => {
                self.doorbell_buffer_config(cmd)
            }
            ASYNC_EVENT_REQUEST => {
                if self.aers.len() > usize::from(AERL) {
                    Err(specific(AER_LIMIT))
                } else {
                    // No event ever happens here: it stays outstanding until a reset or Abort.
                    self.aers.push(cmd.cid);
                    return None;
                }
            }
            // Doorbell Buffer Config when not offered, and everything else.
            _ => Err(status(generic::INVALID_OPCODE)),
        };
        Some(r.unwrap_or_else(Outcome::err))
    }

    /// Sends `data` (zero-padded or cut to `len`) to the host through the command's PRPs.
    fn send(&mut self, cmd: &Command, data: &[u8], len: usize, what: &str) -> Result<(), Status> {
        let segs = self.data_segments(cmd, len, true, true)?;
        let mut buf = vec![0u8; len];
        let n = data.len().min(len);
        buf[..n].copy_from_slice(&data[..n]);
        self.scatter(&segs, &buf, what)
    }

    fn identify_controller(&self) -> IdentifyController {
        IdentifyController {
            vid: super::pci::VENDOR_ID,
            ssvid: 0x1af4,
            sn: self.cfg.serial.clone(),
            mn: "mfio NVMe model".to_string(),
            fr: "1.0".to_string(),
            mdts: self.cfg.mdts,
            cntlid: 1,
            ver: super::registers::VERSION,
            oacs: if self.cfg.shadow_doorbells {
                IdentifyController::OACS_DOORBELL_BUFFER_CONFIG
            } else {
                0
            },
            acl: ACL,
            elpe: (ERROR_LOG_ENTRIES - 1) as u8,
            sqes: 0x66,
            cqes: 0x44,
            nn: self.namespaces.len() as u32,
            oncs: IdentifyController::ONCS_DSM | IdentifyController::ONCS_WRITE_ZEROES,
            vwc: u8::from(self.cfg.volatile_write_cache),
            sgls: u32::from(self.cfg.sgl),
        }
    }

    fn identify(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let mut data = vec![0u8; PAGE_SIZE];
        match cmd.cdw10 & 0xff {
            cns::NAMESPACE => {
                let i = self.ns_index(cmd.nsid).ok_or(status(generic::INVALID_NAMESPACE))?;
                let ns = &self.namespaces[i];
                IdentifyNamespace {
                    nsze: ns.blocks,
                    ncap: ns.blocks,
                    nuse: ns.blocks,
                    nsfeat: 0,
                    nlbaf: 0,
                    flbas: 0,
                    // As QEMU's: deallocated blocks read as zeroes; Write Zeroes may deallocate.
                    dlfeat: IdentifyNamespace::DLFEAT_READS_ZEROES
                        | IdentifyNamespace::DLFEAT_WRITE_ZEROES_DEAC,
                    lbaf: vec![LbaFormat { ms: 0, lbads: ns.lbads(), rp: 0 }],
                }
                .write_to(&mut data);
            }
            cns::CONTROLLER => {
                self.identify_controller().write_to(&mut data);
                data[259] = AERL;
                // LPA: extended data for Get Log Page (offsets, NUMDU).
                data[261] = 1 << 2;
            }
            cns::ACTIVE_NAMESPACES => {
                // NSIDs above the one given, ascending, at most 1024.
                let ids = (1..=self.namespaces.len() as u32).filter(|&n| n > cmd.nsid).take(1024);
                for (i, id) in ids.enumerate() {
                    data[4 * i..4 * i + 4].copy_from_slice(&id.to_le_bytes());
                }
            }
            _ => return Err(status(generic::INVALID_FIELD)),
        }
        self.send(cmd, &data, PAGE_SIZE, "writing Identify data")?;
        Ok(Outcome::ok(0))
    }

    fn set_features(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        if cmd.cdw10 >> 31 != 0 {
            return Err(specific(FEATURE_NOT_SAVEABLE));
        }
        let v = cmd.cdw11;
        match (cmd.cdw10 & 0xff) as u8 {
            feature::NUMBER_OF_QUEUES => {
                let io_queues =
                    (1..self.sqs.len()).any(|q| self.sqs[q].is_some() || self.cqs[q].is_some());
                if io_queues {
                    return Err(status(COMMAND_SEQUENCE_ERROR));
                }
                let (nsqr, ncqr) = (v & 0xffff, v >> 16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return Err(status(generic::INVALID_FIELD));
                }
                let max = u32::from(self.cfg.max_queues);
                let (nsq, ncq) = ((nsqr + 1).min(max), (ncqr + 1).min(max));
                self.granted = Some((nsq as u16, ncq as u16));
                Ok(Outcome::ok((ncq - 1) << 16 | (nsq - 1)))
            }
            feature::VOLATILE_WRITE_CACHE => {
                if !self.cfg.volatile_write_cache {
                    return Err(status(generic::INVALID_FIELD));
                }
                self.features.volatile_write_cache = v & 1 != 0;
                if !self.features.volatile_write_cache {
                    // Turned off, the cache is written back: later writes go to the media.
                    self.namespaces.iter_mut().for_each(|ns| ns.flush());
                }
                Ok(Outcome::ok(0))
            }
            feature::ARBITRATION => {
                self.features.arbitration = v;
                Ok(Outcome::ok(0))
            }
            FEATURE_INTERRUPT_COALESCING => {
                self.features.interrupt_coalescing = v & 0xffff;
                Ok(Outcome::ok(0))
            }
            FEATURE_ASYNC_EVENT_CONFIG => {
                self.features.async_event_config = v;
                Ok(Outcome::ok(0))
            }
            _ => Err(status(generic::INVALID_FIELD)),
        }
    }

    fn get_features(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let sel = (cmd.cdw10 >> 8) & 7;
        let defaults = super::state::Features::defaults(&self.cfg);
        let f = if sel == 1 { defaults } else { self.features };
        let max = u32::from(self.cfg.max_queues);
        let v = match (cmd.cdw10 & 0xff) as u8 {
            // Supported capabilities: changeable, not saveable, not namespace specific.
            _ if sel == 3 => 1 << 2,
            feature::NUMBER_OF_QUEUES => match (sel, self.granted) {
                (0 | 2, Some((s, c))) => (u32::from(c) - 1) << 16 | (u32::from(s) - 1),
                _ => (max - 1) << 16 | (max - 1),
            },
            feature::VOLATILE_WRITE_CACHE if self.cfg.volatile_write_cache => {
                u32::from(f.volatile_write_cache)
            }
            feature::ARBITRATION => f.arbitration,
            FEATURE_INTERRUPT_COALESCING => f.interrupt_coalescing,
            FEATURE_ASYNC_EVENT_CONFIG => f.async_event_config,
            _ => return Err(status(generic::INVALID_FIELD)),
        };
        if sel > 3 {
            return Err(status(generic::INVALID_FIELD));
        }
        Ok(Outcome::ok(v))
    }

    /// Checks a queue ID and size for Create I/O SQ/CQ; returns the size in entries.
    fn check_new_queue(&self, cmd: &Command, granted: u16) -> Result<(usize, u32), Status> {
        let qid = usize::from(cmd.cdw10 as u16);
        let entries = (cmd.cdw10 >> 16) + 1;
        if qid == 0 || qid > usize::from(granted) || qid >= self.sqs.len() {
            return Err(specific(specific::INVALID_QID));
        }
        if entries < 2 || entries > u32::from(self.cfg.mqes) + 1 {
            return Err(specific(specific::INVALID_QUEUE_SIZE));
        }
        if cmd.cdw11 & 1 == 0 {
            // CAP.CQR: queues must be physically contiguous.
            return Err(status(generic::INVALID_FIELD));
        }
        if cmd.prp1 == 0 || cmd.prp1 % PAGE_SIZE as u64 != 0 {
            return Err(status(generic::INVALID_PRP_OFFSET));
        }
        Ok((qid, entries))
    }

    /// The queue memory must be mapped: a controller would DMA into whatever is there.
    fn check_queue_memory(&mut self, what: &str, base: u64, bytes: usize) -> Result<(), Status> {
        if mfio_dma::DeviceMemory::is_mapped(&self.dma, mfio_dma::Iova(base), bytes) {
            return Ok(());
        }
        self.violation(
            ViolationKind::Dma,
            format!("{what} at IOVA {base:#x} ({bytes:#x} bytes) is not in mapped DMA memory"),
        );
        Err(status(generic::INVALID_FIELD))
    }

    fn create_cq(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let granted = self.granted.map_or(0, |g| g.1);
        let (qid, entries) = self.check_new_queue(cmd, granted)?;
        if self.cqs[qid].is_some() {
            return Err(specific(specific::INVALID_QID));
        }
        let (ien, iv) = (cmd.cdw11 & 2 != 0, cmd.cdw11 >> 16);
        // Vectors beyond the MSI-X table do not exist, and while MSI-X is off only vector 0
        // (the pin interrupt, which the model never raises) does, as QEMU has it.
        if ien && iv != 0 && (iv >= self.irq.supported() || self.irq.enabled() == 0) {
            return Err(specific(INVALID_INTERRUPT_VECTOR));
        }
        let vector = ien.then_some(iv as u16);
        let what = format!("I/O CQ {qid}");
        self.check_queue_memory(&what, cmd.prp1, entries as usize * COMPLETION_SIZE)?;
        self.cqs[qid] = Some(Cq::new(cmd.prp1, entries, vector));
        // With shadow doorbells, publish this queue's EventIdx from the start: the head may
        // move a whole lap before a register write is due.
        self.set_event_idx(qid as u16, true, entries - 1);
        Ok(Outcome::ok(0))
    }

    fn create_sq(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let granted = self.granted.map_or(0, |g| g.0);
        let (qid, entries) = self.check_new_queue(cmd, granted)?;
        if self.sqs[qid].is_some() {
            return Err(specific(specific::INVALID_QID));
        }
        let cqid = (cmd.cdw11 >> 16) as u16;
        if cqid == 0 || self.cqs.get(usize::from(cqid)).is_none_or(Option::is_none) {
            return Err(specific(specific::INVALID_CQ));
        }
        let what = format!("I/O SQ {qid}");
        self.check_queue_memory(&what, cmd.prp1, entries as usize * COMMAND_SIZE)?;
        self.sqs[qid] = Some(Sq::new(cmd.prp1, entries, cqid));
        // Nothing fetched yet: the first tail update must ring.
        self.set_event_idx(qid as u16, false, 0);
        Ok(Outcome::ok(0))
    }

    fn delete_sq(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let qid = cmd.cdw10 as u16;
        if qid == 0 || self.sqs.get(usize::from(qid)).is_none_or(Option::is_none) {
            return Err(specific(specific::INVALID_QID));
        }
        // Commands still held for this SQ complete as aborted before it goes.
        let (gone, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| p.sqid == qid);
        self.pending = keep;
        let aborted = Status::new(sct::GENERIC, generic::ABORTED_SQ_DELETION);
        for p in gone {
            self.push_completion(qid, &p.cmd, Outcome::err(aborted), None, true);
        }
        self.flush_batch();
        self.sqs[usize::from(qid)] = None;
        Ok(Outcome::ok(0))
    }

    fn delete_cq(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let qid = cmd.cdw10 as u16;
        if qid == 0 || self.cqs.get(usize::from(qid)).is_none_or(Option::is_none) {
            return Err(specific(specific::INVALID_QID));
        }
        if self.sqs.iter().flatten().any(|sq| sq.cqid == qid) {
            return Err(specific(specific::INVALID_QUEUE_DELETION));
        }
        self.cqs[usize::from(qid)] = None;
        Ok(Outcome::ok(0))
    }

    fn get_log_page(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let lid = (cmd.cdw10 & 0xff) as u8;
        let numd = ((cmd.cdw11 & 0xffff) << 16 | cmd.cdw10 >> 16) as usize + 1;
        let offset = u64::from(cmd.cdw12) | u64::from(cmd.cdw13) << 32;
        let page = match lid {
            log::ERROR_INFORMATION => {
                let mut p = vec![0u8; ERROR_LOG_ENTRIES * 64];
                for (i, e) in self.error_log.iter().enumerate() {
                    p[i * 64..i * 64 + 64].copy_from_slice(e);
                }
                p
            }
            log::SMART_HEALTH => self.smart_log(),
            log::FIRMWARE_SLOT => {
                let mut p = vec![0u8; 512];
                p[0] = 1; // active slot 1
                p[8..16].copy_from_slice(b"1.0     ");
                p
            }
            _ => return Err(specific(specific::INVALID_LOG_PAGE)),
        };
        if offset % 4 != 0 || offset >= page.len() as u64 {
            return Err(status(generic::INVALID_FIELD));
        }
        let len = numd * 4;
        let max = self.cfg.max_transfer().unwrap_or(usize::MAX);
        if len > max {
            return Err(status(generic::INVALID_FIELD));
        }
        let what = format!("writing log page {lid:#x}");
        self.send(cmd, &page[offset as usize..], len, &what)?;
        Ok(Outcome::ok(0))
    }

    fn smart_log(&self) -> Vec<u8> {
        let mut p = vec![0u8; 512];
        let put = |p: &mut [u8], o: usize, v: u64| p[o..o + 8].copy_from_slice(&v.to_le_bytes());
        p[1..3].copy_from_slice(&310u16.to_le_bytes()); // 37 C, in kelvin
        p[3] = 100; // available spare
        p[4] = 10; // spare threshold
                   // Data units are thousands of 512-byte units, rounded up.
        put(&mut p, 32, self.smart.sectors_read.div_ceil(1000));
        put(&mut p, 48, self.smart.sectors_written.div_ceil(1000));
        put(&mut p, 64, self.smart.host_reads);
        put(&mut p, 80, self.smart.host_writes);
        put(&mut p, 112, 1); // power cycles
        put(&mut p, 160, self.smart.media_errors);
        put(&mut p, 176, self.error_count);
        p
    }

    /// Abort: a command still held by the model completes with Command Abort Requested
    /// (dw0 bit 0 = 0); one already executed (or unknown) is not aborted (dw0 bit 0 = 1).
    fn abort(&mut self, cmd: &Command) -> Outcome {
        let (sqid, cid) = (cmd.cdw10 as u16, (cmd.cdw10 >> 16) as u16);
        let aborted = Status::new(sct::GENERIC, generic::ABORT_REQUESTED);
        if let Some(i) = self.pending.iter().position(|p| p.sqid == sqid && p.cmd.cid == cid) {
            let p = self.pending.remove(i);
            debug_assert!(p.release != Release::After(0));
            self.push_completion(sqid, &p.cmd, Outcome::err(aborted), None, true);
            return Outcome::ok(0);
        }
        if sqid == 0 {
            if let Some(i) = self.aers.iter().position(|&c| c == cid) {
                self.aers.remove(i);
                let aer = Command { cid, opcode: ASYNC_EVENT_REQUEST, ..Command::default() };
                self.push_completion(0, &aer, Outcome::err(aborted), None, true);
                return Outcome::ok(0);
            }
        }
        Outcome::ok(1)
    }
}
