//! Submission queue entries (commands) and completion queue entries.

/// Size of a submission queue entry.
pub const COMMAND_SIZE: usize = 64;
/// Size of a completion queue entry.
pub const COMPLETION_SIZE: usize = 16;

/// A 64-byte submission queue entry.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// Opcode.
    pub opcode: u8,
    /// Fused operation (bits 0-1) and PRP/SGL selection (PSDT, bits 6-7).
    pub flags: u8,
    /// Command identifier.
    pub cid: u16,
    /// Namespace identifier.
    pub nsid: u32,
    /// Command dwords 2 and 3.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP entry 1 (or SGL descriptor bytes 0-7).
    pub prp1: u64,
    /// Data pointer: PRP entry 2 (or SGL descriptor bytes 8-15).
    pub prp2: u64,
    /// Command dwords 10-15.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

impl Command {
    /// PSDT value selecting SGLs for the data pointer (with a metadata pointer, not SGL).
    pub const PSDT_SGL: u8 = 1 << 6;

    /// CDW12 of a Write: Force Unit Access (complete only once the data is durable).
    pub const FUA: u32 = 1 << 30;
    /// CDW12 of a Write Zeroes: the controller may deallocate the blocks (DEAC).
    pub const DEAC: u32 = 1 << 25;

    /// A command with `opcode` for namespace `nsid`; everything else zero.
    pub fn new(opcode: u8, nsid: u32) -> Self {
        Self { opcode, nsid, ..Self::default() }
    }

    /// A Read or Write of `nlb` blocks (1-based) at `slba`.
    pub fn rw(opcode: u8, nsid: u32, slba: u64, nlb: u32) -> Self {
        Self {
            opcode,
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: nlb - 1,
            ..Self::default()
        }
    }

    /// Starting LBA of a Read, Write or Write Zeroes command.
    pub fn slba(&self) -> u64 {
        u64::from(self.cdw10) | (u64::from(self.cdw11) << 32)
    }

    /// Number of logical blocks (1-based) of a Read, Write or Write Zeroes command.
    pub fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }

    /// The entry as the controller reads it (little endian).
    pub fn to_bytes(&self) -> [u8; COMMAND_SIZE] {
        let mut b = [0u8; COMMAND_SIZE];
        b[0] = self.opcode;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[8..12].copy_from_slice(&self.cdw2.to_le_bytes());
        b[12..16].copy_from_slice(&self.cdw3.to_le_bytes());
        b[16..24].copy_from_slice(&self.mptr.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, dw) in [self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15]
            .iter()
            .enumerate()
        {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&dw.to_le_bytes());
        }
        b
    }

    /// The entry as eight little-endian quadwords, built in registers: the driver stores these
    /// straight into the ring (bytes assembled on the stack and copied in 16-byte pieces
    /// would stall on store forwarding).
    #[inline]
    pub fn to_qwords(&self) -> [u64; COMMAND_SIZE / 8] {
        let pair = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        let dw0 =
            u32::from(self.opcode) | (u32::from(self.flags) << 8) | (u32::from(self.cid) << 16);
        [
            pair(dw0, self.nsid),
            pair(self.cdw2, self.cdw3),
            self.mptr,
            self.prp1,
            self.prp2,
            pair(self.cdw10, self.cdw11),
            pair(self.cdw12, self.cdw13),
            pair(self.cdw14, self.cdw15),
        ]
    }

    /// Parses an entry read as eight little-endian quadwords (the model reads commands so).
    #[inline]
    pub fn from_qwords(q: &[u64; COMMAND_SIZE / 8]) -> Self {
        let (lo, hi) = (|x: u64| x as u32, |x: u64| (x >> 32) as u32);
        Self {
            opcode: q[0] as u8,
            flags: (q[0] >> 8) as u8,
            cid: (q[0] >> 16) as u16,
            nsid: hi(q[0]),
            cdw2: lo(q[1]),
            cdw3: hi(q[1]),
            mptr: q[2],
            prp1: q[3],
            prp2: q[4],
            cdw10: lo(q[5]),
            cdw11: hi(q[5]),
            cdw12: lo(q[6]),
            cdw13: hi(q[6]),
            cdw14: lo(q[7]),
            cdw15: hi(q[7]),
        }
    }

    /// Parses an entry (the model reads commands this way).
    pub fn from_bytes(b: &[u8; COMMAND_SIZE]) -> Self {
        let dw = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let qw = |i: usize| u64::from(dw(i)) | (u64::from(dw(i + 4)) << 32);
        Self {
            opcode: b[0],
            flags: b[1],
            cid: u16::from_le_bytes([b[2], b[3]]),
            nsid: dw(4),
            cdw2: dw(8),
            cdw3: dw(12),
            mptr: qw(16),
            prp1: qw(24),
            prp2: qw(32),
            cdw10: dw(40),
            cdw11: dw(44),
            cdw12: dw(48),
            cdw13: dw(52),
            cdw14: dw(56),
            cdw15: dw(60),
        }
    }
}

