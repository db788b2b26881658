//! A namespace's blocks: sparse, in 64 KiB chunks, so a large namespace costs only what is
//! written to it. Never-written and deallocated blocks read as zeroes (DLFEAT = 1).
//!
//! With the volatile write cache on, a write lands in `cache` (the newest contents of each
//! block written since the last flush) and reads see it; the chunks are the media, what a
//! power cut keeps. A flush moves the cache to the media; a FUA write goes to both. A power cut
//! keeps an arbitrary subset of the cached blocks (a block is atomic, AWUPF = 0; a multi-block
//! write may tear) and drops the rest.

use std::collections::{BTreeMap, HashMap};

use super::config::NamespaceConfig;

/// Chunk size of the sparse store.
const CHUNK: u64 = 64 * 1024;

/// One namespace's geometry and data.
#[derive(Clone, Debug)]
pub(crate) struct Namespace {
    /// Size in blocks.
    pub blocks: u64,
    /// Block size in bytes.
    pub lba_size: u32,
    chunks: HashMap<u64, Box<[u8]>>,
    /// Blocks written since the last flush and not yet on the media: their newest contents
    /// (`None`: zeroed).
    cache: BTreeMap<u64, Option<Box<[u8]>>>,
}

/// Where a write goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// Into the volatile cache: durable after a flush.
    Cache,
    /// To the media (no volatile cache, or Force Unit Access).
    Media,
}

impl Namespace {
    pub fn new(cfg: &NamespaceConfig) -> Self {
        Self {
            blocks: cfg.blocks,
            lba_size: cfg.lba_size,
            chunks: HashMap::new(),
            cache: BTreeMap::new(),
        }
    }

    /// log2 of the block size (Identify LBADS).
    pub fn lbads(&self) -> u8 {
        self.lba_size.trailing_zeros() as u8
    }

    /// Whether `nlb` blocks from `slba` lie inside the namespace.
    pub fn in_range(&self, slba: u64, nlb: u64) -> bool {
        slba.checked_add(nlb).is_some_and(|end| end <= self.blocks)
    }

    /// Copies bytes from byte offset `off` (a block boundary) into `out`: the newest data,
    /// cached or not.
    pub fn read(&self, off: u64, out: &mut [u8]) {
        self.read_media(off, out);
        if self.cache.is_empty() || out.is_empty() {
            return;
        }
        let bs = u64::from(self.lba_size);
        debug_assert!(off % bs == 0, "namespace reads start on a block");
        let (first, last) = (off / bs, (off + out.len() as u64 - 1) / bs);
        for (&lba, block) in self.cache.range(first..=last) {
            let at = (lba * bs - off) as usize;
            let end = (at + bs as usize).min(out.len());
            let dst = &mut out[at..end];
            match block {
                Some(b) => dst.copy_from_slice(&b[..dst.len()]),
                None => dst.fill(0),
            }
        }
    }

