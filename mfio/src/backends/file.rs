//! A file or block-device image as a backend: positional I/O through io_uring, or through
//! `pread`/`pwrite` where io_uring is unavailable.
//!
//! The default for anyone without VFIO hardware. With io_uring it has the same shape as the
//! NVMe driver: `send_io` queues, `poll_backend` turns the batch into SQEs behind one
//! `io_uring_enter`, and reaps completions from the CQ ring without a system call.

use crate::backend::{Activity, BlockDevice, IoBackend, PacketIo};
use crate::block::clip;
use crate::commands::{check_range, BlockCommands, Capabilities, Zeroes};
use crate::error::{Error, ErrorKind, Origin};
use crate::perms::{FromDevice, ToDevice};
use crate::PacketView;
use io_uring::{opcode, types, IoUring};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::task::Context;
use std::vec::Vec;

/// Largest piece handed to the kernel in one SQE (its length field is 32 bits).
const MAX_PIECE: usize = 1 << 30;

enum Request {
    Read(u64, PacketView<FromDevice>),
    Write(u64, PacketView<ToDevice>),
    /// `fdatasync`: the view is the command's empty one.
    Sync(PacketView<ToDevice>),
    /// `fallocate(mode, pos, len)`: zeroing or hole punching.
    Fallocate {
        pos: u64,
        len: u64,
        mode: i32,
        view: PacketView<ToDevice>,
    },
}

/// A hole punched in the file (or a block device's range zeroed, unmapping allowed).
const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// Zeroes that stay allocated.
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// An eventfd nothing ever signals (a sync backend's polling handle).
fn idle_eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A failed flush or fallocate: a file system without the operation says so as
/// [`ErrorKind::Unsupported`], as a device lacking it would.
fn command_error(errno: i32) -> Error {
    match errno {
        libc::EOPNOTSUPP | libc::ENOSYS => {
            Error::new(ErrorKind::Unsupported, Origin::File).with_errno(errno)
        }
        _ => Error::os(Origin::File, errno),
    }
}

/// How to open a [`FileBackend`].
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// Open for writing too (default true).
    pub writable: bool,
    /// Use io_uring when the kernel allows it (default true); `pread`/`pwrite` otherwise.
    pub io_uring: bool,
    /// Requests in flight at once (io_uring entries; default 128).
    pub depth: u32,
    /// Block size to enforce on offsets and lengths (default 1: byte granularity).
    pub block_size: u32,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self { writable: true, io_uring: true, depth: 128, block_size: 1 }
    }
}

struct Ring {
    ring: IoUring,
    /// In-flight requests by slot index (the SQE's user data).
    slots: Vec<Option<Request>>,
    free: Vec<u32>,
    /// The kernel's io_uring has `IORING_OP_FALLOCATE` (Linux 5.6): otherwise zeroing and
    /// discards are system calls of their own, not an error the caller would see.
    fallocate: bool,
}

impl Ring {
    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// A regular file or block device as a block device.
pub struct FileBackend {
    file: File,
    capacity: u64,
    block_size: u32,
    writable: bool,
    ring: Option<RefCell<Ring>>,
    /// The polling handle without a ring (see `from_file`).
    idle_fd: Option<std::os::fd::OwnedFd>,
    queue: RefCell<VecDeque<Request>>,
    /// The waker of a poll that answered `Idle` or `Armed`, woken when work is next queued
    /// (the driver of a runtime sleeps until then, or until the ring's descriptor is readable).
    parked: core::cell::Cell<Option<std::task::Waker>>,
}

impl FileBackend {
    /// Opens `path` read-write with the default options.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        Self::open_with(path, &FileOptions::default())
    }

