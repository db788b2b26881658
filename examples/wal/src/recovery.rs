//! Formatting a log, and opening one: find the superblock, scan the records from the
//! checkpoint to the first that fails, replay them, and clear what lies after.

use crate::commit::State;
use crate::format::{self, Header, Superblock, HEADER};
use crate::layout::Layout;
use crate::{Config, Lsn, Wal, WalError};
use mfio::{BlockCommands, BlockDevice, ErrorKind, ReadAt, Window, Zeroes};
use mfio_devices::Device;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

/// What recovery found when a log was opened.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The first record scanned (the start of the checkpoint's batch).
    pub first: Lsn,
    /// The sequence number the next append gets: every record below it was found.
    pub next: Lsn,
    /// Records handed to the replay callback (those at or after the checkpoint).
    pub replayed: u64,
    /// Bytes zeroed after the last good record (what the last batch could have covered).
    pub zeroed: u64,
    /// A failed batch had been voided, and was cleared.
    pub voided: bool,
}

impl<D: Device> Wal<D> {
    /// Formats a new, empty log on `queue` of `dev`, as `config` lays it out; whatever the
    /// region held before is never read back as records (the log has a new random id).
    /// Drive `queue` while this runs (or use [`format_blocking`](Self::format_blocking)).
    pub async fn format(
        dev: Arc<D>,
        queue: Rc<D::Queue>,
        config: &Config,
    ) -> Result<Self, WalError> {
        let layout = layout_of(&*queue, config, None)?;
        let sb = Superblock {
            seq: 0,
            log_id: random_id(),
            block_size: layout.block_size,
            max_batch: layout.max_batch as u32,
            region_start: layout.region_start,
            region_len: layout.area_start - layout.region_start + layout.area_len,
            start_lsn: Lsn(1),
            start_off: 0,
            replay_from: Lsn(1),
            void_from: Lsn(0),
        };
        // Both copies: an older log's superblock must not survive in either.
        crate::commit::write_super(&*dev, &queue, &layout, &sb).await?;
        let sb = Superblock { seq: 1, ..sb };
        crate::commit::write_super(&*dev, &queue, &layout, &sb).await?;
        let recovery = Recovery { first: Lsn(1), next: Lsn(1), ..Recovery::default() };
        Self::assemble(dev, queue, config, layout, sb, recovery, 0, VecDeque::new())
    }

    /// Opens the log in `config.region` of `queue` (its `max_batch` is the log's own, from
    /// the superblock) and recovers it: `replay` gets every record from the last checkpoint
    /// on, in order, with no gap; the first record that is torn, missing or from an older
    /// lap ends the log. A read error stops recovery with [`WalError::Recovery`] and changes
    /// nothing. Drive `queue` while this runs (or use [`open_blocking`](Self::open_blocking)).
    pub async fn open(
        dev: Arc<D>,
        queue: Rc<D::Queue>,
        config: &Config,
        mut replay: impl FnMut(Lsn, &[u8]),
    ) -> Result<Self, WalError> {
        let sb = read_superblock(&*dev, &queue, config).await?;
        let layout = layout_of(&*queue, config, Some(&sb))?;
        let mut scan = Scan {
            reader: Reader { buf: Some(buffer(&*dev, layout.max_batch)?), at: 0, len: 0 },
            layout,
            log_id: sb.log_id,
            limit: sb.start_off + layout.area_len,
        };
        let (mut off, mut lsn) = (sb.start_off, sb.start_lsn);
        let mut recovery = Recovery { first: lsn, ..Recovery::default() };
        let mut marks = VecDeque::new();
        loop {
            if sb.void_from.0 != 0 && lsn >= sb.void_from {
                break;
            }
            let mut found = scan.record(&*queue, off, lsn).await?;
            if found.is_none() {
                // A record that did not fit before the lap's end starts the next lap.
                let left = layout.left_in_lap(off);
                if left < layout.area_len {
                    let next = off + left;
                    found = scan.record(&*queue, next, lsn).await?.filter(|&(_, size)| size > left);
                }
            }
            let Some((at, size)) = found else { break };
            if lsn >= sb.replay_from {
                let len = scan.header_len(at);
                replay(lsn, &scan.bytes(at, HEADER + len)[HEADER..]);
                recovery.replayed += 1;
            }
            if marks.back().is_none_or(|&(_, o): &(Lsn, u64)| at - o >= layout.mark_granule()) {
                marks.push_back((lsn, at));
            }
            (off, lsn) = (at + size, Lsn(lsn.0 + 1));
        }
        recovery.next = lsn;
        // The last batch may have left records past the first bad one; were they kept, a
        // later batch ending where this one did would bring them back. Zero all it could
        // have covered, the gap before a next lap included (never the live log: at most up
        // to the checkpoint, a lap on).
        let to = layout.batch_reach(off).min(scan.limit);
        for (pos, len) in layout.ranges(off, to) {
            zero(&*queue, pos, len).await?;
            recovery.zeroed += len;
        }
        queue.flush().await.map_err(WalError::Io)?;
        drop(scan);
        let mut wal = Self::assemble(dev, queue, config, layout, sb, recovery, off, marks)?;
        if sb.void_from.0 != 0 {
            wal.write_superblock(|sb| sb.void_from = Lsn(0)).await?;
            wal.recovery.voided = true;
        }
        Ok(wal)
    }