/// A 16-byte completion queue entry.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// Command-specific dword 0.
    pub dw0: u32,
    /// Dword 1 (reserved for most commands).
    pub dw1: u32,
    /// SQ head pointer: how far the controller has consumed the submission queue.
    pub sq_head: u16,
    /// Submission queue the command came from.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (bits 1-15).
    pub status: u16,
}

impl Completion {
    /// The phase tag.
    pub fn phase(&self) -> bool {
        self.status & 1 != 0
    }

    /// The status field (without the phase tag).
    pub fn status(&self) -> super::Status {
        super::Status(self.status >> 1)
    }

    /// The entry as the controller writes it.
    pub fn to_bytes(&self) -> [u8; COMPLETION_SIZE] {
        let mut b = [0u8; COMPLETION_SIZE];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sq_head.to_le_bytes());
        b[10..12].copy_from_slice(&self.sq_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// Parses dwords 0-3 of an entry.
    pub fn from_dwords(dw: [u32; 4]) -> Self {
        Self {
            dw0: dw[0],
            dw1: dw[1],
            sq_head: dw[2] as u16,
            sq_id: (dw[2] >> 16) as u16,
            cid: dw[3] as u16,
            status: (dw[3] >> 16) as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_bytes_round_trip() {
        let mut c = Command::rw(crate::spec::io::READ, 1, 0x1_2345_6789, 8);
        c.cid = 0xbeef;
        c.prp1 = 0xdead_b000;
        c.prp2 = 0x1000;
        let b = c.to_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(&b[2..4], &[0xef, 0xbe]);
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 0x2345_6789);
        assert_eq!(u32::from_le_bytes(b[48..52].try_into().unwrap()), 7);
        assert_eq!(Command::from_bytes(&b), c);
        assert_eq!((c.slba(), c.nlb()), (0x1_2345_6789, 8));
        // The quadwords the driver stores are the same bytes, every field distinct.
        let all = Command {
            opcode: 0x81,
            flags: 0x42,
            cid: 0x1234,
            nsid: 0x0506_0708,
            cdw2: 0x1111_2222,
            cdw3: 0x3333_4444,
            mptr: 0x5555_6666_7777_8888,
            prp1: 0x9999_aaaa_bbbb_cccc,
            prp2: 0xdddd_eeee_ffff_0001,
            cdw10: 10,
            cdw11: 11,
            cdw12: 12,
            cdw13: 13,
            cdw14: 14,
            cdw15: 15,
        };
        let q: Vec<u8> = all.to_qwords().iter().flat_map(|q| q.to_le_bytes()).collect();
        assert_eq!(q, all.to_bytes());
        assert_eq!(Command::from_qwords(&all.to_qwords()), all);
    }

    #[test]
    fn completion_layout() {
        let c =
            Completion { dw0: 1, dw1: 2, sq_head: 3, sq_id: 4, cid: 5, status: (0x281 << 1) | 1 };
        let b = c.to_bytes();
        let dw = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        assert_eq!(Completion::from_dwords([dw(0), dw(4), dw(8), dw(12)]), c);
        assert!(c.phase());
        assert_eq!((c.status().sct(), c.status().sc()), (2, 0x81));
    }
}
