//! Packets and views: splitting, completion, partial success, sinks, and soundness of drop.

// Tests of mfio's unsafe contracts (buffers that implement mfio's unsafe buffer traits): unsafe by design.
#![allow(unsafe_code)]
mod common;

use common::{pattern, Held, Slow};
use mfio::backends::MemoryBackend;
use mfio::{
    block_on, Error, ErrorKind, FromDevice, Origin, Packet, PartialError, ReadAt, ToDevice,
    Transfer, WriteAt,
};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn blocking_round_trip_on_memory() {
    let dev = MemoryBackend::new(64 << 10);
    let data = pattern(1, 10_000);
    assert_eq!(dev.write_at_blocking(123, &data), Ok(10_000));
    let mut back = vec![0u8; 10_000];
    assert_eq!(dev.read_at_blocking(123, &mut back), Ok(10_000));
    assert_eq!(back, data);
    assert_eq!(&dev.snapshot()[123..10_123], &data[..]);
}

#[test]
fn async_round_trip_gives_the_buffer_back() {
    let dev = MemoryBackend::new(1 << 16);
    let (res, buf) = block_on(&dev, dev.write_all(512, pattern(2, 4096)));
    assert_eq!(res, Ok(()));
    assert_eq!(buf, pattern(2, 4096));
    let (res, buf) = block_on(&dev, dev.read_at(512, vec![0u8; 4096]));
    assert_eq!(res, Ok(4096));
    assert_eq!(buf, pattern(2, 4096));
}

#[test]
fn read_past_the_end_is_short_for_read_at_and_an_error_for_read_all() {
    let dev = MemoryBackend::new(8192);
    dev.write_all_blocking(0, &pattern(3, 8192)).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(dev.read_at_blocking(6144, &mut buf), Ok(2048));
    assert_eq!(&buf[..2048], &pattern(3, 8192)[6144..]);
    let err = dev.read_all_blocking(6144, &mut buf).unwrap_err();
    assert_eq!(err.done, 2048);
    assert_eq!(err.error.kind(), ErrorKind::OutOfRange);
    // Wholly past the end.
    let err = dev.read_all_blocking(8192, &mut buf).unwrap_err();
    assert_eq!(
        err,
        PartialError { done: 0, error: Error::new(ErrorKind::OutOfRange, Origin::Memory) }
    );
    // Offsets that overflow u64 are out of range, not a panic.
    assert_eq!(dev.read_all_blocking(u64::MAX - 10, &mut buf).unwrap_err().done, 0);
}

#[test]
fn misaligned_requests_fail_whole_on_a_block_device() {
    let dev = MemoryBackend::with_block_size(1 << 16, 512);
    let mut buf = vec![0u8; 512];
    let e = dev.read_all_blocking(100, &mut buf).unwrap_err();
    assert_eq!((e.done, e.error.kind()), (0, ErrorKind::Misaligned));
    let e = dev.write_all_blocking(512, &buf[..100]).unwrap_err();
    assert_eq!((e.done, e.error.kind()), (0, ErrorKind::Misaligned));
    assert_eq!(dev.read_all_blocking(1024, &mut buf), Ok(()));
}

#[test]
fn segments_complete_out_of_order_and_the_first_error_wins() {
    let held = Held::default();
    let mut pkt = pin!(Packet::<FromDevice, _>::new(vec![0u8; 400]));
    pkt.as_mut().submit(&held, 1000).unwrap();
    let (pos, v) = held.reads.borrow_mut().pop().unwrap();
    assert_eq!((pos, v.offset(), v.len()), (1000, 0, 400));
    let (a, rest) = v.split_at(100);
    let (b, rest) = rest.split_at(100);
    let (c, d) = rest.split_at(100);
    assert_eq!((c.offset(), c.len(), d.offset(), d.len()), (200, 100, 300, 100));
    // Complete in reverse; an error late in the packet, then one earlier.
    d.fail(Error::nvme(0x2, 0x81));
    assert!(pkt.poll_done(&mut Context::from_waker(Waker::noop())).is_pending());
    c.ok();
    b.fail(Error::new(ErrorKind::Timeout, Origin::Nvme));
    assert!(!pkt.is_idle());
    a.ok();
    assert!(pkt.is_idle());
    let t = block_on(&held, pkt.as_ref().wait());
    assert_eq!(
        t,
        Transfer { len: 400, done: 100, error: Some(Error::new(ErrorKind::Timeout, Origin::Nvme)) }
    );
}

