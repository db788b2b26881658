//! The multi-threaded engine example, run: two worker threads, one queue each, 32 clients on
//! a multi-threaded runtime.

#[path = "../examples/engine.rs"]
mod engine;

use mfio_nvme::{Controller, ControllerOptions};

#[test]
fn the_engine_serves_clients_from_one_queue_per_worker_thread() {
    let model = engine::model();
    let ctrl = Controller::new(model.clone(), ControllerOptions::default()).unwrap();
    let senders = engine::start(&ctrl, 2).unwrap();
    let good = engine::run_clients(&senders, 32, 20, |b, d| d.iter().all(|&x| x == b as u8));
    assert_eq!(good, 32 * 20, "every read came back with its block");
    drop(senders);
    // Each read reached the device once, split between both workers' queues (1 and 2).
    assert_eq!(model.io_commands(mfio_nvme::spec::io::READ), 32 * 20);
    let (q1, q2) = (model.sq_doorbells(1), model.sq_doorbells(2));
    assert!(q1 > 0 && q2 > 0, "both queues took I/O: {q1} and {q2} doorbells");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}
