//! The bytes on the device: the superblock (two copies) and the record header.
//!
//! Every integer is little-endian. A record is a 32-byte header and its payload, padded with
//! zeroes to the block size, so no two records share a block and a torn write can only tear
//! records of the batch being written. The header's CRC32C covers the rest of the header and
//! the payload: a record is valid only whole.

use crate::Lsn;

/// Bytes in a record header.
pub(crate) const HEADER: usize = 32;
/// A record header's first four bytes.
const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"WREC");
/// A superblock's first eight bytes.
const SUPER_MAGIC: [u8; 8] = *b"MFIOWAL1";
/// The on-device format this crate writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Bytes of a superblock that carry fields (the CRC32C is over all but its last four).
const SUPER_LEN: usize = 92;

/// The log's root, written in two copies that alternate (the higher valid `seq` wins), so a
/// torn superblock write leaves the previous one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// Bumped by every write of a copy.
    pub seq: u64,
    /// Chosen at random when the log is formatted: records of an earlier log on the same
    /// blocks never pass for this one's.
    pub log_id: u64,
    /// The device's block size when formatted.
    pub block_size: u32,
    /// The largest batch (logical bytes, gaps included) a writer of this log submits at once.
    pub max_batch: u32,
    /// The log's byte range on the device: two superblock copies, then the record area.
    pub region_start: u64,
    /// Length of that range.
    pub region_len: u64,
    /// The sequence number and logical offset of the first record recovery scans.
    pub start_lsn: Lsn,
    /// Logical offset of `start_lsn`'s record.
    pub start_off: u64,
    /// Records below this are checkpointed: scanned, but not replayed.
    pub replay_from: Lsn,
    /// Records from this one on are void (their batch failed and was not acknowledged);
    /// `Lsn(0)` when none are.
    pub void_from: Lsn,
}

impl Superblock {
    /// Writes the superblock into the first bytes of `block` (the rest is zeroed).
    pub fn encode(&self, block: &mut [u8]) {
        block.fill(0);
        let b = &mut block[..SUPER_LEN];
        b[0..8].copy_from_slice(&SUPER_MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.log_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.region_start.to_le_bytes());
        b[40..48].copy_from_slice(&self.region_len.to_le_bytes());
        b[48..56].copy_from_slice(&self.start_lsn.0.to_le_bytes());
        b[56..64].copy_from_slice(&self.start_off.to_le_bytes());
        b[64..72].copy_from_slice(&self.replay_from.0.to_le_bytes());
        b[72..80].copy_from_slice(&self.void_from.0.to_le_bytes());
        b[80..84].copy_from_slice(&self.max_batch.to_le_bytes());
        // 84..88 reserved (zero).
        let crc = crc32c::crc32c(&b[..SUPER_LEN - 4]);
        b[SUPER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }

    /// The superblock in `block`, if it holds a valid one of this version.
    pub fn decode(block: &[u8]) -> Option<Self> {
        let b = block.get(..SUPER_LEN)?;
        if b[0..8] != SUPER_MAGIC || u32_at(b, 8) != VERSION {
            return None;
        }
        if crc32c::crc32c(&b[..SUPER_LEN - 4]) != u32_at(b, SUPER_LEN - 4) {
            return None;
        }
        Some(Self {
            block_size: u32_at(b, 12),
            seq: u64_at(b, 16),
            log_id: u64_at(b, 24),
            region_start: u64_at(b, 32),
            region_len: u64_at(b, 40),
            start_lsn: Lsn(u64_at(b, 48)),
            start_off: u64_at(b, 56),
            replay_from: Lsn(u64_at(b, 64)),
            void_from: Lsn(u64_at(b, 72)),
            max_batch: u32_at(b, 80),
        })
    }
}

/// A record header as read back.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub log_id: u64,
    pub lsn: Lsn,
    pub len: u32,
    crc: u32,
}

impl Header {
    /// The header at the start of `bytes` if it has the record magic (its CRC is checked
    /// with the payload, by [`Header::matches`]).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HEADER)?;
        (u32_at(b, 0) == RECORD_MAGIC).then(|| Self {
            crc: u32_at(b, 4),
            log_id: u64_at(b, 8),
            lsn: Lsn(u64_at(b, 16)),
            len: u32_at(b, 24),
        })
    }

    /// Whether `record` (this header's bytes and at least `len` payload bytes after them)
    /// is whole: the CRC32C over the header's tail and the payload matches.
    pub fn matches(&self, record: &[u8]) -> bool {
        let end = HEADER + self.len as usize;
        record.len() >= end && record_crc(&record[..end]) == self.crc
    }
}

/// Encodes a record into `out` (its padded size, from [`padded`]): header, payload, zeroes.
pub(crate) fn encode_record(out: &mut [u8], log_id: u64, lsn: Lsn, payload: &[u8]) {
    let end = HEADER + payload.len();
    out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&log_id.to_le_bytes());
    out[16..24].copy_from_slice(&lsn.0.to_le_bytes());
    out[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[28..32].fill(0);
    out[HEADER..end].copy_from_slice(payload);
    out[end..].fill(0);
    let crc = record_crc(&out[..end]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A record of `payload` bytes on a device of `block_size`: header and payload, rounded up.
pub(crate) fn padded(payload: usize, block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    (HEADER as u64 + payload as u64).div_ceil(bs) * bs
}

/// CRC32C of a record's header tail (after the CRC field) and payload.
fn record_crc(record: &[u8]) -> u32 {
    crc32c::crc32c(&record[8..])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            seq: 7,
            log_id: 0x1234_5678_9abc_def0,
            block_size: 512,
            max_batch: 1 << 20,
            region_start: 4096,
            region_len: 1 << 30,
            start_lsn: Lsn(10),
            start_off: 8192,
            replay_from: Lsn(12),
            void_from: Lsn(0),
        }
    }

    #[test]
    fn a_superblock_round_trips_and_any_flipped_bit_invalidates_it() {
        let mut block = vec![0xffu8; 512];
        sb().encode(&mut block);
        assert_eq!(Superblock::decode(&block), Some(sb()));
        assert!(block[SUPER_LEN..].iter().all(|&b| b == 0));
        for bit in 0..SUPER_LEN * 8 {
            let mut bad = block.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Superblock::decode(&bad), None, "bit {bit}");
        }
    }

    #[test]
    fn a_record_is_valid_only_whole() {
        let payload = b"hello, log";
        let mut rec = vec![0xaau8; padded(payload.len(), 512) as usize];
        assert_eq!(rec.len(), 512);
        encode_record(&mut rec, 99, Lsn(5), payload);
        let h = Header::decode(&rec).unwrap();
        assert_eq!((h.log_id, h.lsn, h.len), (99, Lsn(5), payload.len() as u32));
        assert!(h.matches(&rec));
        assert_eq!(&rec[HEADER..HEADER + payload.len()], payload);
        assert!(rec[HEADER + payload.len()..].iter().all(|&b| b == 0), "padded with zeroes");
        for byte in 0..HEADER + payload.len() {
            let mut bad = rec.clone();
            bad[byte] ^= 0x10;
            let ok = Header::decode(&bad).is_some_and(|h| h.matches(&bad));
            assert!(!ok, "byte {byte}");
        }
        assert!(!h.matches(&rec[..HEADER + 3]), "a short record");
        assert_eq!(padded(480, 512), 512);
        assert_eq!(padded(481, 512), 1024);
        assert_eq!(padded(0, 4096), 4096);
    }
}