#[test]
fn a_dropped_view_is_an_error_never_a_success() {
    let held = Held::default();
    let mut pkt = pin!(Packet::<ToDevice, _>::new(vec![7u8; 64]));
    pkt.as_mut().submit(&held, 0).unwrap();
    let (_, v) = held.writes.borrow_mut().pop().unwrap();
    let (a, b) = v.split_at(32);
    a.ok();
    drop(b);
    let t = block_on(&held, pkt.as_ref().wait());
    assert_eq!(t.done, 32);
    assert_eq!(t.error, Some(Error::DROPPED));
}

#[test]
fn a_packet_can_be_reused_and_refuses_a_second_submit_while_busy() {
    let held = Held::default();
    let mut pkt = pin!(Packet::<FromDevice, _>::new([0u8; 16]));
    pkt.as_mut().submit(&held, 0).unwrap();
    let busy = pkt.as_mut().submit(&held, 0).unwrap_err();
    assert_eq!(busy.kind(), ErrorKind::Busy);
    assert!(pkt.buf().is_none(), "no access to the buffer while in flight");
    let (_, mut v) = held.reads.borrow_mut().pop().unwrap();
    v.fill_from(&[9u8; 16]);
    v.ok();
    assert_eq!(pkt.buf(), Some(&[9u8; 16]));
    // Again, now failing: the old error does not leak into the new outcome and vice versa.
    pkt.as_mut().submit(&held, 0).unwrap();
    held.reads.borrow_mut().pop().unwrap().1.fail(Error::new(ErrorKind::Device, Origin::Model));
    assert_eq!(block_on(&held, pkt.as_ref().wait()).done, 0);
    pkt.as_mut().submit(&held, 0).unwrap();
    held.reads.borrow_mut().pop().unwrap().1.ok();
    assert!(block_on(&held, pkt.as_ref().wait()).is_complete());
}

#[test]
fn a_pinned_stack_packet_round_trips() {
    let dev = MemoryBackend::new(4096);
    let mut w = pin!(Packet::<ToDevice, _>::new(*b"stack packet"));
    let t = block_on(&dev, w.as_mut().io(&dev, 100));
    assert!(t.is_complete());
    let mut r = pin!(Packet::<FromDevice, _>::new([0u8; 12]));
    let t = block_on(&dev, r.as_mut().io(&dev, 100));
    assert_eq!(t.done, 12);
    assert_eq!(r.buf().unwrap(), b"stack packet");
}

#[test]
fn the_sink_sees_every_segment_as_it_completes() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let sink = Arc::new(move |off: usize, len: usize, r: Result<(), Error>| {
        log.lock().unwrap().push((off, len, r.is_ok()))
    });
    let stripe =
        mfio::backends::Stripe::new(vec![MemoryBackend::new(500), MemoryBackend::new(500)], 100)
            .unwrap();
    let mut pkt = pin!(Packet::<ToDevice, _>::new(vec![1u8; 350]).with_sink(sink));
    let t = block_on(&stripe, pkt.as_mut().io(&stripe, 50));
    assert!(t.is_complete());
    let mut segs = seen.lock().unwrap().clone();
    segs.sort();
    assert_eq!(segs, vec![(0, 50, true), (50, 100, true), (150, 100, true), (250, 100, true)]);
}

