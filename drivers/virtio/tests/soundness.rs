//! Soundness of the virtio-blk driver's completion path, in safe code (run under valgrind in
//! CI): a sink that panics inside the driver's completion loop, on both ring layouts.

use mfio::{block_on, Error, FromDevice, Packet, ReadAt, WriteAt};
use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
use mfio_virtio::{Options, RingLayout, VirtioBlk};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[test]
fn a_sink_that_panics_in_the_completion_loop_completes_its_segment_and_the_queue_goes_on() {
    for ring in [RingLayout::Split, RingLayout::Packed] {
        let m = VirtioBlkModel::new(ModelOptions::default());
        let dev = VirtioBlk::new(m.clone(), &Options { ring: Some(ring), ..Options::default() })
            .expect("bring-up");
        let q = dev.queue(0).unwrap();
        q.write_all_blocking(0, &[5u8; 8192]).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let sink = Arc::new(move |_: usize, _: usize, _: Result<(), Error>| {
            c.fetch_add(1, Ordering::SeqCst);
            panic!("sink panics inside BlkQueue::poll_backend");
        });
        let mut pkt = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 8192]).with_sink(sink));
        let r = catch_unwind(AssertUnwindSafe(|| block_on(&q, pkt.as_mut().io(&q, 0))));
        assert_eq!(
            r.unwrap_err().downcast_ref::<&str>(),
            Some(&"sink panics inside BlkQueue::poll_backend"),
            "{ring:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(pkt.is_idle());
        assert_eq!(pkt.buf().unwrap(), &vec![5u8; 8192], "the data landed in live memory");
        assert_eq!(q.in_flight(), 0);
        let (r, back) = block_on(&q, q.read_at(4096, vec![0u8; 4096]));
        assert_eq!(r, Ok(4096));
        assert_eq!(back, vec![5u8; 4096]);
        assert!(m.violations().is_empty(), "{ring:?}: {:?}", m.violations());
    }
}
