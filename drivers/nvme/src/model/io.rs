//! NVM command set I/O commands: Read, Write, Flush, Write Zeroes, Dataset Management.

use super::namespace::Dest;
use super::records::Outcome;
use super::records::Seg;
use super::state::State;
use crate::spec::status::{generic, media, sct};
use crate::spec::{io, Command, Status};

fn status(sc: u8) -> Status {
    Status::new(sct::GENERIC, sc).with_dnr()
}

/// NSID meaning every namespace (Flush).
const NSID_ALL: u32 = 0xffff_ffff;

impl State {
    /// Executes an I/O command from SQ `sqid`.
    pub fn io(&mut self, sqid: u16, cmd: &Command) -> Option<Outcome> {
        if cmd.flags & 3 != 0 {
            // Fused operations (Compare and Write) are not offered (ONCS bit 0 clear).
            return Some(status(generic::INVALID_FIELD).into());
        }
        let r = match cmd.opcode {
            io::READ | io::WRITE => self.read_write(sqid, cmd),
            io::FLUSH => {
                if cmd.nsid == NSID_ALL {
                    self.namespaces.iter_mut().for_each(|ns| ns.flush());
                    Ok(Outcome::ok(0))
                } else if let Some(i) = self.ns_index(cmd.nsid) {
                    self.namespaces[i].flush();
                    Ok(Outcome::ok(0))
                } else {
                    Err(status(generic::INVALID_NAMESPACE))
                }
            }
            io::WRITE_ZEROES => self.write_zeroes(sqid, cmd),
            io::DATASET_MANAGEMENT => self.dataset_management(cmd),
            _ => Err(status(generic::INVALID_OPCODE)),
        };
        Some(r.unwrap_or_else(Outcome::err))
    }

    /// Index into `namespaces` of an active NSID.
    pub fn ns_index(&self, nsid: u32) -> Option<usize> {
        let i = usize::try_from(nsid).ok()?.checked_sub(1)?;
        (i < self.namespaces.len()).then_some(i)
    }

    /// The first injected bad block in `nlb` blocks from `slba` of `nsid`.
    fn media_error_in(&self, nsid: u32, slba: u64, nlb: u64) -> Option<u64> {
        if self.media_errors.is_empty() {
            return None;
        }
        let end = slba.saturating_add(nlb);
        self.media_errors.range((nsid, slba)..(nsid, end)).next().map(|&(_, lba)| lba)
    }

    /// Where a write goes: the volatile cache while it is on, unless the command has Force
    /// Unit Access (CDW12 bit 30).
    fn dest(&self, cmd: &Command) -> Dest {
        if self.features.volatile_write_cache && cmd.cdw12 & Command::FUA == 0 {
            Dest::Cache
        } else {
            Dest::Media
        }
    }

    fn media_failure(&mut self, sqid: u16, cmd: &Command, sc: u8, lba: u64) -> Status {
        // More: the Error Information log says which LBA failed.
        let st = Status(Status::new(sct::MEDIA, sc).with_dnr().0 | 1 << 13);
        self.smart.media_errors += 1;
        self.log_error(sqid, cmd, st, lba);
        st
    }

