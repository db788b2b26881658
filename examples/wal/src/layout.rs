//! Where records go: logical offsets grow without end; the record area holds them in laps.
//!
//! A record at logical offset `L` sits at byte `L mod area_len` of the area, unless it would
//! run past the area's end: then it starts the next lap (the bytes left at the end of this one
//! are a gap). Recovery follows the same rule, so it needs no index: after the record at `L`
//! the next one is at `L + size`, or at the next lap's start if the one found there would not
//! have fitted.

/// The log's geometry on the device.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The device's block size (every record and gap is a multiple).
    pub block_size: u32,
    /// Byte on the device where the two superblock copies start.
    pub region_start: u64,
    /// Byte on the device where the record area starts (after the superblocks).
    pub area_start: u64,
    /// Bytes in the record area.
    pub area_len: u64,
    /// The largest batch, in logical bytes (records and a gap).
    pub max_batch: u64,
}

impl Layout {
    /// The byte on the device of logical offset `off`.
    pub fn physical(&self, off: u64) -> u64 {
        self.area_start + off % self.area_len
    }

    /// Bytes from logical `off` to the end of its lap.
    pub fn left_in_lap(&self, off: u64) -> u64 {
        self.area_len - off % self.area_len
    }

    /// Where a record of `size` bytes (padded) goes when the log ends at `off`.
    pub fn place(&self, off: u64, size: u64) -> u64 {
        let left = self.left_in_lap(off);
        if size <= left {
            off
        } else {
            off + left
        }
    }

    /// How far apart checkpoint marks are at least: fine enough that a checkpoint frees all
    /// but a sliver of the log, coarse enough that a log holds a few thousand marks.
    pub fn mark_granule(&self) -> u64 {
        (self.area_len / 4096).max(u64::from(self.block_size))
    }

    /// The logical end of what a batch starting after logical `off` can have covered: a batch
    /// spans at most `max_batch`, from `off` or, when its first record did not fit before the
    /// lap's end, from the next lap's start.
    pub fn batch_reach(&self, off: u64) -> u64 {
        let left = self.left_in_lap(off);
        if left < self.max_batch && left < self.area_len {
            off + left + self.max_batch
        } else {
            off + self.max_batch
        }
    }

    /// The device byte of superblock copy `seq % 2`.
    pub fn superblock(&self, seq: u64) -> u64 {
        self.region_start + (seq % 2) * u64::from(self.block_size)
    }

    /// The physical ranges `[start, start + len)` of logical `[from, to)` (at most two: the
    /// range may cross the end of a lap, never a whole lap).
    pub fn ranges(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> {
        let first = (to - from).min(self.left_in_lap(from));
        let second = (to - from) - first;
        [(self.physical(from), first), (self.area_start, second)]
            .into_iter()
            .filter(|&(_, len)| len > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            block_size: 512,
            region_start: 0,
            area_start: 1024,
            area_len: 10 * 512,
            max_batch: 2048,
        }
    }

    #[test]
    fn records_that_do_not_fit_start_the_next_lap() {
        let l = layout();
        assert_eq!(l.place(0, 512), 0);
        assert_eq!(l.place(4096, 1024), 4096, "exactly to the end");
        assert_eq!(l.place(4608, 1024), 5120, "past the end: the next lap");
        assert_eq!(l.physical(5120), 1024);
        assert_eq!(l.physical(5120 + 4608), 1024 + 4608);
        assert_eq!(l.superblock(3), 512);
        let r: Vec<_> = l.ranges(4608, 5632).collect();
        assert_eq!(r, [(1024 + 4608, 512), (1024, 512)]);
        let r: Vec<_> = l.ranges(5120, 6144).collect();
        assert_eq!(r, [(1024, 1024)]);
        assert_eq!(l.batch_reach(0), 2048);
        assert_eq!(l.batch_reach(4608), 5120 + 2048, "a batch may start at the next lap");
        assert_eq!(l.batch_reach(5120), 5120 + 2048);
    }
}