#[test]
fn io_issued_in_one_round_reaches_the_backend_as_one_batch() {
    let dev = MemoryBackend::new(1 << 20);
    let futs: Vec<_> = (0..16u64).map(|i| dev.write_all(i * 4096, pattern(i, 4096))).collect();
    let results = block_on(&dev, futures::future::join_all(futs));
    assert!(results.iter().all(|(r, _)| r.is_ok()));
    let s = dev.stats();
    assert_eq!((s.batches, s.last_batch, s.largest_batch), (1, 16, 16));
    // And a sequential loop is one request per batch.
    for i in 0..4u64 {
        dev.read_all_blocking(i * 4096, &mut [0u8; 4096]).unwrap();
    }
    assert_eq!((dev.stats().batches, dev.stats().last_batch), (5, 1));
}

#[test]
fn striping_fragments_a_request_across_devices() {
    let devs = vec![MemoryBackend::new(4096), MemoryBackend::new(4096), MemoryBackend::new(4096)];
    let stripe = mfio::backends::Stripe::new(devs, 512).unwrap();
    assert_eq!(mfio::BlockDevice::capacity(&stripe), 3 * 4096);
    let data = pattern(9, 5000);
    stripe.write_all_blocking(300, &data).unwrap();
    let mut back = vec![0u8; 5000];
    stripe.read_all_blocking(300, &mut back).unwrap();
    assert_eq!(back, data);
    // Byte 300 is in unit 0 (device 0), byte 512 in unit 1 (device 1 at 0), 1536 on device 0 at 512.
    assert_eq!(stripe.devices()[0].snapshot()[300], data[0]);
    assert_eq!(stripe.devices()[1].snapshot()[0], data[212]);
    assert_eq!(stripe.devices()[0].snapshot()[512], data[1236]);
    // The tail past the end fails on its own; the rest lands.
    let e = stripe.write_all_blocking(3 * 4096 - 100, &[5u8; 300]).unwrap_err();
    assert_eq!((e.done, e.error.kind()), (100, ErrorKind::OutOfRange));
}

/// A backend that bounces every segment through a buffer of its own at a non-zero offset,
/// after splitting it at odd places: the copies must use each view's own offset and memory.
#[test]
fn split_write_through_a_bounce_buffer_at_nonzero_offsets() {
    struct Bouncer {
        store: std::cell::RefCell<Vec<u8>>,
    }
    impl mfio::PacketIo<ToDevice, u64> for Bouncer {
        fn send_io(&self, pos: u64, view: mfio::PacketView<ToDevice>) {
            let base = view.offset();
            let mut rest = Some(view);
            for cut in [7usize, 100, 333] {
                let v = rest.take().unwrap();
                if cut >= v.len() {
                    rest = Some(v);
                    break;
                }
                let (a, b) = v.split_at(cut);
                self.bounce(pos, base, a);
                rest = Some(b);
            }
            if let Some(v) = rest {
                self.bounce(pos, base, v);
            }
        }
    }
    impl Bouncer {
        fn bounce(&self, pos: u64, base: usize, v: mfio::PacketView<ToDevice>) {
            let mut bounce = vec![0u8; 64 + v.len()];
            bounce[64..].copy_from_slice(v.as_slice());
            let at = pos as usize + (v.offset() - base);
            self.store.borrow_mut()[at..at + v.len()].copy_from_slice(&bounce[64..]);
            v.ok();
        }
    }
    impl mfio::IoBackend for Bouncer {
        fn poll_backend(&self, _: &mut Context<'_>) -> mfio::Activity {
            mfio::Activity::Idle
        }
    }
    let dev = Bouncer { store: std::cell::RefCell::new(vec![0; 4096]) };
    let data = pattern(4, 1000);
    // Pre-split the packet too, so the views the backend sees start at non-zero offsets.
    let mut pkt = pin!(Packet::<ToDevice, _>::new(data.clone()));
    let view = pkt.as_mut().start(Some(&dev)).unwrap();
    let (head, tail) = view.split_at(513);
    mfio::PacketIo::send_io(&dev, 1000, head);
    mfio::PacketIo::send_io(&dev, 1513, tail);
    assert!(block_on(&dev, pkt.as_ref().wait()).is_complete());
    assert_eq!(&dev.store.borrow()[1000..2000], &data[..]);
}