    fn read_write(&mut self, sqid: u16, cmd: &Command) -> Result<Outcome, Status> {
        let ns = self.ns_index(cmd.nsid).ok_or(status(generic::INVALID_NAMESPACE))?;
        let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
        let lba_size = u64::from(self.namespaces[ns].lba_size);
        let len = (nlb * lba_size) as usize;
        if self.cfg.max_transfer().is_some_and(|max| len > max) {
            return Err(status(generic::INVALID_FIELD));
        }
        if !self.namespaces[ns].in_range(slba, nlb) {
            return Err(status(generic::LBA_OUT_OF_RANGE));
        }
        let read = cmd.opcode == io::READ;
        if !read && cmd.cdw12 & Command::FUA != 0 {
            self.counters.fua_writes += 1;
        }
        // Within PRP1's page (the common case) the one segment stays on the stack.
        let one;
        let mut list = None;
        let segs: &[Seg] = match self.single_page(cmd, len)? {
            Some(seg) => {
                one = [seg];
                &one
            }
            None => list.insert(self.data_segments(cmd, len, false, read)?),
        };
        if let Some(bad) = self.media_error_in(cmd.nsid, slba, nlb) {
            let sc = if read { media::UNRECOVERED_READ } else { media::WRITE_FAULT };
            return Err(self.media_failure(sqid, cmd, sc, bad));
        }
        let off = slba * lba_size;
        if self.cfg.null_io {
            self.check_segments(segs, "null I/O data buffer")?;
        } else if read {
            let mut data = vec![0u8; len];
            self.namespaces[ns].read(off, &mut data);
            self.scatter(segs, &data, "writing read data to the host")?;
        } else {
            let data = self.gather(segs, len, "reading write data from the host")?;
            let dest = self.dest(cmd);
            self.namespaces[ns].write(off, &data, dest);
        }
        if let Some(v) = list {
            self.recycle(v);
        }
        let sectors = len as u64 / 512;
        if read {
            self.smart.host_reads += 1;
            self.smart.sectors_read += sectors;
        } else {
            self.smart.host_writes += 1;
            self.smart.sectors_written += sectors;
        }
        Ok(Outcome::ok(0))
    }

    fn write_zeroes(&mut self, sqid: u16, cmd: &Command) -> Result<Outcome, Status> {
        let ns = self.ns_index(cmd.nsid).ok_or(status(generic::INVALID_NAMESPACE))?;
        let (slba, nlb) = (cmd.slba(), u64::from(cmd.nlb()));
        if !self.namespaces[ns].in_range(slba, nlb) {
            return Err(status(generic::LBA_OUT_OF_RANGE));
        }
        if let Some(bad) = self.media_error_in(cmd.nsid, slba, nlb) {
            return Err(self.media_failure(sqid, cmd, media::WRITE_FAULT, bad));
        }
        if cmd.cdw12 & Command::DEAC != 0 {
            // Allowed (DLFEAT bit 3 is set); the blocks read back as zeroes either way.
            self.counters.deac_zeroes += 1;
        }
        // No data transfer, so MDTS does not apply (WZSL is not reported).
        if !self.cfg.null_io {
            let lba_size = u64::from(self.namespaces[ns].lba_size);
            let dest = self.dest(cmd);
            self.namespaces[ns].zero(slba * lba_size, nlb * lba_size, dest);
        }
        self.smart.host_writes += 1;
        Ok(Outcome::ok(0))
    }

    /// Ranges of 16 bytes (context attributes, length in blocks, starting LBA); with the
    /// Deallocate attribute the ranges read back as zeroes afterwards.
    fn dataset_management(&mut self, cmd: &Command) -> Result<Outcome, Status> {
        let ns = self.ns_index(cmd.nsid).ok_or(status(generic::INVALID_NAMESPACE))?;
        let nr = (cmd.cdw10 & 0xff) as usize + 1;
        let segs = self.data_segments(cmd, nr * 16, false, false)?;
        let raw = self.gather(&segs, nr * 16, "reading Dataset Management ranges")?;
        let ranges: Vec<(u64, u64)> = raw
            .chunks_exact(16)
            .map(|r| {
                let nlb = u32::from_le_bytes(r[4..8].try_into().unwrap_or_default());
                let slba = u64::from_le_bytes(r[8..16].try_into().unwrap_or_default());
                (slba, u64::from(nlb))
            })
            .collect();
        if ranges.iter().any(|&(s, n)| !self.namespaces[ns].in_range(s, n)) {
            return Err(status(generic::LBA_OUT_OF_RANGE));
        }
        let deallocate = cmd.cdw11 & (1 << 2) != 0;
        if deallocate && !self.cfg.null_io {
            let dest = if self.features.volatile_write_cache { Dest::Cache } else { Dest::Media };
            let lba_size = u64::from(self.namespaces[ns].lba_size);
            for (s, n) in ranges {
                self.namespaces[ns].zero(s * lba_size, n * lba_size, dest);
            }
        }
        Ok(Outcome::ok(0))
    }
}
