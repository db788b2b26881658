//! mfio-redb: [redb](https://docs.rs/redb) on any mfio block device.
//!
//! [`DeviceBackend`] is a redb `StorageBackend` over a region of a [`Device`]: the region's
//! first block is a header that holds the database's logical length (a block device has no
//! file length), and the bytes after it are the database. redb reads and writes at any byte
//! offset; the backend turns that into whole-block I/O through a DMA staging buffer, reading
//! the edge blocks first where a write covers them only in part. `sync_data` is a device flush
//! (which covers every queue: see [`Device::flush_covers_all_queues`]); growth zeroes the new
//! bytes (Write Zeroes where the device has it) and makes the zeroes durable before the new
//! length, so a crash never shows old bytes as part of the database.
//!
//! redb calls the backend from whichever thread commits; the backend holds its queue under a
//! mutex and drives each I/O on the calling thread (mfio's blocking API), so no thread is
//! spawned and a commit costs no cross-thread hop.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use mfio::{BlockCommands, BlockDevice, ReadAt, Window, WriteAt, Zeroes};
use mfio_devices::Device;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

/// The header block's first eight bytes.
const MAGIC: [u8; 8] = *b"MFIOREDB";
/// The on-device format.
const VERSION: u32 = 1;
/// The staging buffer: the most one device command moves.
const STAGING: usize = 1 << 20;

/// A redb storage backend on a region of a block device (see the crate documentation).
pub struct DeviceBackend<D: Device> {
    inner: Mutex<Inner<D>>,
    /// For `Debug`: where the database lives.
    region: Range<u64>,
}

struct Inner<D: Device> {
    queue: D::Queue,
    /// The staging buffer (out only while a command holds it).
    staging: Option<D::Buf>,
    /// The database's length in bytes.
    len: u64,
    bs: u64,
    /// Device byte of the database's first byte (after the header block).
    data: u64,
    /// Device byte past the region's end.
    end: u64,
}

impl<D: Device> std::fmt::Debug for DeviceBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBackend").field("region", &self.region).finish_non_exhaustive()
    }
}