#[test]
fn dropping_a_future_mid_io_waits_for_the_device() {
    let dev = Slow::new(MemoryBackend::new(1 << 16), 50);
    dev.inner.write_all_blocking(0, &pattern(5, 4096)).unwrap();
    {
        let mut fut = pin!(dev.read_at(0, vec![0u8; 4096]));
        assert!(poll_once(fut.as_mut()).is_pending());
        mfio::IoBackend::poll_backend(&dev, &mut Context::from_waker(Waker::noop()));
        // Dropped here with the read in flight: the drop drives `dev` until it completes.
    }
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(mfio::IoBackend::poll_backend(&dev, &mut cx), mfio::Activity::Idle);
    assert_eq!(dev.inner.stats().segments, 2, "the dropped read was carried out, not lost");
}

#[test]
fn dropping_a_stack_packet_mid_io_waits() {
    let dev = Slow::new(MemoryBackend::new(4096), 20);
    {
        let mut pkt = pin!(Packet::<FromDevice, _>::new([0u8; 256]));
        pkt.as_mut().submit(&dev, 0).unwrap();
        assert!(!pkt.is_idle());
        assert_eq!(dev.inner.stats().segments, 0);
        // The packet goes out of scope in flight; its drop drives `dev` to completion.
    }
    assert_eq!(dev.inner.stats().segments, 1);
}

#[test]
fn a_forgotten_boxed_future_leaks_its_buffer_instead_of_freeing_it() {
    let dev = Slow::new(MemoryBackend::new(1 << 16), 5);
    let mut fut = Box::pin(dev.read_at(0, vec![0u8; 8192]));
    assert!(poll_once(fut.as_mut()).is_pending());
    std::mem::forget(fut);
    // The device completes into the leaked (still valid) buffer: valgrind sees no invalid write.
    let mut cx = Context::from_waker(Waker::noop());
    while mfio::IoBackend::poll_backend(&dev, &mut cx) == mfio::Activity::Busy {}
    assert_eq!(dev.inner.stats().segments, 1);
}

#[test]
fn a_panic_mid_io_unwinds_only_after_the_device_is_done() {
    let dev = Slow::new(MemoryBackend::new(1 << 16), 30);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        block_on(&dev, async {
            let mut fut = pin!(dev.read_at(0, vec![0u8; 4096]));
            assert!(poll_once(fut.as_mut()).is_pending());
            panic!("engine bug mid-I/O");
        })
    }));
    assert!(r.is_err());
    assert_eq!(dev.inner.stats().segments, 1, "the read completed before unwinding freed it");
}

#[test]
fn views_completed_on_another_thread() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel::<mfio::PacketView<FromDevice>>();
    let worker = std::thread::spawn(move || {
        for mut v in rx {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let off = v.offset() as u8;
            v.as_mut_slice().fill(off);
            v.ok();
        }
    });
    let held = Held::default();
    {
        let mut pkt = pin!(Packet::<FromDevice, _>::new(vec![0u8; 300]));
        let v = pkt.as_mut().start(None).unwrap();
        let (a, rest) = v.split_at(100);
        let (b, c) = rest.split_at(100);
        tx.send(c).unwrap();
        tx.send(a).unwrap();
        tx.send(b).unwrap();
        let t = block_on(&held, pkt.as_ref().wait());
        assert!(t.is_complete());
        let buf = pkt.buf().unwrap();
        assert!(buf[..100].iter().all(|&x| x == 0));
        assert!(buf[100..200].iter().all(|&x| x == 100));
        assert!(buf[200..].iter().all(|&x| x == 200));
        // And one dropped in flight on this thread: the drop spins until the worker is done.
        let mut pkt2 = pin!(Packet::<FromDevice, _>::new(vec![0u8; 64]));
        tx.send(pkt2.as_mut().start(None).unwrap()).unwrap();
    }
    drop(tx);
    worker.join().unwrap();
}

