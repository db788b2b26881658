//! Data pointers: walking PRPs and SGLs with the spec's rules, and moving data through them.
//!
//! Rule breaks the spec gives a status for complete the command with that status (Invalid
//! PRP Offset, SGL Descriptor Type Invalid, ...); a pointer to memory the driver never mapped
//! is a stray DMA: a violation, and Data Transfer Error if the model is not panicking.

use super::records::Seg;
use super::state::State;
use crate::spec::sgl::{self, SglDescriptor, DESCRIPTOR_SIZE};
use crate::spec::status::{generic, sct};
use crate::spec::{Command, Status, PAGE_SIZE};

/// Most SGL segments followed for one command (a loop in the list ends here).
const MAX_SGL_SEGMENTS: usize = 4096;

fn status(sc: u8) -> Status {
    Status::new(sct::GENERIC, sc).with_dnr()
}

fn transfer_error() -> Status {
    Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR)
}

impl State {
    /// The segments of a `len`-byte transfer described by `cmd`'s data pointer. `to_host` is
    /// the direction (Bit Buckets are for reads only); admin commands must use PRPs.
    pub fn data_segments(
        &mut self,
        cmd: &Command,
        len: usize,
        admin: bool,
        to_host: bool,
    ) -> Result<Vec<Seg>, Status> {
        match cmd.flags >> 6 {
            0 => self.prp_segments(cmd.prp1, cmd.prp2, len),
            1 if !admin && self.cfg.sgl => self.sgl_segments(cmd, len, to_host),
            // SGLs not offered (or for admin commands, which use PRPs over PCIe), metadata
            // SGLs, and the reserved value.
            _ => Err(status(generic::INVALID_FIELD)),
        }
    }

    /// The one segment of a `len`-byte transfer that PRP1 describes alone (PRPs, and the data
    /// ends in PRP1's page); `None` when it takes more (then [`Self::data_segments`]). The
    /// same rules as `prp_segments`, without a list.
    pub fn single_page(&self, cmd: &Command, len: usize) -> Result<Option<Seg>, Status> {
        let prp1 = cmd.prp1;
        if cmd.flags >> 6 != 0 || len == 0 || (prp1 % PAGE_SIZE as u64) as usize + len > PAGE_SIZE {
            return Ok(None);
        }
        if prp1 & 3 != 0 {
            return Err(status(generic::INVALID_PRP_OFFSET));
        }
        Ok(Some(Seg { iova: prp1, len, bucket: false }))
    }

    /// PRP1 may have a dword-aligned offset; PRP2 is unused, a page-aligned second page, or a
    /// PRP list pointer (dword-aligned offset allowed) whose page-aligned entries describe the
    /// rest, the last entry of a full list page chaining to the next list page.
    pub fn prp_segments(&mut self, prp1: u64, prp2: u64, len: usize) -> Result<Vec<Seg>, Status> {
        let page = PAGE_SIZE as u64;
        if len == 0 {
            return Ok(Vec::new());
        }
        if prp1 & 3 != 0 {
            return Err(status(generic::INVALID_PRP_OFFSET));
        }
        let first = len.min((page - prp1 % page) as usize);
        let mut segs = self.take_scratch();
        segs.push(Seg { iova: prp1, len: first, bucket: false });
        let mut rest = len - first;
        if rest == 0 {
            return Ok(segs);
        }
        if rest <= PAGE_SIZE {
            if prp2 % page != 0 {
                return Err(status(generic::INVALID_PRP_OFFSET));
            }
            segs.push(Seg { iova: prp2, len: rest, bucket: false });
            return Ok(segs);
        }
        if prp2 & 3 != 0 {
            return Err(status(generic::INVALID_PRP_OFFSET));
        }
        let mut list = prp2;
        let mut entries_needed = rest.div_ceil(PAGE_SIZE);
        while entries_needed > 0 {
            let in_page = ((page - list % page) / 8) as usize;
            // A full list page that cannot hold the remaining entries ends in a chain pointer.
            let chained = entries_needed > in_page;
            let count = if chained { in_page } else { entries_needed };
            // At most one page of entries: a stack buffer, no allocation.
            let mut raw = [0u8; PAGE_SIZE];
            if self.dma_read(list, &mut raw[..count * 8], "reading a PRP list").is_err() {
                return Err(transfer_error());
            }
            let entry = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            let data_entries = if chained { count - 1 } else { count };
            for e in (0..data_entries).map(entry) {
                if e % page != 0 {
                    return Err(status(generic::INVALID_PRP_OFFSET));
                }
                let n = rest.min(PAGE_SIZE);
                segs.push(Seg { iova: e, len: n, bucket: false });
                rest -= n;
            }
            entries_needed -= data_entries;
            if chained {
                let next = entry(count - 1);
                if next % page != 0 {
                    return Err(status(generic::INVALID_PRP_OFFSET));
                }
                list = next;
            }
        }
        Ok(segs)
    }

