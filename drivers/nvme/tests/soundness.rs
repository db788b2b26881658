//! Soundness of the NVMe driver's memory handoffs, in safe code (run under valgrind in CI):
//! a sink that panics inside the driver's completion loop, and a reset of a controller that
//! will not stop, which must not give memory back while the device can still reach it.

use mfio::{block_on, Error, ErrorKind, FromDevice, IoBackend, Packet, ReadAt, WriteAt};
use mfio_nvme::model::{Injection, ModelConfig, NamespaceConfig, NvmeModel, Target, ViolationKind};
use mfio_nvme::{Controller, ControllerOptions, IoQueue, NvmeError};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

fn setup(cfg: ModelConfig) -> (NvmeModel, Arc<Controller<NvmeModel>>, IoQueue<NvmeModel>) {
    let model = NvmeModel::new(cfg);
    let ctrl = Controller::new(model.clone(), ControllerOptions::default()).expect("bring-up");
    let q = ctrl.io_queue(1).expect("an I/O queue");
    (model, ctrl, q)
}

fn config() -> ModelConfig {
    ModelConfig { namespaces: vec![NamespaceConfig::new(2048, 4096)], ..ModelConfig::default() }
}

fn poll_backend(q: &IoQueue<NvmeModel>) {
    q.poll_backend(&mut Context::from_waker(Waker::noop()));
}

#[test]
fn a_sink_that_panics_in_the_completion_loop_completes_its_segment_and_the_queue_goes_on() {
    let (model, _ctrl, q) = setup(config());
    q.write_all_blocking(0, &[9u8; 8192]).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let sink = Arc::new(move |_: usize, _: usize, _: Result<(), Error>| {
        c.fetch_add(1, Ordering::SeqCst);
        panic!("sink panics inside IoQueue::poll_backend");
    });
    let mut pkt = Box::pin(Packet::<FromDevice, _>::new(vec![0u8; 8192]).with_sink(sink));
    let r = catch_unwind(AssertUnwindSafe(|| block_on(&q, pkt.as_mut().io(&q, 0))));
    assert_eq!(
        r.unwrap_err().downcast_ref::<&str>(),
        Some(&"sink panics inside IoQueue::poll_backend")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(pkt.is_idle());
    assert_eq!(pkt.buf().unwrap(), &vec![9u8; 8192], "the device's data landed, in live memory");
    assert_eq!(q.in_flight(), 0);
    // The queue is intact: more I/O works, and the model saw nothing wrong.
    let mut back = vec![0u8; 4096];
    q.read_all_blocking(4096, &mut back).unwrap();
    assert_eq!(back, vec![9u8; 4096]);
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn a_reset_gives_memory_back_only_once_the_device_cannot_reach_it() {
    let cfg = ModelConfig { panic_on_violation: false, ..config() };
    let (model, ctrl, q) = setup(cfg);
    model.inject(Injection::Hold(Target::io()));
    let mut fut = Box::pin(q.read_at(0, vec![0u8; 4096]));
    assert!(fut.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    poll_backend(&q);
    assert_eq!(model.pending_commands(), 1, "the model holds the read (and may still DMA)");

    // A controller that does not stop: CC.EN 1 -> 0 is ignored.
    model.set_stuck_enabled(true);
    let r = ctrl.reset();
    assert!(matches!(r, Err(NvmeError::ReadyTimeout { .. })), "{r:?}");
    assert!(!model.bus_master(), "the driver turned bus mastering off before failing anything");

    // Now the queue fails the read and gives its buffer back...
    let (res, buf) = block_on(&q, fut.as_mut());
    assert_eq!(res.unwrap_err().error.kind(), ErrorKind::Fatal);
    assert!(!model.bus_master());
    drop(buf);
    drop(fut);
    // ... and the command the device still held cannot land in it.
    assert_eq!(model.release_held(), 1);
    model.set_stuck_enabled(false);
    let v = model.violations();
    assert!(v.iter().any(|v| v.kind == ViolationKind::BusMaster), "{v:?}");
    assert!(!v.iter().any(|v| v.kind == ViolationKind::Dma), "{v:?}");

    // A reset of a controller that does stop brings it back.
    ctrl.reset().unwrap();
    assert!(model.bus_master());
    drop(q);
    let q = ctrl.io_queue(1).unwrap();
    q.write_all_blocking(0, &[1u8; 4096]).unwrap();
}
