//! Hot removal on the model: a controller removed under QD32 from two threads, in every
//! completion mode. Every future resolves, what was in flight fails with `Gone`, later I/O
//! fails with `Gone` at once, the model sees no DMA after the removal, and everything drops
//! cleanly.

use mfio_conformance::removal::{fails_gone_at_once, read_until_gone};
use mfio_nvme::model::{CompletionMode as ModelCompletion, ModelConfig, NvmeModel};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions, NvmeError};
use std::time::Duration;

fn remove_under_load(mode: CompletionMode) {
    let cfg = ModelConfig {
        completion: ModelCompletion::Timed { micros: 300 },
        ..ModelConfig::default()
    };
    let model = NvmeModel::new(cfg);
    let opts = ControllerOptions { io_queues: 2, ..ControllerOptions::default() };
    let ctrl = Controller::new(model.clone(), opts).expect("bring-up");
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let ctrl = ctrl.clone();
            std::thread::spawn(move || {
                let q = ctrl.io_queue_with(1, mode).expect("queue");
                let tally = read_until_gone(&q, 32, 4096, 8 << 20, Duration::from_secs(20), t);
                let after = fails_gone_at_once(&q, Duration::from_millis(50));
                (tally, after)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let before = model.stats().io_commands.iter().sum::<u64>();
    assert!(before > 0, "I/O was running when the device went");
    model.remove();
    for t in threads {
        let (tally, after) = t.join().expect("a reading thread panicked");
        assert_eq!(tally.unfinished, 0, "{mode:?}: a worker never saw the removal: {tally:?}");
        assert_eq!(tally.gone, 32, "{mode:?}: every worker ended with Gone: {tally:?}");
        assert!(tally.other.is_empty(), "{mode:?}: only Gone, no other error: {tally:?}");
        assert!(tally.ok > 0, "{mode:?}: reads completed before: {tally:?}");
        assert!(tally.drain < Duration::from_secs(2), "{mode:?}: noticed fast: {tally:?}");
        after.unwrap_or_else(|e| panic!("{mode:?}: {e}"));
    }
    assert!(matches!(ctrl.io_queue(1), Err(NvmeError::Gone)), "no new queue on a removed device");
    assert!(matches!(ctrl.reset(), Err(NvmeError::Gone)), "a reset says Gone, not a timeout");
    assert!(!ctrl.is_enabled());
    assert!(model.violations().is_empty(), "{mode:?}: {:?}", model.violations());
    assert_eq!(model.stats().dma_faults, 0);
    drop(ctrl); // an orderly drop: no abort for memory the device might still write
}

#[test]
fn a_removed_controller_fails_polled_io_with_gone() {
    remove_under_load(CompletionMode::Poll);
}

#[test]
fn a_removed_controller_wakes_and_fails_interrupt_driven_io() {
    remove_under_load(CompletionMode::Interrupt);
}

#[test]
fn a_removed_controller_fails_adaptive_io() {
    remove_under_load(CompletionMode::Adaptive { spin: Duration::from_micros(50) });
}

#[test]
fn an_idle_queue_fails_its_first_io_after_a_removal_at_once() {
    let model = NvmeModel::new(ModelConfig::default());
    let ctrl = Controller::new(model.clone(), ControllerOptions::default()).expect("bring-up");
    let q = ctrl.io_queue(1).expect("queue");
    mfio_conformance::round_trip(&q, 0, 4096).expect("works before");
    model.remove();
    fails_gone_at_once(&q, Duration::from_millis(50)).expect("Gone at once");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}
