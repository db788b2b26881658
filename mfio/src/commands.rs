//! Commands of a block device besides read and write: flush, discard, write zeroes, and
//! writes with Force Unit Access, the same on every backend.
//!
//! An NBD server or a storage engine needs these to keep its promises (a flush makes every
//! completed write durable; a FUA write is durable when it completes). Devices differ in
//! which they carry out natively: [`BlockCommands::capabilities`] says, so a caller can decide
//! before sending (an NBD server advertises only what the device does; a zeroing that must be
//! fast fails at once where it would not be). What a device lacks is a typed
//! [`ErrorKind::Unsupported`], except FUA, which becomes a write and a flush.

use crate::backend::{BlockDevice, IoBackend, PacketIo};
use crate::buf::IoBuf;
use crate::error::{Error, ErrorKind, Origin, PartialError};
use crate::io::{All, Io};
use crate::perms::ToDevice;
use core::future::Future;

/// What a device carries out natively, besides reads and writes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The device has a volatile write cache: a completed write is durable only after a
    /// flush (or when written with FUA). Without one, [`BlockCommands::flush`] succeeds at once.
    pub volatile_cache: bool,
    /// Writes with Force Unit Access are native ([`BlockCommands::write_all_fua`] is one
    /// command); otherwise it is a write followed by a flush.
    pub fua: bool,
    /// [`BlockCommands::discard`] is supported (NVMe Deallocate, virtio-blk DISCARD, a hole
    /// punched in a file).
    pub discard: bool,
    /// Discarded blocks read back as zeroes afterwards.
    pub discard_zeroes: bool,
    /// [`BlockCommands::write_zeroes`] is supported: zeroes without a data transfer.
    pub write_zeroes: bool,
    /// [`Zeroes::MayUnmap`] can deallocate the zeroed blocks (otherwise they stay allocated
    /// either way).
    pub zeroes_unmap: bool,
    /// The device cannot be written (every write and command that changes data fails).
    pub read_only: bool,
}

/// What a write of zeroes may do with the blocks it zeroes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Zeroes {
    /// The blocks stay allocated (NBD's `NO_HOLE`): later writes to them cannot fail for lack
    /// of space on a thinly provisioned device.
    Allocate,
    /// The device may deallocate them, as long as they read back as zeroes.
    MayUnmap,
}

/// Flush, discard, write zeroes and FUA writes on a block device. Every operation checks its
/// range as reads and writes do: misaligned is [`ErrorKind::Misaligned`], past the end
/// [`ErrorKind::OutOfRange`], and an empty range succeeds without touching the device.
///
/// Each returns a future that drives nothing by itself: run it with the backend's driver (as
/// reads and writes are), or use the blocking forms.
pub trait BlockCommands: BlockDevice + IoBackend + PacketIo<ToDevice, u64> + Sized {
    /// What the device carries out natively.
    fn capabilities(&self) -> Capabilities;

    /// Makes every write that completed before this call durable (the device's volatile
    /// cache reaches the media). Succeeds at once on a device without a volatile cache.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + '_;

    /// Tells the device that `len` bytes at `pos` are no longer needed; whether they read back
    /// as zeroes is [`Capabilities::discard_zeroes`]. [`ErrorKind::Unsupported`] without
    /// [`Capabilities::discard`].
    fn discard(&self, pos: u64, len: u64) -> impl Future<Output = Result<(), Error>> + '_;

    /// Zeroes `len` bytes at `pos` without transferring data. [`ErrorKind::Unsupported`]
    /// without [`Capabilities::write_zeroes`]: write zeroed buffers instead (see
    /// [`zero_fill`]).
    fn write_zeroes(
        &self,
        pos: u64,
        len: u64,
        zeroes: Zeroes,
    ) -> impl Future<Output = Result<(), Error>> + '_;