    /// SGL1 in the command; Segment and Last Segment descriptors lead to lists in memory. The
    /// data descriptors must add up to exactly `len` (SGLS bit 16, longer SGLs, is not offered).
    fn sgl_segments(
        &mut self,
        cmd: &Command,
        len: usize,
        to_host: bool,
    ) -> Result<Vec<Seg>, Status> {
        let mut segs = self.take_scratch();
        let mut total = 0usize;
        let mut desc = SglDescriptor::from_dptr(cmd.prp1, cmd.prp2);
        let mut last_list = false;
        for _ in 0..MAX_SGL_SEGMENTS {
            match desc.kind {
                sgl::kind::SEGMENT | sgl::kind::LAST_SEGMENT => {
                    if last_list {
                        // A Last Segment's descriptors may not chain on.
                        return Err(status(generic::SGL_TYPE_INVALID));
                    }
                    if desc.subtype != sgl::SUBTYPE_ADDRESS {
                        return Err(status(generic::SGL_TYPE_INVALID));
                    }
                    let n = desc.len as usize / DESCRIPTOR_SIZE;
                    if n == 0 || desc.len as usize % DESCRIPTOR_SIZE != 0 {
                        return Err(status(sgl::INVALID_SGL_DESCRIPTOR_COUNT));
                    }
                    last_list = desc.kind == sgl::kind::LAST_SEGMENT;
                    let mut raw = vec![0u8; desc.len as usize];
                    if self.dma_read(desc.addr, &mut raw, "reading an SGL segment").is_err() {
                        return Err(transfer_error());
                    }
                    let list: Vec<SglDescriptor> = raw
                        .chunks_exact(DESCRIPTOR_SIZE)
                        .map(|c| SglDescriptor::from_bytes(c.try_into().unwrap_or(&[0; 16])))
                        .collect();
                    for d in &list[..n - 1] {
                        self.sgl_data(d, to_host, &mut segs, &mut total)?;
                    }
                    let tail = list[n - 1];
                    if matches!(tail.kind, sgl::kind::SEGMENT | sgl::kind::LAST_SEGMENT) {
                        desc = tail;
                        continue;
                    }
                    self.sgl_data(&tail, to_host, &mut segs, &mut total)?;
                }
                _ => self.sgl_data(&desc, to_host, &mut segs, &mut total)?,
            }
            return if total == len { Ok(segs) } else { Err(status(generic::SGL_LENGTH_INVALID)) };
        }
        Err(status(sgl::INVALID_SGL_DESCRIPTOR_COUNT))
    }

    /// A descriptor that must describe data: a Data Block, or a Bit Bucket on a read.
    fn sgl_data(
        &mut self,
        d: &SglDescriptor,
        to_host: bool,
        segs: &mut Vec<Seg>,
        total: &mut usize,
    ) -> Result<(), Status> {
        let bucket = match d.kind {
            sgl::kind::DATA_BLOCK if d.subtype == sgl::SUBTYPE_ADDRESS => false,
            sgl::kind::BIT_BUCKET if to_host => true,
            _ => return Err(status(generic::SGL_TYPE_INVALID)),
        };
        if d.len > 0 {
            segs.push(Seg { iova: d.addr, len: d.len as usize, bucket });
            *total += d.len as usize;
        }
        Ok(())
    }

    /// The reusable segment list, emptied.
    fn take_scratch(&mut self) -> Vec<Seg> {
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        v
    }

    /// Hands a segment list back for reuse.
    pub fn recycle(&mut self, segs: Vec<Seg>) {
        self.scratch = segs;
    }

    /// Copies `data` to the host through `segs` (a read's data, Identify, a log page).
    pub fn scatter(&mut self, segs: &[Seg], data: &[u8], what: &str) -> Result<(), Status> {
        let mut off = 0;
        for s in segs {
            if !s.bucket {
                let end = (off + s.len).min(data.len());
                if self.dma_write(s.iova, &data[off..end], what).is_err() {
                    return Err(transfer_error());
                }
            }
            off += s.len;
        }
        Ok(())
    }

    /// Copies `len` bytes from the host through `segs`.
    pub fn gather(&mut self, segs: &[Seg], len: usize, what: &str) -> Result<Vec<u8>, Status> {
        let mut out = vec![0u8; len];
        let mut off = 0;
        for s in segs {
            let end = (off + s.len).min(len);
            if self.dma_read(s.iova, &mut out[off..end], what).is_err() {
                return Err(transfer_error());
            }
            off = end;
        }
        Ok(out)
    }

    /// Null I/O: checks every segment is reachable without moving data.
    pub fn check_segments(&mut self, segs: &[Seg], what: &str) -> Result<(), Status> {
        for s in segs.iter().filter(|s| !s.bucket) {
            if self.dma_check(s.iova, s.len, what).is_err() {
                return Err(transfer_error());
            }
        }
        Ok(())
    }
}
