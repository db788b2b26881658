//! An in-memory block device: the reference backend.
//!
//! Requests are queued by `send_io` and carried out in `poll_backend`, exactly like a device
//! queue, so batching, partial success and out-of-range handling behave as on hardware. It
//! counts requests per batch so tests can see the batching.

use crate::backend::{Activity, BlockDevice, IoBackend, PacketIo};
use crate::block::clip;
use crate::commands::{check_range, BlockCommands, Capabilities, Zeroes};
use crate::error::{Error, Origin};
use crate::perms::{FromDevice, ToDevice};
use crate::PacketView;
use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::task::Context;

enum Request {
    Read(u64, PacketView<FromDevice>),
    Write(u64, PacketView<ToDevice>),
    /// Zeroes a range (write zeroes and discard alike); the view is the command's empty one.
    Zero(u64, u64, PacketView<ToDevice>),
    /// Nothing to make durable: completes in order with the batch.
    Flush(PacketView<ToDevice>),
}

/// Counters of a [`MemoryBackend`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Polls that found at least one request queued.
    pub batches: u64,
    /// Segments carried out (after range checks).
    pub segments: u64,
    /// The largest number of requests handed over in one poll.
    pub largest_batch: u64,
    /// Requests in the most recent non-empty batch.
    pub last_batch: u64,
}

/// An in-memory block device of fixed capacity.
pub struct MemoryBackend {
    data: RefCell<Vec<u8>>,
    block_size: u32,
    queue: RefCell<VecDeque<Request>>,
    stats: Cell<MemoryStats>,
}

impl MemoryBackend {
    /// A zero-filled device of `capacity` bytes with byte granularity (block size 1).
    pub fn new(capacity: usize) -> Self {
        Self::with_block_size(capacity, 1)
    }

    /// A zero-filled device of `capacity` bytes whose requests must be multiples of `block_size`.
    pub fn with_block_size(capacity: usize, block_size: u32) -> Self {
        Self {
            data: RefCell::new(vec![0; capacity]),
            block_size: block_size.max(1),
            queue: RefCell::new(VecDeque::with_capacity(256)),
            stats: Cell::new(MemoryStats::default()),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> MemoryStats {
        self.stats.get()
    }

    /// A copy of the device's contents, for checking.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }

    fn carry_out(&self, request: Request) {
        let cap = self.capacity();
        let bs = self.block_size;
        let mut data = self.data.borrow_mut();
        match request {
            Request::Read(pos, view) => {
                if let Some(mut view) = clip(pos, view, cap, bs, Origin::Memory) {
                    let start = pos as usize;
                    let len = view.len();
                    view.as_mut_slice().copy_from_slice(&data[start..start + len]);
                    self.count_segment();
                    view.ok();
                }
            }
            Request::Write(pos, view) => {
                if let Some(view) = clip(pos, view, cap, bs, Origin::Memory) {
                    let start = pos as usize;
                    data[start..start + view.len()].copy_from_slice(view.as_slice());
                    self.count_segment();
                    view.ok();
                }
            }
            Request::Zero(pos, len, view) => {
                data[pos as usize..(pos + len) as usize].fill(0);
                self.count_segment();
                view.ok();
            }
            Request::Flush(view) => view.ok(),
        }
    }

    fn count_segment(&self) {
        let mut s = self.stats.get();
        s.segments += 1;
        self.stats.set(s);
    }
}

impl BlockDevice for MemoryBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capacity(&self) -> u64 {
        self.data.borrow().len() as u64
    }
}

impl PacketIo<FromDevice, u64> for MemoryBackend {
    fn send_io(&self, pos: u64, view: PacketView<FromDevice>) {
        self.queue.borrow_mut().push_back(Request::Read(pos, view));
    }
}

impl PacketIo<ToDevice, u64> for MemoryBackend {
    fn send_io(&self, pos: u64, view: PacketView<ToDevice>) {
        self.queue.borrow_mut().push_back(Request::Write(pos, view));
    }
}

impl MemoryBackend {
    /// Queues a zeroing of a checked range (or completes an empty one at once).
    fn zero(
        &self,
        pos: u64,
        len: u64,
    ) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        let checked = check_range(pos, len, self.capacity(), self.block_size, Origin::Memory);
        crate::io::command(self, move |dev: &Self, view| match checked {
            Ok(true) => dev.queue.borrow_mut().push_back(Request::Zero(pos, len, view)),
            Ok(false) => view.ok(),
            Err(e) => view.fail(e),
        })
    }
}

impl BlockCommands for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard: true,
            discard_zeroes: true,
            write_zeroes: true,
            zeroes_unmap: true,
            ..Capabilities::default()
        }
    }

    fn flush(&self) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        crate::io::command(self, |dev: &Self, view| {
            dev.queue.borrow_mut().push_back(Request::Flush(view))
        })
    }

    fn discard(
        &self,
        pos: u64,
        len: u64,
    ) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        self.zero(pos, len)
    }

    fn write_zeroes(
        &self,
        pos: u64,
        len: u64,
        _zeroes: Zeroes,
    ) -> impl core::future::Future<Output = Result<(), Error>> + '_ {
        self.zero(pos, len)
    }
}

impl IoBackend for MemoryBackend {
    fn poll_backend(&self, _cx: &mut Context<'_>) -> Activity {
        // One batch: what was queued before this poll. Requests queued while we complete
        // (by code woken by a completion) wait for the next poll, as on a device.
        let n = self.queue.borrow().len();
        if n == 0 {
            return Activity::Idle;
        }
        let mut s = self.stats.get();
        s.batches += 1;
        s.last_batch = n as u64;
        s.largest_batch = s.largest_batch.max(n as u64);
        self.stats.set(s);
        for _ in 0..n {
            let Some(request) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            self.carry_out(request);
        }
        if self.queue.borrow().is_empty() {
            Activity::Idle
        } else {
            Activity::Busy
        }
    }
}