    /// Opens `path` with `opts`. The capacity is the file's size at open.
    pub fn open_with(path: impl AsRef<Path>, opts: &FileOptions) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(opts.writable).open(path)?;
        Self::from_file(file, opts)
    }

    /// Wraps an open file.
    pub fn from_file(mut file: File, opts: &FileOptions) -> io::Result<Self> {
        let capacity = file.seek(SeekFrom::End(0))?;
        let depth = opts.depth.clamp(1, 4096);
        let ring = if opts.io_uring {
            // io_uring may be disabled (seccomp, sysctl): fall back to pread/pwrite then.
            IoUring::new(depth).ok().map(|ring| {
                let mut probe = io_uring::Probe::new();
                let fallocate = ring.submitter().register_probe(&mut probe).is_ok()
                    && probe.is_supported(opcode::Fallocate::CODE);
                RefCell::new(Ring {
                    ring,
                    slots: (0..depth).map(|_| None).collect(),
                    free: (0..depth).rev().collect(),
                    fallocate,
                })
            })
        } else {
            None
        };
        // Without a ring everything runs inside a poll, so an idle backend has nothing to be
        // woken by but a send, which wakes the parked waker: a descriptor that never turns
        // readable lets a runtime's driver sleep on it meanwhile instead of spinning.
        let idle_fd = match ring {
            Some(_) => None,
            None => Some(idle_eventfd()?),
        };
        Ok(Self {
            file,
            capacity,
            block_size: opts.block_size.max(1),
            writable: opts.writable,
            ring,
            idle_fd,
            queue: RefCell::new(VecDeque::with_capacity(depth as usize)),
            parked: core::cell::Cell::new(None),
        })
    }

    /// Whether requests go through io_uring (`false`: `pread`/`pwrite`).
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Queues a request and wakes a driver that is asleep on this backend.
    fn push(&self, request: Request) {
        self.queue.borrow_mut().push_back(request);
        if let Some(w) = self.parked.take() {
            w.wake();
        }
    }

    /// Range checks, and splits a piece too large for one SQE off the front.
    fn admit<P: crate::PacketPerms>(
        &self,
        pos: u64,
        view: PacketView<P>,
    ) -> Option<(PacketView<P>, Option<PacketView<P>>)> {
        let view = clip(pos, view, self.capacity, self.block_size, Origin::File)?;
        if view.len() > MAX_PIECE {
            let (head, tail) = view.split_at(MAX_PIECE);
            Some((head, Some(tail)))
        } else {
            Some((view, None))
        }
    }

    fn run_sync(&self, request: Request) {
        match request {
            Request::Read(pos, mut view) => {
                let mut done = 0;
                let len = view.len();
                let buf = view.as_mut_slice();
                while done < len {
                    match self.file.read_at(&mut buf[done..], pos + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return finish_short(view, done, Error::from_io(Origin::File, &e))
                        }
                    }
                }
                finish_short(view, done, Error::new(ErrorKind::OutOfRange, Origin::File));
            }
            Request::Write(pos, view) => {
                let mut done = 0;
                let buf = view.as_slice();
                while done < buf.len() {
                    match self.file.write_at(&buf[done..], pos + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return finish_short(view, done, Error::from_io(Origin::File, &e))
                        }
                    }
                }
                finish_short(view, done, Error::os(Origin::File, libc::EIO));
            }
            Request::Sync(view) => match self.file.sync_data() {
                Ok(()) => view.ok(),
                Err(e) => view.fail(command_error(e.raw_os_error().unwrap_or(libc::EIO))),
            },
            Request::Fallocate { pos, len, mode, view } => {
                // SAFETY: a plain system call on a descriptor we own; no memory is passed.
                let r =
                    unsafe { libc::fallocate(self.file.as_raw_fd(), mode, pos as i64, len as i64) };
                match r {
                    0 => view.ok(),
                    _ => view.fail(command_error(
                        io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO),
                    )),
                }
            }
        }
    }

    /// Queues a command's request (its range checked), or completes it at once when there is
    /// nothing to do or the range is bad.
    fn command<'a>(
        &'a self,
        range: Option<(u64, u64)>,
        make: impl FnOnce(PacketView<ToDevice>) -> Request + 'a,
    ) -> impl core::future::Future<Output = Result<(), Error>> + 'a {
        let checked = match range {
            // As a write to a read-only descriptor fails.
            Some(_) if !self.writable => Err(Error::os(Origin::File, libc::EBADF)),
            Some((pos, len)) => check_range(pos, len, self.capacity, self.block_size, Origin::File),
            None => Ok(true),
        };
        crate::io::command(self, move |dev: &Self, view| match checked {
            Ok(true) => dev.push(make(view)),
            Ok(false) => view.ok(),
            Err(e) => view.fail(e),
        })
    }

    /// Moves queued requests into the SQ ring (as many as there are free slots); returns how
    /// many it carried out itself instead (fallocate on a kernel whose io_uring lacks it).
    fn fill_ring(&self, ring: &mut Ring) -> usize {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut queue = self.queue.borrow_mut();
        let mut inline = Vec::new();
        while let Some(&slot) = ring.free.last() {
            let Some(request) = queue.pop_front() else {
                break;
            };
            if matches!(request, Request::Fallocate { .. }) && !ring.fallocate {
                inline.push(request);
                continue;
            }
            let entry = match &request {
                Request::Read(pos, v) => {
                    opcode::Read::new(fd, v.as_mut_ptr(), v.len() as u32).offset(*pos).build()
                }
                Request::Write(pos, v) => {
                    opcode::Write::new(fd, v.as_ptr(), v.len() as u32).offset(*pos).build()
                }
                Request::Sync(_) => {
                    opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build()
                }
                Request::Fallocate { pos, len, mode, .. } => {
                    opcode::Fallocate::new(fd, *len).offset(*pos).mode(*mode).build()
                }
            };
            // SAFETY: the SQE points into the view's memory, which stays valid until the view
            // is completed, and the view stays in `slots` until its CQE arrives.
            let pushed_ok = unsafe { ring.ring.submission().push(&entry.user_data(slot as u64)) };
            if pushed_ok.is_err() {
                queue.push_front(request);
                break;
            }
            ring.free.pop();
            ring.slots[slot as usize] = Some(request);
        }
        // Outside the queue's borrow: a completion may queue more.
        drop(queue);
        let n = inline.len();
        for request in inline {
            self.run_sync(request);
        }
        n
    }

    /// Completes what the kernel has finished; returns how many.
    fn reap(&self, ring: &mut Ring) -> usize {
        let mut reaped = 0;
        let mut requeue = Vec::new();
        {
            let Ring { ring: uring, slots, free, .. } = ring;
            for cqe in uring.completion() {
                let slot = cqe.user_data() as usize;
                let Some(request) = slots.get_mut(slot).and_then(Option::take) else {
                    continue;
                };
                free.push(slot as u32);
                reaped += 1;
                let res = cqe.result();
                match request {
                    Request::Read(pos, v) => {
                        if let Some((off, rest)) = complete_piece(v, res, true) {
                            requeue.push(Request::Read(pos + off, rest));
                        }
                    }
                    Request::Write(pos, v) => {
                        if let Some((off, rest)) = complete_piece(v, res, false) {
                            requeue.push(Request::Write(pos + off, rest));
                        }
                    }
                    Request::Sync(view) | Request::Fallocate { view, .. } => match res {
                        0.. => view.ok(),
                        _ => view.fail(command_error(-res)),
                    },
                }
            }
        }
        let mut queue = self.queue.borrow_mut();
        for r in requeue.into_iter().rev() {
            queue.push_front(r);
        }
        reaped
    }
}

