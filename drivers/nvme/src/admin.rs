//! The admin queue: bring-up, identify, queue management, features, logs, abort.
//!
//! Admin commands are rare and synchronous: submit one, poll for its completion with a
//! deadline. The admin queue lives behind the controller's mutex; the I/O path never takes it
//! (except to abort a command that timed out).

use crate::error::NvmeError;
use crate::queues::{CompletionQueue, SubmissionQueue};
use crate::spec::{self, admin, cns, feature, Command, Completion, PAGE_SIZE};
use mfio_dma::{DmaBuffer, DmaSpace};
use mfio_pci::PciDevice;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Admin queue depth: admin traffic is one command at a time.
pub(crate) const ADMIN_ENTRIES: u16 = 32;

/// The admin submission/completion pair and a page for data in and out.
pub(crate) struct AdminQueue {
    pub(crate) sq: SubmissionQueue,
    pub(crate) cq: CompletionQueue,
    next_cid: u16,
    /// One page for Identify data, log pages and queue-creation scratch.
    pub(crate) page: DmaBuffer,
    /// Completions whose CID matched no outstanding command.
    pub(crate) stray: u64,
}

impl AdminQueue {
    pub(crate) fn new(space: &Arc<DmaSpace>, dstrd: u8) -> Result<Self, NvmeError> {
        Ok(Self {
            // The admin queue always rings its registers, as Linux and SPDK do (QEMU mirrors
            // admin register writes into the shadow page for exactly such hosts).
            sq: SubmissionQueue::new(space, 0, ADMIN_ENTRIES, dstrd, None)?,
            cq: CompletionQueue::new(space, 0, ADMIN_ENTRIES, dstrd, None)?,
            next_cid: 0,
            page: space.alloc(PAGE_SIZE)?,
            stray: 0,
        })
    }

    /// Forgets all ring state (the controller was disabled; it starts the rings afresh).
    pub(crate) fn reset(&mut self) {
        self.sq.reset();
        self.cq.reset();
    }