impl<D: Device> DeviceBackend<D>
where
    D::Queue: Send,
    D::Buf: Send,
{
    /// Makes `region` of `dev` (the whole device if `None`) an empty database's storage,
    /// through queue `queue`. Whatever it held is gone.
    pub fn format(dev: &Arc<D>, queue: usize, region: Option<Range<u64>>) -> io::Result<Self> {
        let mut inner = Inner::new(dev, queue, region.clone())?;
        inner.len = 0;
        inner.write_header()?;
        inner.queue.flush_blocking().map_err(io_error)?;
        Ok(Self::wrap(inner))
    }

    /// Opens the database storage in `region` of `dev`, formatted by [`format`](Self::format).
    pub fn open(dev: &Arc<D>, queue: usize, region: Option<Range<u64>>) -> io::Result<Self> {
        let mut inner = Inner::new(dev, queue, region)?;
        inner.len = inner.read_header()?;
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: Inner<D>) -> Self {
        let region = inner.data - inner.bs..inner.end;
        Self { inner: Mutex::new(inner), region }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Inner<D>>> {
        // A panic mid-I/O left the staging buffer in an unknown state, not the device: the
        // database's own recovery covers that, so go on.
        Ok(self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<D: Device> redb::StorageBackend for DeviceBackend<D>
where
    D::Queue: Send,
    D::Buf: Send,
{
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let mut inner = self.lock()?;
        inner.check(offset, out.len())?;
        inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.lock()?.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.lock()?.queue.flush_blocking().map_err(io_error)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut inner = self.lock()?;
        inner.check(offset, data.len())?;
        inner.write(offset, data)
    }
}

impl<D: Device> Inner<D> {
    fn new(dev: &Arc<D>, queue: usize, region: Option<Range<u64>>) -> io::Result<Self> {
        let queue = dev.open_queue(queue).map_err(io::Error::other)?;
        let bs = u64::from(queue.block_size());
        let region = region.unwrap_or(0..queue.capacity());
        if bs == 0 || region.start % bs != 0 || region.end % bs != 0 || region.end <= region.start {
            return Err(invalid("the region must be a non-empty range of whole blocks"));
        }
        if region.end > queue.capacity() {
            return Err(invalid("the region runs past the end of the device"));
        }
        if bs as usize > STAGING || bs < 64 || !bs.is_power_of_two() {
            return Err(invalid(
                "the device's block size is not a power of two between 64 bytes and 1 MiB",
            ));
        }
        let staging = dev.buffer(STAGING).map_err(io::Error::other)?;
        Ok(Self {
            queue,
            staging: Some(staging),
            len: 0,
            bs,
            data: region.start + bs,
            end: region.end,
        })
    }

    fn check(&self, offset: u64, n: usize) -> io::Result<()> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{n} bytes at {offset} run past the database's end ({})", self.len),
            )),
        }
    }

    fn read_header(&mut self) -> io::Result<u64> {
        let bs = self.bs as usize;
        self.device_read(self.data - self.bs, bs)?;
        let b = &self.staging()[..bs];
        let crc_ok = u64::from_le_bytes(b[24..32].try_into().expect("8")) == checksum(&b[..24]);
        if b[..8] != MAGIC
            || u32::from_le_bytes(b[8..12].try_into().expect("4")) != VERSION
            || !crc_ok
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no database storage here (no valid mfio-redb header): format it first",
            ));
        }
        let len = u64::from_le_bytes(b[16..24].try_into().expect("8"));
        if len > self.end - self.data {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the header's length is past the region",
            ));
        }
        Ok(len)
    }

    fn write_header(&mut self) -> io::Result<()> {
        let bs = self.bs as usize;
        let len = self.len;
        let b = &mut self.staging()[..bs];
        b.fill(0);
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&len.to_le_bytes());
        let sum = checksum(&b[..24]);
        b[24..32].copy_from_slice(&sum.to_le_bytes());
        self.device_write(self.data - self.bs, bs)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len > self.end - self.data {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the database needs {len} bytes; the region holds {}",
                    self.end - self.data
                ),
            ));
        }
        if len > self.len {
            // Zero what was past the end (redb requires new bytes to read as zero), durably
            // before the new length is.
            self.zero(self.len, len)?;
            self.queue.flush_blocking().map_err(io_error)?;
        }
        let old = std::mem::replace(&mut self.len, len);
        // The length is the header's: if it cannot be written, the old one stands.
        self.write_header().inspect_err(|_| self.len = old)
    }

    /// Zeroes database bytes `[from, to)`: the block holding `from` in part, the rest whole
    /// (the last block's bytes past `to` are past the end, and zeroed on the next growth).
    fn zero(&mut self, from: u64, to: u64) -> io::Result<()> {
        let bs = self.bs;
        let head = from % bs;
        let mut at = from - head;
        if head != 0 {
            self.device_read(self.data + at, bs as usize)?;
            self.staging()[head as usize..bs as usize].fill(0);
            self.device_write(self.data + at, bs as usize)?;
            at += bs;
        }
        let end = to.div_ceil(bs) * bs;
        if at >= end {
            return Ok(());
        }
        let (pos, n) = (self.data + at, end - at);
        if self.queue.capabilities().write_zeroes {
            match self.queue.write_zeroes_blocking(pos, n, Zeroes::Allocate) {
                Err(e) if e.kind() == mfio::ErrorKind::Unsupported => {}
                r => return r.map_err(io_error),
            }
        }
        mfio::block_on(&self.queue, mfio::zero_fill(&self.queue, pos, n, STAGING)).map_err(io_error)
    }

    /// Reads database bytes at `offset` into `out`, a staging buffer at a time.
    fn read(&mut self, mut offset: u64, mut out: &mut [u8]) -> io::Result<()> {
        while !out.is_empty() {
            let (start, span, n) = self.chunk(offset, out.len());
            self.device_read(self.data + start, span)?;
            let from = (offset - start) as usize;
            out[..n].copy_from_slice(&self.staging()[from..from + n]);
            out = &mut out[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes `data` at database byte `offset`, reading the edge blocks it covers in part.
    fn write(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        let bs = self.bs as usize;
        while !data.is_empty() {
            let (start, span, n) = self.chunk(offset, data.len());
            let from = (offset - start) as usize;
            if from != 0 {
                self.device_read(self.data + start, bs)?;
            }
            if (from + n) % bs != 0 && !(span == bs && from != 0) {
                let last = start + (span - bs) as u64;
                self.device_read_at(self.data + last, span - bs, bs)?;
            }
            self.staging()[from..from + n].copy_from_slice(&data[..n]);
            self.device_write(self.data + start, span)?;
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// For `len` bytes at `offset`: the first block's database byte, the blocks' span (at
    /// most the staging buffer) and how many of the bytes it carries.
    fn chunk(&self, offset: u64, len: usize) -> (u64, usize, usize) {
        let bs = self.bs as usize;
        let start = offset - offset % self.bs;
        let from = (offset - start) as usize;
        let n = len.min(STAGING - from);
        (start, (from + n).div_ceil(bs) * bs, n)
    }

    fn device_read(&mut self, pos: u64, n: usize) -> io::Result<()> {
        self.device_read_at(pos, 0, n)
    }

    /// Reads `n` device bytes at `pos` into the staging buffer at `at`.
    fn device_read_at(&mut self, pos: u64, at: usize, n: usize) -> io::Result<()> {
        let buf = self.staging.take().expect("given back by every command");
        let window = Window::new(buf, at, n).expect("inside the staging buffer");
        let (r, window) = mfio::block_on(&self.queue, self.queue.read_all(pos, window));
        self.staging = Some(window.into_inner());
        r.map_err(|e| io_error(e.error))
    }

    /// Writes the first `n` bytes of the staging buffer at device byte `pos`.
    fn device_write(&mut self, pos: u64, n: usize) -> io::Result<()> {
        let buf = self.staging.take().expect("given back by every command");
        let window = Window::new(buf, 0, n).expect("inside the staging buffer");
        let (r, window) = mfio::block_on(&self.queue, self.queue.write_all(pos, window));
        self.staging = Some(window.into_inner());
        r.map_err(|e| io_error(e.error))
    }
}

impl<D: Device> Inner<D> {
    fn staging(&mut self) -> &mut [u8] {
        self.staging.as_mut().expect("given back by every command").as_mut()
    }
}

/// A checksum of the header's fields (FNV-1a: the header is one block, read once).
fn checksum(b: &[u8]) -> u64 {
    b.iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &x| (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

/// An mfio error as redb sees it (the kind mapped, the device's detail in the message).
fn io_error(e: mfio::Error) -> io::Error {
    io::Error::new(e.io_kind(), e)
}