/// The owner polls with a real waker and parks; a worker thread completes the view at the same
/// moment, round after round. A lost wake-up (the completion skipping the wake while the owner
/// registers) leaves the owner parked with its packet done: the timeout fails the test.
#[test]
fn a_parked_owner_is_always_woken_by_a_completion_on_another_thread() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};
    struct Unpark(std::thread::Thread, AtomicUsize);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.unpark();
        }
    }
    let unpark = Arc::new(Unpark(std::thread::current(), AtomicUsize::new(0)));
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let (tx, rx) = mpsc::channel::<mfio::PacketView<FromDevice>>();
    let worker = std::thread::spawn(move || {
        for v in rx {
            v.ok();
        }
    });
    let mut parked = 0;
    for round in 0..20_000 {
        let mut pkt = pin!(Packet::<FromDevice, _>::new([0u8; 8]));
        tx.send(pkt.as_mut().start(None).unwrap()).unwrap();
        let mut wait = pin!(pkt.as_ref().wait());
        loop {
            if let Poll::Ready(t) = wait.as_mut().poll(&mut cx) {
                assert!(t.is_complete());
                break;
            }
            parked += 1;
            let t0 = Instant::now();
            std::thread::park_timeout(Duration::from_secs(10));
            assert!(t0.elapsed() < Duration::from_secs(10), "round {round}: never woken");
        }
    }
    drop(tx);
    worker.join().unwrap();
    assert!(parked > 0, "the owner never had to wait: the test raced nothing");
    assert!(unpark.1.load(Ordering::Relaxed) > 0, "no completion ever woke the owner");
}

#[test]
fn errors_convert_to_io_errors_with_meaningful_kinds() {
    use std::io;
    let e: io::Error = Error::new(ErrorKind::OutOfRange, Origin::Nvme).into();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    let e: io::Error = Error::new(ErrorKind::Misaligned, Origin::Virtio).into();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e: io::Error = Error::os(Origin::File, libc_enospc()).into();
    assert_eq!(e.raw_os_error(), None);
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let e: io::Error = PartialError { done: 4096, error: Error::nvme(2, 0x81) }.into();
    let msg = e.to_string();
    assert!(msg.contains("SCT 0x2") && msg.contains("SC 0x81") && msg.contains("4096"), "{msg}");
    assert_eq!(std::mem::size_of::<Error>(), 8);
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn views_are_two_words_and_packets_at_most_4_gib() {
    // Two words: passed and returned in registers on the I/O path.
    assert_eq!(std::mem::size_of::<mfio::PacketView<FromDevice>>(), 16);
    assert_eq!(std::mem::size_of::<Option<mfio::PacketView<ToDevice>>>(), 16);

    /// Claims one byte more than a view can describe; never touched.
    struct Huge;
    // SAFETY: the pointer is never dereferenced: `start` refuses the buffer before any view
    // exists, and nothing else reads it.
    unsafe impl mfio::IoBuf for Huge {
        fn io_ptr(&self) -> *const u8 {
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        }
        fn io_len(&self) -> usize {
            u32::MAX as usize + 1
        }
    }
    // SAFETY: as above.
    unsafe impl mfio::IoBufMut for Huge {
        fn io_mut_ptr(&mut self) -> *mut u8 {
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        }
    }
    let p = pin!(Packet::<FromDevice, Huge>::new(Huge));
    let e = p.start(None).expect_err("over 4 GiB");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
}