    /// Runs one admin command to completion.
    pub(crate) fn execute<D: PciDevice>(
        &mut self,
        dev: &D,
        mut cmd: Command,
        timeout: Duration,
    ) -> Result<Completion, NvmeError> {
        self.next_cid = self.next_cid.wrapping_add(1);
        cmd.cid = self.next_cid;
        let span = tracing::debug_span!("nvme_admin", opcode = cmd.opcode, cid = cmd.cid);
        let _g = span.enter();
        self.sq.push(&cmd);
        self.sq.commit(dev);
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(cqe) = self.cq.pop() {
                self.cq.commit(dev);
                if cqe.cid != cmd.cid {
                    self.stray += 1;
                    tracing::warn!(cid = cqe.cid, "admin completion for an unknown command");
                    continue;
                }
                let status = cqe.status();
                tracing::debug!(%status, dw0 = cqe.dw0, us = t0.elapsed().as_micros() as u64, "done");
                if !status.is_success() {
                    return Err(NvmeError::Command { opcode: cmd.opcode, status });
                }
                return Ok(cqe);
            }
            spins += 1;
            if spins % 256 == 0 {
                // A failed or removed controller completes nothing: say so now, not after the
                // timeout (a queue dropped on a dead controller would wait it out).
                let csts = spec::Csts(dev.read32(0, spec::regs::CSTS));
                if csts.is_gone() {
                    return Err(NvmeError::Gone);
                }
                if csts.cfs() {
                    return Err(NvmeError::Fatal);
                }
                if t0.elapsed() > timeout {
                    return Err(NvmeError::Timeout {
                        opcode: cmd.opcode,
                        ms: timeout.as_millis() as u64,
                    });
                }
                std::thread::yield_now();
            }
        }
    }

    /// Identify with `cns` (and `nsid`), returning the 4 KiB data structure.
    pub(crate) fn identify<D: PciDevice>(
        &mut self,
        dev: &D,
        cns_value: u32,
        nsid: u32,
        timeout: Duration,
    ) -> Result<Vec<u8>, NvmeError> {
        self.page.mem().zero();
        let mut cmd = Command::new(admin::IDENTIFY, nsid);
        cmd.prp1 = self.page.iova().get();
        cmd.cdw10 = cns_value;
        self.execute(dev, cmd, timeout)?;
        let mut data = vec![0u8; PAGE_SIZE];
        self.page.mem().copy_to_slice(0, &mut data);
        Ok(data)
    }

    /// The active namespace IDs (up to 1024).
    pub(crate) fn active_namespaces<D: PciDevice>(
        &mut self,
        dev: &D,
        timeout: Duration,
    ) -> Result<Vec<u32>, NvmeError> {
        let data = self.identify(dev, cns::ACTIVE_NAMESPACES, 0, timeout)?;
        Ok(data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&id| id != 0)
            .collect())
    }

    /// Set Features; returns completion dword 0.
    pub(crate) fn set_features<D: PciDevice>(
        &mut self,
        dev: &D,
        fid: u8,
        value: u32,
        timeout: Duration,
    ) -> Result<u32, NvmeError> {
        let mut cmd = Command::new(admin::SET_FEATURES, 0);
        cmd.cdw10 = u32::from(fid);
        cmd.cdw11 = value;
        Ok(self.execute(dev, cmd, timeout)?.dw0)
    }

    /// Get Features (current value); returns completion dword 0.
    pub(crate) fn get_features<D: PciDevice>(
        &mut self,
        dev: &D,
        fid: u8,
        timeout: Duration,
    ) -> Result<u32, NvmeError> {
        let mut cmd = Command::new(admin::GET_FEATURES, 0);
        cmd.cdw10 = u32::from(fid);
        Ok(self.execute(dev, cmd, timeout)?.dw0)
    }

    /// Doorbell Buffer Config: gives the controller the shadow doorbell and EventIdx pages.
    pub(crate) fn doorbell_buffer_config<D: PciDevice>(
        &mut self,
        dev: &D,
        (shadow, event): (u64, u64),
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        let mut cmd = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
        cmd.prp1 = shadow;
        cmd.prp2 = event;
        self.execute(dev, cmd, timeout).map(|_| ())
    }

    /// Number of Queues: asks for `wanted` I/O queue pairs; returns how many were granted.
    pub(crate) fn set_queue_count<D: PciDevice>(
        &mut self,
        dev: &D,
        wanted: u16,
        timeout: Duration,
    ) -> Result<u16, NvmeError> {
        let n = u32::from(wanted.max(1) - 1);
        let dw0 = self.set_features(dev, feature::NUMBER_OF_QUEUES, n | (n << 16), timeout)?;
        let sq = (dw0 & 0xffff) as u16 + 1;
        let cq = (dw0 >> 16) as u16 + 1;
        Ok(sq.min(cq).min(wanted.max(1)))
    }

    /// Creates I/O queue pair `qid`: the completion queue, then the submission queue that
    /// completes into it (both physically contiguous). The CQ raises MSI-X vector `vector`
    /// when one is given (IEN = 1), else none (polled). If the SQ is refused, the CQ is deleted
    /// again, so a failure leaves nothing behind.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_queue_pair<D: PciDevice>(
        &mut self,
        dev: &D,
        qid: u16,
        entries: u16,
        sq_iova: u64,
        cq_iova: u64,
        vector: Option<u16>,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        let size = u32::from(entries - 1) << 16;
        let mut cq = Command::new(admin::CREATE_CQ, 0);
        cq.prp1 = cq_iova;
        cq.cdw10 = size | u32::from(qid);
        // PC: physically contiguous; IEN and IV when interrupt-driven.
        cq.cdw11 = match vector {
            Some(iv) => u32::from(iv) << 16 | 2 | 1,
            None => 1,
        };
        self.execute(dev, cq, timeout)?;
        let mut sq = Command::new(admin::CREATE_SQ, 0);
        sq.prp1 = sq_iova;
        sq.cdw10 = size | u32::from(qid);
        sq.cdw11 = (u32::from(qid) << 16) | 1; // CQID, PC
        if let Err(e) = self.execute(dev, sq, timeout) {
            let _ = self.delete_queue(dev, admin::DELETE_CQ, qid, timeout);
            return Err(e);
        }
        Ok(())
    }

    /// Deletes I/O queue pair `qid`: the SQ (the controller aborts what it still holds), then
    /// the CQ.
    pub(crate) fn delete_queue_pair<D: PciDevice>(
        &mut self,
        dev: &D,
        qid: u16,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        self.delete_queue(dev, admin::DELETE_SQ, qid, timeout)?;
        self.delete_queue(dev, admin::DELETE_CQ, qid, timeout)
    }

    fn delete_queue<D: PciDevice>(
        &mut self,
        dev: &D,
        opcode: u8,
        qid: u16,
        timeout: Duration,
    ) -> Result<(), NvmeError> {
        let mut cmd = Command::new(opcode, 0);
        cmd.cdw10 = u32::from(qid);
        self.execute(dev, cmd, timeout).map(drop)
    }

    /// Get Log Page: `len` bytes (at most a page) of log `lid` for `nsid`.
    pub(crate) fn get_log_page<D: PciDevice>(
        &mut self,
        dev: &D,
        lid: u8,
        nsid: u32,
        len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, NvmeError> {
        if len == 0 || len > PAGE_SIZE || len % 4 != 0 {
            return Err(NvmeError::Invalid(format!(
                "log page length {len}: it must be a non-zero multiple of 4 up to {PAGE_SIZE}"
            )));
        }
        self.page.mem().zero();
        let mut cmd = Command::new(admin::GET_LOG_PAGE, nsid);
        cmd.prp1 = self.page.iova().get();
        let numd = (len / 4 - 1) as u32;
        cmd.cdw10 = u32::from(lid) | ((numd & 0xffff) << 16);
        cmd.cdw11 = numd >> 16;
        self.execute(dev, cmd, timeout)?;
        let mut data = vec![0u8; len];
        self.page.mem().copy_to_slice(0, &mut data);
        Ok(data)
    }

    /// Abort command `cid` on submission queue `sqid`. Returns whether the controller says
    /// it aborted it (completion dword 0 bit 0 clear).
    pub(crate) fn abort<D: PciDevice>(
        &mut self,
        dev: &D,
        sqid: u16,
        cid: u16,
        timeout: Duration,
    ) -> Result<bool, NvmeError> {
        let mut cmd = Command::new(admin::ABORT, 0);
        cmd.cdw10 = (u32::from(cid) << 16) | u32::from(sqid);
        Ok(self.execute(dev, cmd, timeout)?.dw0 & 1 == 0)
    }
}