/// Completes `view` after a transfer of `done` bytes: the prefix succeeds, the rest fails.
fn finish_short<P: crate::PacketPerms>(view: PacketView<P>, done: usize, error: Error) {
    if done == view.len() {
        view.ok();
    } else if done == 0 {
        view.fail(error);
    } else {
        let (head, tail) = view.split_at(done);
        head.ok();
        tail.fail(error);
    }
}

/// Handles one CQE result for `view`; returns the unfinished tail (and its offset) to resubmit
/// after a short transfer.
fn complete_piece<P: crate::PacketPerms>(
    view: PacketView<P>,
    res: i32,
    read: bool,
) -> Option<(u64, PacketView<P>)> {
    if res < 0 {
        view.fail(Error::os(Origin::File, -res));
        return None;
    }
    let n = res as usize;
    if n >= view.len() {
        view.ok();
        None
    } else if n == 0 {
        // Nothing moved: the file shrank under us (read) or the device is full (write).
        let e = if read {
            Error::new(ErrorKind::OutOfRange, Origin::File)
        } else {
            Error::os(Origin::File, libc::ENOSPC)
        };
        view.fail(e);
        None
    } else {
        let (head, tail) = view.split_at(n);
        head.ok();
        Some((n as u64, tail))
    }
}

impl BlockDevice for FileBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl PacketIo<FromDevice, u64> for FileBackend {
    fn send_io(&self, pos: u64, view: PacketView<FromDevice>) {
        let mut pos = pos;
        let mut next = self.admit(pos, view);
        while let Some((piece, rest)) = next {
            let len = piece.len() as u64;
            self.push(Request::Read(pos, piece));
            pos += len;
            next = rest.and_then(|r| self.admit(pos, r));
        }
    }
}

