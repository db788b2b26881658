//! A namespace's blocks: sparse, in 64 KiB chunks, so a large namespace costs only what is
//! written to it. Never-written and deallocated blocks read as zeroes (DLFEAT = 1).

use std::collections::HashMap;

use super::config::NamespaceConfig;

/// Chunk size of the sparse store.
const CHUNK: u64 = 64 * 1024;

/// One namespace's geometry and data.
#[derive(Debug)]
pub(crate) struct Namespace {
    /// Size in blocks.
    pub blocks: u64,
    /// Block size in bytes.
    pub lba_size: u32,
    chunks: HashMap<u64, Box<[u8]>>,
}

impl Namespace {
    pub fn new(cfg: &NamespaceConfig) -> Self {
        Self { blocks: cfg.blocks, lba_size: cfg.lba_size, chunks: HashMap::new() }
    }

    /// log2 of the block size (Identify LBADS).
    pub fn lbads(&self) -> u8 {
        self.lba_size.trailing_zeros() as u8
    }

    /// Whether `nlb` blocks from `slba` lie inside the namespace.
    pub fn in_range(&self, slba: u64, nlb: u64) -> bool {
        slba.checked_add(nlb).is_some_and(|end| end <= self.blocks)
    }

    /// Copies bytes from byte offset `off` into `out`.
    pub fn read(&self, off: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let pos = off + done as u64;
            let (idx, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(out.len() - done);
            match self.chunks.get(&idx) {
                Some(c) => out[done..done + n].copy_from_slice(&c[within..within + n]),
                None => out[done..done + n].fill(0),
            }
            done += n;
        }
    }

    /// Stores `data` at byte offset `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let pos = off + done as u64;
            let (idx, within) = (pos / CHUNK, (pos % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(data.len() - done);
            let c = self.chunks.entry(idx).or_insert_with(|| vec![0; CHUNK as usize].into());
            c[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Zeroes (deallocates) `len` bytes at `off`: whole chunks are dropped.
    pub fn zero(&mut self, off: u64, len: u64) {
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let (idx, within) = (pos / CHUNK, pos % CHUNK);
            let n = (CHUNK - within).min(end - pos);
            if n == CHUNK {
                self.chunks.remove(&idx);
            } else if let Some(c) = self.chunks.get_mut(&idx) {
                c[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
    }

    /// Bytes actually held (tests check that deallocation frees memory).
    #[cfg(test)]
    pub fn resident_bytes(&self) -> usize {
        self.chunks.len() * CHUNK as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_store_reads_back_and_zeroes() {
        let mut ns = Namespace::new(&NamespaceConfig::new(1 << 20, 512));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        ns.write(CHUNK - 100, &data);
        let mut back = vec![0xee; data.len()];
        ns.read(CHUNK - 100, &mut back);
        assert_eq!(back, data);
        let mut far = [0xee; 16];
        ns.read(100 * CHUNK, &mut far);
        assert_eq!(far, [0; 16], "unwritten reads as zero");
        ns.zero(CHUNK - 50, 2 * CHUNK);
        ns.read(CHUNK - 100, &mut back);
        assert_eq!(&back[..50], &data[..50]);
        assert!(back[50..50 + 2 * CHUNK as usize].iter().all(|&b| b == 0));
        assert_eq!(&back[50 + 2 * CHUNK as usize..], &data[50 + 2 * CHUNK as usize..]);
        assert_eq!(ns.resident_bytes(), 4 * CHUNK as usize, "the covered chunk was dropped");
        assert!(ns.in_range(0, 1 << 20) && !ns.in_range(1, 1 << 20) && !ns.in_range(u64::MAX, 2));
    }
}