    /// Blocking [`format`](Self::format).
    pub fn format_blocking(
        dev: Arc<D>,
        queue: Rc<D::Queue>,
        config: &Config,
    ) -> Result<Self, WalError> {
        let q = queue.clone();
        mfio::block_on(&*q, Self::format(dev, queue, config))
    }

    /// Blocking [`open`](Self::open).
    pub fn open_blocking(
        dev: Arc<D>,
        queue: Rc<D::Queue>,
        config: &Config,
        replay: impl FnMut(Lsn, &[u8]),
    ) -> Result<Self, WalError> {
        let q = queue.clone();
        mfio::block_on(&*q, Self::open(dev, queue, config, replay))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dev: Arc<D>,
        queue: Rc<D::Queue>,
        config: &Config,
        layout: Layout,
        sb: Superblock,
        recovery: Recovery,
        end: u64,
        marks: VecDeque<(Lsn, u64)>,
    ) -> Result<Self, WalError> {
        let staging = buffer(&*dev, layout.max_batch)?;
        let spare = buffer(&*dev, layout.max_batch)?;
        let mut state = State::new(staging, spare, recovery.next, sb.start_off, end);
        state.marks = marks;
        Ok(Wal {
            dev,
            queue,
            layout,
            fua: config.fua,
            log_id: sb.log_id,
            recovery,
            state: RefCell::new(state),
            superblock: futures::lock::Mutex::new(sb),
        })
    }
}

/// The log's layout on `queue`: from `config` for a new log, checked against `sb` for one
/// being opened.
fn layout_of<Q: BlockDevice>(
    queue: &Q,
    config: &Config,
    sb: Option<&Superblock>,
) -> Result<Layout, WalError> {
    let bs = queue.block_size();
    if bs < 512 || !bs.is_power_of_two() {
        return Err(WalError::Config("the block size must be a power of two of at least 512"));
    }
    let region = config.region.clone().unwrap_or(0..queue.capacity());
    let b = u64::from(bs);
    if region.start % b != 0 || region.end % b != 0 || region.end <= region.start {
        return Err(WalError::Config("the region must be a non-empty block-aligned range"));
    }
    if region.end > queue.capacity() {
        return Err(WalError::Config("the region runs past the end of the device"));
    }
    let max_batch = match sb {
        Some(sb) => {
            if sb.block_size != bs {
                return Err(WalError::Mismatch("the log was formatted for another block size"));
            }
            if sb.region_start != region.start || sb.region_len != region.end - region.start {
                return Err(WalError::Mismatch("the log was formatted on another region"));
            }
            u64::from(sb.max_batch)
        }
        None => config.max_batch as u64,
    };
    if max_batch < b || max_batch % b != 0 || max_batch > u64::from(u32::MAX) {
        return Err(WalError::Config(
            "max_batch must be a multiple of the block size, below 4 GiB",
        ));
    }
    let area_len = (region.end - region.start).saturating_sub(2 * b);
    if area_len < 2 * max_batch {
        return Err(WalError::Config("the region must hold two blocks and two batches"));
    }
    Ok(Layout {
        block_size: bs,
        region_start: region.start,
        area_start: region.start + 2 * b,
        area_len,
        max_batch,
    })
}

/// The newer valid superblock copy.
async fn read_superblock<D: Device>(
    dev: &D,
    queue: &D::Queue,
    config: &Config,
) -> Result<Superblock, WalError> {
    let bs = queue.block_size() as usize;
    if bs < 512 {
        return Err(WalError::Config("the block size must be a power of two of at least 512"));
    }
    let start = config.region.as_ref().map_or(0, |r| r.start);
    let buf = Window::new(buffer(dev, 2 * bs as u64)?, 0, 2 * bs).ok_or(WalError::NoBuffer)?;
    let (r, mut buf) = queue.read_all(start, buf).await;
    r.map_err(|e| WalError::Recovery { pos: start, error: e.error })?;
    let bytes = buf.as_mut_slice();
    let copies = [Superblock::decode(&bytes[..bs]), Superblock::decode(&bytes[bs..])];
    copies.into_iter().flatten().max_by_key(|sb| sb.seq).ok_or(WalError::NotFormatted)
}