    /// Copies bytes from the media only (what a power cut with nothing kept would leave).
    fn read_media(&self, off: u64, out: &mut [u8]) {
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

    /// Stores `data` (whole blocks) at byte offset `off`, in the cache or on the media. A
    /// write to the media supersedes what the cache held for those blocks.
    pub fn write(&mut self, off: u64, data: &[u8], dest: Dest) {
        let bs = u64::from(self.lba_size);
        let first = off / bs;
        match dest {
            Dest::Media => {
                self.write_media(off, data);
                self.uncache(first, data.len() as u64 / bs);
            }
            Dest::Cache => {
                for (i, block) in data.chunks(bs as usize).enumerate() {
                    self.cache.insert(first + i as u64, Some(block.into()));
                }
            }
        }
    }

    /// Zeroes `len` bytes (whole blocks) at `off`, in the cache or on the media.
    pub fn zero(&mut self, off: u64, len: u64, dest: Dest) {
        let bs = u64::from(self.lba_size);
        match dest {
            Dest::Media => {
                self.zero_media(off, len);
                self.uncache(off / bs, len / bs);
            }
            Dest::Cache => {
                for lba in off / bs..(off + len) / bs {
                    self.cache.insert(lba, None);
                }
            }
        }
    }

    fn uncache(&mut self, first: u64, blocks: u64) {
        if self.cache.is_empty() {
            return;
        }
        let gone: Vec<u64> = self.cache.range(first..first + blocks).map(|(&l, _)| l).collect();
        for lba in gone {
            self.cache.remove(&lba);
        }
    }

    /// Flush: every cached block reaches the media.
    pub fn flush(&mut self) {
        self.power_cut(&mut |_| true);
    }

    /// Blocks in the volatile cache.
    pub fn cached_blocks(&self) -> usize {
        self.cache.len()
    }

    /// A power cut: the cached blocks `keep` picks reach the media, the others are lost.
    pub fn power_cut(&mut self, keep: &mut dyn FnMut(u64) -> bool) {
        let bs = u64::from(self.lba_size);
        for (lba, block) in std::mem::take(&mut self.cache) {
            if !keep(lba) {
                continue;
            }
            match block {
                Some(b) => self.write_media(lba * bs, &b),
                None => self.zero_media(lba * bs, bs),
            }
        }
    }

    fn write_media(&mut self, off: u64, data: &[u8]) {
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

    /// Zeroes (deallocates) `len` bytes of the media at `off`: whole chunks are dropped.
    fn zero_media(&mut self, off: u64, len: u64) {
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
        ns.write_media(CHUNK - 100, &data);
        let mut back = vec![0xee; data.len()];
        ns.read(CHUNK - 100, &mut back);
        assert_eq!(back, data);
        let mut far = [0xee; 16];
        ns.read(100 * CHUNK, &mut far);
        assert_eq!(far, [0; 16], "unwritten reads as zero");
        ns.zero_media(CHUNK - 50, 2 * CHUNK);
        ns.read(CHUNK - 100, &mut back);
        assert_eq!(&back[..50], &data[..50]);
        assert!(back[50..50 + 2 * CHUNK as usize].iter().all(|&b| b == 0));
        assert_eq!(&back[50 + 2 * CHUNK as usize..], &data[50 + 2 * CHUNK as usize..]);
        assert_eq!(ns.resident_bytes(), 4 * CHUNK as usize, "the covered chunk was dropped");
        assert!(ns.in_range(0, 1 << 20) && !ns.in_range(1, 1 << 20) && !ns.in_range(u64::MAX, 2));
    }

    fn block(ns: &Namespace, lba: u64) -> u8 {
        let mut b = [0xee; 512];
        ns.read(lba * 512, &mut b);
        assert!(b.iter().all(|&x| x == b[0]), "block {lba} is torn inside");
        b[0]
    }

    #[test]
    fn the_cache_is_read_flushed_superseded_and_lost_by_the_block() {
        let mut ns = Namespace::new(&NamespaceConfig::new(64, 512));
        ns.write(0, &[1; 4 * 512], Dest::Media);
        ns.write(512, &[2; 2 * 512], Dest::Cache);
        ns.zero(3 * 512, 512, Dest::Cache);
        assert_eq!([0, 1, 2, 3].map(|l| block(&ns, l)), [1, 2, 2, 0], "reads see the cache");
        assert_eq!(ns.cached_blocks(), 3);
        // A FUA write supersedes the cached block under it.
        ns.write(2 * 512, &[3; 512], Dest::Media);
        assert_eq!(ns.cached_blocks(), 2);
        // The cut keeps block 1 and drops block 3's zeroing.
        ns.power_cut(&mut |lba| lba == 1);
        assert_eq!([0, 1, 2, 3].map(|l| block(&ns, l)), [1, 2, 3, 1]);
        assert_eq!(ns.cached_blocks(), 0);
        ns.write(0, &[9; 512], Dest::Cache);
        ns.flush();
        ns.power_cut(&mut |_| false);
        assert_eq!(block(&ns, 0), 9, "a flushed block survives any cut");
    }
}
