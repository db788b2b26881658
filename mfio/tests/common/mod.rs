//! Test backends shared by the integration tests.
#![allow(dead_code)]

use mfio::{Activity, FromDevice, IoBackend, PacketIo, PacketView, ToDevice};
use std::cell::{Cell, RefCell};
use std::task::Context;

/// A backend that keeps every view until the test completes it by hand.
#[derive(Default)]
pub struct Held {
    pub reads: RefCell<Vec<(u64, PacketView<FromDevice>)>>,
    pub writes: RefCell<Vec<(u64, PacketView<ToDevice>)>>,
    pub polls: Cell<usize>,
}

impl PacketIo<FromDevice, u64> for Held {
    fn send_io(&self, pos: u64, view: PacketView<FromDevice>) {
        self.reads.borrow_mut().push((pos, view));
    }
}

impl PacketIo<ToDevice, u64> for Held {
    fn send_io(&self, pos: u64, view: PacketView<ToDevice>) {
        self.writes.borrow_mut().push((pos, view));
    }
}

impl IoBackend for Held {
    fn poll_backend(&self, _cx: &mut Context<'_>) -> Activity {
        self.polls.set(self.polls.get() + 1);
        if self.reads.borrow().is_empty() && self.writes.borrow().is_empty() {
            Activity::Idle
        } else {
            Activity::Busy
        }
    }
}

/// Wraps a backend and completes nothing until it has been polled `delay` times per request:
/// I/O that takes a while, as on a device.
pub struct Slow<B> {
    pub inner: B,
    pub delay: usize,
    pending_reads: RefCell<Vec<(usize, u64, PacketView<FromDevice>)>>,
    pending_writes: RefCell<Vec<(usize, u64, PacketView<ToDevice>)>>,
}

impl<B> Slow<B> {
    pub fn new(inner: B, delay: usize) -> Self {
        Self { inner, delay, pending_reads: Default::default(), pending_writes: Default::default() }
    }
}

impl<B: PacketIo<FromDevice, u64>> PacketIo<FromDevice, u64> for Slow<B> {
    fn send_io(&self, pos: u64, view: PacketView<FromDevice>) {
        self.pending_reads.borrow_mut().push((self.delay, pos, view));
    }
}

impl<B: PacketIo<ToDevice, u64>> PacketIo<ToDevice, u64> for Slow<B> {
    fn send_io(&self, pos: u64, view: PacketView<ToDevice>) {
        self.pending_writes.borrow_mut().push((self.delay, pos, view));
    }
}

impl<B> IoBackend for Slow<B>
where
    B: IoBackend + PacketIo<FromDevice, u64> + PacketIo<ToDevice, u64>,
{
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity {
        let reads: Vec<_> = self.pending_reads.borrow_mut().drain(..).collect();
        for (left, pos, v) in reads {
            if left == 0 {
                self.inner.send_io(pos, v);
            } else {
                self.pending_reads.borrow_mut().push((left - 1, pos, v));
            }
        }
        let writes: Vec<_> = self.pending_writes.borrow_mut().drain(..).collect();
        for (left, pos, v) in writes {
            if left == 0 {
                self.inner.send_io(pos, v);
            } else {
                self.pending_writes.borrow_mut().push((left - 1, pos, v));
            }
        }
        let inner = self.inner.poll_backend(cx);
        if self.pending_reads.borrow().is_empty() && self.pending_writes.borrow().is_empty() {
            inner
        } else {
            Activity::Busy
        }
    }
}

/// Deterministic test data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
