//! Scatter gather list (SGL) descriptors (NVMe base 2.0, 4.1.2): 16 bytes each, the same
//! layout in the command's data pointer (SGL1) and in SGL segments in memory.

/// Size of an SGL descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;

/// Descriptor types (the high nibble of byte 15).
pub mod kind {
    /// Data Block: `len` bytes of data at `addr`.
    pub const DATA_BLOCK: u8 = 0x0;
    /// Bit Bucket: `len` bytes of a read are discarded (no address).
    pub const BIT_BUCKET: u8 = 0x1;
    /// Segment: `len` bytes of further descriptors at `addr`; its last may chain on.
    pub const SEGMENT: u8 = 0x2;
    /// Last Segment: `len` bytes of descriptors at `addr`, none of which chains on.
    pub const LAST_SEGMENT: u8 = 0x3;
}

/// Descriptor subtype: the address field is an address (the only subtype over PCIe).
pub const SUBTYPE_ADDRESS: u8 = 0x0;

/// Generic status (SCT 0) for a bad descriptor count: Invalid Number of SGL Descriptors.
pub const INVALID_SGL_DESCRIPTOR_COUNT: u8 = 0x0e;

/// One SGL descriptor.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    /// Address (data, or the next segment).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Descriptor type (see [`kind`]).
    pub kind: u8,
    /// Descriptor subtype (see [`SUBTYPE_ADDRESS`]).
    pub subtype: u8,
}

impl SglDescriptor {
    /// A Data Block descriptor.
    pub fn data(addr: u64, len: u32) -> Self {
        Self { addr, len, kind: kind::DATA_BLOCK, subtype: SUBTYPE_ADDRESS }
    }

    /// A Segment descriptor pointing at `count` descriptors.
    pub fn segment(addr: u64, count: u32) -> Self {
        Self {
            addr,
            len: count * DESCRIPTOR_SIZE as u32,
            kind: kind::SEGMENT,
            subtype: SUBTYPE_ADDRESS,
        }
    }

    /// A Last Segment descriptor pointing at `count` descriptors.
    pub fn last_segment(addr: u64, count: u32) -> Self {
        Self { kind: kind::LAST_SEGMENT, ..Self::segment(addr, count) }
    }

    /// A Bit Bucket descriptor (reads only: `len` bytes are dropped).
    pub fn bit_bucket(len: u32) -> Self {
        Self { addr: 0, len, kind: kind::BIT_BUCKET, subtype: SUBTYPE_ADDRESS }
    }

    /// The descriptor identifier byte (type in bits 7:4, subtype in 3:0).
    pub fn id(&self) -> u8 {
        (self.kind << 4) | (self.subtype & 0xf)
    }

    /// The 16 bytes as they sit in memory.
    pub fn to_bytes(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[15] = self.id();
        b
    }

    /// Parses 16 bytes.
    pub fn from_bytes(b: &[u8; DESCRIPTOR_SIZE]) -> Self {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        Self {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            kind: b[15] >> 4,
            subtype: b[15] & 0xf,
        }
    }

    /// The descriptor as a command's data pointer: `(prp1, prp2)` (SQE bytes 24-39).
    pub fn to_dptr(&self) -> (u64, u64) {
        (self.addr, u64::from(self.len) | (u64::from(self.id()) << 56))
    }

    /// The descriptor held in a command's data pointer (SGL1).
    pub fn from_dptr(prp1: u64, prp2: u64) -> Self {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..8].copy_from_slice(&prp1.to_le_bytes());
        b[8..16].copy_from_slice(&prp2.to_le_bytes());
        Self::from_bytes(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_layout() {
        let d = SglDescriptor::last_segment(0x1000_2000, 3);
        let b = d.to_bytes();
        assert_eq!(b[15], 0x30);
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 48);
        assert_eq!(SglDescriptor::from_bytes(&b), d);
        let (p1, p2) = SglDescriptor::data(0xabc, 512).to_dptr();
        assert_eq!((p1, p2), (0xabc, 512));
        assert_eq!(SglDescriptor::from_dptr(p1, p2), SglDescriptor::data(0xabc, 512));
        assert_eq!(SglDescriptor::from_dptr(d.to_dptr().0, d.to_dptr().1), d);
    }
}