    /// Writes all of `buf` at `pos`, durable when it resolves: one FUA write where the device
    /// has it ([`Capabilities::fua`]), else a write and then a flush (which makes earlier
    /// completed writes durable too). Gives `buf` back.
    fn write_all_fua<B: IoBuf>(
        &self,
        pos: u64,
        buf: B,
    ) -> impl Future<Output = (Result<(), PartialError>, B)> + '_ {
        async move {
            let (r, buf) = Io::<Self, ToDevice, B, All>::new(self, pos, buf).await;
            if let Err(e) = r {
                return (Err(e), buf);
            }
            let flushed = self.flush().await.map_err(|error| PartialError { done: 0, error });
            (flushed, buf)
        }
    }

    /// Blocking [`flush`](Self::flush).
    fn flush_blocking(&self) -> Result<(), Error> {
        crate::block_on(self, self.flush())
    }

    /// Blocking [`discard`](Self::discard).
    fn discard_blocking(&self, pos: u64, len: u64) -> Result<(), Error> {
        crate::block_on(self, self.discard(pos, len))
    }

    /// Blocking [`write_zeroes`](Self::write_zeroes).
    fn write_zeroes_blocking(&self, pos: u64, len: u64, zeroes: Zeroes) -> Result<(), Error> {
        crate::block_on(self, self.write_zeroes(pos, len, zeroes))
    }
}

/// A Force Unit Access write's address: a backend that implements `PacketIo<ToDevice, Fua>`
/// completes such a write only once it is durable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Fua(pub u64);

/// Checks a command's byte range `[pos, pos + len)` on a device of `capacity` bytes and
/// `block_size`: `Ok(false)` for an empty range (nothing to do), `Ok(true)` to go on.
pub fn check_range(
    pos: u64,
    len: u64,
    capacity: u64,
    block_size: u32,
    origin: Origin,
) -> Result<bool, Error> {
    let bs = u64::from(block_size.max(1));
    if pos % bs != 0 || len % bs != 0 {
        return Err(Error::new(ErrorKind::Misaligned, origin));
    }
    match pos.checked_add(len) {
        Some(end) if end <= capacity => Ok(len != 0),
        _ => Err(Error::new(ErrorKind::OutOfRange, origin)),
    }
}

/// Zeroes `len` bytes at `pos` by writing a zeroed buffer of `chunk` bytes over and over: the
/// fallback for a device without [`Capabilities::write_zeroes`]. `chunk` is rounded down to
/// the block size (and at least one block).
#[cfg(feature = "std")]
pub async fn zero_fill<D: BlockCommands>(
    dev: &D,
    pos: u64,
    len: u64,
    chunk: usize,
) -> Result<(), Error> {
    use crate::io::WriteAt;
    let bs = dev.block_size().max(1) as usize;
    if !check_range(pos, len, dev.capacity(), dev.block_size(), Origin::Framework)? {
        return Ok(());
    }
    let chunk = (chunk / bs).max(1) * bs;
    let mut buf = alloc::vec![0u8; chunk.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        buf.truncate(n);
        let (r, b) = dev.write_all(pos + done, buf).await;
        buf = b;
        r.map_err(|e| e.error)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_like_reads_and_writes() {
        let o = Origin::Framework;
        assert_eq!(check_range(0, 0, 4096, 512, o), Ok(false));
        assert_eq!(check_range(512, 3584, 4096, 512, o), Ok(true));
        assert_eq!(check_range(1, 512, 4096, 512, o).unwrap_err().kind(), ErrorKind::Misaligned);
        assert_eq!(check_range(0, 100, 4096, 512, o).unwrap_err().kind(), ErrorKind::Misaligned);
        assert_eq!(check_range(0, 4608, 4096, 512, o).unwrap_err().kind(), ErrorKind::OutOfRange);
        assert_eq!(check_range(4096, 512, 4096, 512, o).unwrap_err().kind(), ErrorKind::OutOfRange);
        let far = u64::MAX - 511;
        assert_eq!(check_range(far, 512, 4096, 512, o).unwrap_err().kind(), ErrorKind::OutOfRange);
    }
}