/// Decoded SMART / Health Information log (log page 02h).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartLog {
    /// Critical warning bits.
    pub critical_warning: u8,
    /// Composite temperature, in kelvin.
    pub temperature: u16,
    /// Available spare, percent.
    pub available_spare: u8,
    /// Available spare threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage used (of the vendor's life estimate).
    pub percentage_used: u8,
    /// Data units read (thousands of 512-byte units).
    pub data_units_read: u128,
    /// Data units written (thousands of 512-byte units).
    pub data_units_written: u128,
    /// Host read commands completed.
    pub host_read_commands: u128,
    /// Host write commands completed.
    pub host_write_commands: u128,
    /// Controller busy time, minutes.
    pub controller_busy_time: u128,
    /// Power cycles.
    pub power_cycles: u128,
    /// Power-on hours.
    pub power_on_hours: u128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u128,
    /// Media and data integrity errors.
    pub media_errors: u128,
    /// Error information log entries.
    pub num_err_log_entries: u128,
}

impl SmartLog {
    /// Parses the 512-byte log page.
    pub fn parse(b: &[u8]) -> Self {
        let u128_at = |o: usize| u128::from_le_bytes(b[o..o + 16].try_into().unwrap_or([0; 16]));
        Self {
            critical_warning: b[0],
            temperature: u16::from_le_bytes([b[1], b[2]]),
            available_spare: b[3],
            available_spare_threshold: b[4],
            percentage_used: b[5],
            data_units_read: u128_at(32),
            data_units_written: u128_at(48),
            host_read_commands: u128_at(64),
            host_write_commands: u128_at(80),
            controller_busy_time: u128_at(96),
            power_cycles: u128_at(112),
            power_on_hours: u128_at(128),
            unsafe_shutdowns: u128_at(144),
            media_errors: u128_at(160),
            num_err_log_entries: u128_at(176),
        }
    }
}

/// One entry of the Error Information log (log page 01h, 64 bytes each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorLogEntry {
    /// Error count (0: the entry is empty).
    pub error_count: u64,
    /// Submission queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status field (without the phase tag).
    pub status: spec::Status,
    /// Parameter error location.
    pub parameter_error_location: u16,
    /// LBA of the error.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
}

impl ErrorLogEntry {
    /// Parses the entries of an error log page, dropping empty ones.
    pub fn parse_all(b: &[u8]) -> Vec<Self> {
        b.chunks_exact(64)
            .map(|e| Self {
                error_count: u64::from_le_bytes(e[0..8].try_into().unwrap_or([0; 8])),
                sqid: u16::from_le_bytes([e[8], e[9]]),
                cid: u16::from_le_bytes([e[10], e[11]]),
                status: spec::Status(u16::from_le_bytes([e[12], e[13]]) >> 1),
                parameter_error_location: u16::from_le_bytes([e[14], e[15]]),
                lba: u64::from_le_bytes(e[16..24].try_into().unwrap_or([0; 8])),
                nsid: u32::from_le_bytes(e[24..28].try_into().unwrap_or([0; 4])),
            })
            .filter(|e| e.error_count != 0)
            .collect()
    }
}