impl PacketIo<ToDevice, u64> for FileBackend {
    fn send_io(&self, pos: u64, view: PacketView<ToDevice>) {
        let mut pos = pos;
        let mut next = self.admit(pos, view);
        while let Some((piece, rest)) = next {
            let len = piece.len() as u64;
            self.push(Request::Write(pos, piece));
            pos += len;
            next = rest.and_then(|r| self.admit(pos, r));
        }
    }
}

impl BlockCommands for FileBackend {
    fn capabilities(&self) -> Capabilities {
        // The page cache is the volatile cache; fallocate does zeroing and hole punching on
        // the file systems and block devices that have it (the others answer Unsupported).
        Capabilities {
            volatile_cache: true,
            fua: false,
            discard: true,
            discard_zeroes: true,
            write_zeroes: true,
            zeroes_unmap: true,
            read_only: !self.writable,
        }
    }

    fn flush(&self) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        self.command(None, Request::Sync)
    }

    fn discard(
        &self,
        pos: u64,
        len: u64,
    ) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        self.command(Some((pos, len)), move |view| Request::Fallocate {
            pos,
            len,
            mode: PUNCH,
            view,
        })
    }

    fn write_zeroes(
        &self,
        pos: u64,
        len: u64,
        zeroes: Zeroes,
    ) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        let mode = match zeroes {
            Zeroes::Allocate => ZERO_RANGE,
            Zeroes::MayUnmap => PUNCH,
        };
        self.command(Some((pos, len)), move |view| Request::Fallocate { pos, len, mode, view })
    }
}

impl IoBackend for FileBackend {
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity {
        let Some(ring) = &self.ring else {
            loop {
                let Some(request) = self.queue.borrow_mut().pop_front() else {
                    break;
                };
                self.run_sync(request);
            }
            // All done: asleep until a send wakes the waker (see `idle_fd`).
            self.parked.set(Some(cx.waker().clone()));
            return Activity::Idle;
        };
        let mut ring = ring.borrow_mut();
        let mut reaped = self.reap(&mut ring);
        reaped += self.fill_ring(&mut ring);
        if !ring.ring.submission().is_empty() {
            // One system call for the whole batch: the io_uring "doorbell". A transient
            // failure (EAGAIN, EBUSY, EINTR) leaves the SQEs queued; the next poll retries.
            let _ = ring.ring.submit();
        }
        reaped += self.reap(&mut ring);
        // Progress, SQEs the kernel has not taken (no completion would announce them), or
        // requests waiting with slots free: poll again.
        let waiting = !self.queue.borrow().is_empty();
        if reaped > 0 || !ring.ring.submission().is_empty() || (waiting && !ring.free.is_empty()) {
            return Activity::Busy;
        }
        // Nothing finished and nothing more to hand over until a completion frees a slot: the
        // ring's descriptor turns readable when the kernel posts one (it was just found empty),
        // and a send wakes the waker.
        self.parked.set(Some(cx.waker().clone()));
        if ring.in_flight() > 0 {
            Activity::Armed
        } else {
            Activity::Idle
        }
    }

    fn polling_handle(&self) -> Option<crate::backend::PollingHandle> {
        let fd = match (&self.ring, &self.idle_fd) {
            (Some(r), _) => r.borrow().ring.as_raw_fd(),
            (None, Some(fd)) => fd.as_raw_fd(),
            (None, None) => return None,
        };
        Some(crate::backend::PollingHandle { fd })
    }
}

impl Drop for FileBackend {
    fn drop(&mut self) {
        // The kernel may still be writing into views' memory: wait for every CQE before the
        // views (and so their packets) are let go.
        let Some(ring) = self.ring.take() else { return };
        let mut ring = ring.into_inner();
        while ring.in_flight() > 0 {
            match ring.ring.submit_and_wait(1) {
                Ok(_) => {}
                // Interrupted, or the completion queue is full (reaping below makes room).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // Nothing says when the kernel is done with the memory of what is in flight:
                    // keep it lent for ever (the ring and its requests are leaked, so their
                    // packets never complete) rather than free what the kernel may still write.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "mfio: waiting for the io_uring of a dropped FileBackend failed ({e}); \
                         leaking its {} requests in flight",
                        ring.in_flight()
                    );
                    core::mem::forget(ring);
                    return;
                }
            }
            self.reap(&mut ring);
        }
    }
}