/// Zeroes `len` bytes at `pos`, without a transfer where the device can.
async fn zero<Q: BlockCommands>(queue: &Q, pos: u64, len: u64) -> Result<(), WalError> {
    if queue.capabilities().write_zeroes {
        match queue.write_zeroes(pos, len, Zeroes::Allocate).await {
            Err(e) if e.kind() == ErrorKind::Unsupported => {}
            r => return r.map_err(WalError::Io),
        }
    }
    mfio::zero_fill(queue, pos, len, 256 << 10).await.map_err(WalError::Io)
}

fn buffer<D: Device>(dev: &D, len: u64) -> Result<D::Buf, WalError> {
    dev.buffer(len as usize).map_err(|_| WalError::NoBuffer)
}

/// A random, non-zero log id.
fn random_id() -> u64 {
    use std::hash::BuildHasher;
    let t = std::time::SystemTime::now();
    std::collections::hash_map::RandomState::new().hash_one(t) | 1
}

/// Reading records during recovery.
struct Scan<B> {
    reader: Reader<B>,
    layout: Layout,
    log_id: u64,
    /// Logical end of what the log can hold (a lap past the checkpoint).
    limit: u64,
}

impl<B: mfio::IoBufMut + AsMut<[u8]>> Scan<B> {
    /// The record `lsn` at logical `at` and its padded size, if a whole one of this log is
    /// there.
    async fn record<Q: ReadAt>(
        &mut self,
        queue: &Q,
        at: u64,
        lsn: Lsn,
    ) -> Result<Option<(u64, u64)>, WalError> {
        let l = self.layout;
        let bs = u64::from(l.block_size);
        if at + bs > self.limit {
            return Ok(None);
        }
        let header = self.reader.get(queue, &l, l.physical(at), bs).await?;
        let Some(h) = Header::decode(header) else { return Ok(None) };
        let size = format::padded(h.len as usize, l.block_size);
        let fits = size <= l.max_batch && size <= l.left_in_lap(at) && at + size <= self.limit;
        if h.log_id != self.log_id || h.lsn != lsn || !fits {
            return Ok(None);
        }
        let record = self.reader.get(queue, &l, l.physical(at), size).await?;
        Ok(h.matches(record).then_some((at, size)))
    }

    /// The payload length of the record just found at `at`.
    fn header_len(&mut self, at: u64) -> usize {
        let pos = self.layout.physical(at);
        Header::decode(self.reader.cached(pos, HEADER as u64)).map_or(0, |h| h.len as usize)
    }

    /// `len` bytes at logical `at`, read by [`record`](Self::record) just before.
    fn bytes(&mut self, at: u64, len: usize) -> &[u8] {
        let pos = self.layout.physical(at);
        self.reader.cached(pos, len as u64)
    }
}

/// A window of the record area, read a batch at a time.
struct Reader<B> {
    buf: Option<B>,
    /// Device byte of the window's start, and its length.
    at: u64,
    len: u64,
}

impl<B: mfio::IoBufMut + AsMut<[u8]>> Reader<B> {
    /// `len` bytes at device byte `pos` (inside one lap), reading them if the window does
    /// not hold them.
    async fn get<Q: ReadAt>(
        &mut self,
        queue: &Q,
        l: &Layout,
        pos: u64,
        len: u64,
    ) -> Result<&[u8], WalError> {
        if !(pos >= self.at && pos + len <= self.at + self.len) {
            let n = l.max_batch.min(l.area_start + l.area_len - pos).max(len);
            let buf = self.buf.take().ok_or(WalError::NoBuffer)?;
            let window = Window::new(buf, 0, n as usize).ok_or(WalError::NoBuffer)?;
            let (r, window) = queue.read_all(pos, window).await;
            self.buf = Some(window.into_inner());
            self.len = 0;
            r.map_err(|e| WalError::Recovery { pos: pos + e.done as u64, error: e.error })?;
            (self.at, self.len) = (pos, n);
        }
        Ok(self.cached(pos, len))
    }

    /// Bytes the window holds.
    fn cached(&mut self, pos: u64, len: u64) -> &[u8] {
        let from = (pos - self.at) as usize;
        let buf: &mut [u8] = self.buf.as_mut().expect("read back").as_mut();
        &buf[from..from + len as usize]
    }
}
