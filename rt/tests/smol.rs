//! The smol driver on a model queue: tasks on a `LocalExecutor` sharing an interrupt-driven
//! queue, the thread asleep in the reactor while the reads are in flight.

use mfio::ReadAt;
use mfio_nvme::model::{CompletionMode as ModelCompletion, ModelConfig, NvmeModel};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[test]
fn tasks_on_a_local_executor_share_an_interrupt_driven_queue() {
    let model = NvmeModel::new(ModelConfig {
        completion: ModelCompletion::Timed { micros: 20_000 },
        ..ModelConfig::default()
    });
    for lba in 0..64u64 {
        model.write_blocks(1, lba, &[lba as u8; 512]);
    }
    let ctrl = Controller::new(model, ControllerOptions::default()).unwrap();
    let q = Rc::new(ctrl.io_queue_with(1, CompletionMode::Interrupt).unwrap());
    let ex = smol::LocalExecutor::new();
    let (cpu0, t0) = (mfio_conformance::cpu::thread_ticks(), Instant::now());
    smol::block_on(ex.run(async {
        ex.spawn(mfio_rt::smol::drive(q.clone())).detach();
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let q = q.clone();
                ex.spawn(async move {
                    for i in 0..4u64 {
                        let lba = (t * 4 + i) % 64;
                        let (r, buf) = q.read_at(lba * 512, vec![0u8; 512]).await;
                        assert_eq!(r, Ok(512));
                        assert!(buf.iter().all(|&b| b == lba as u8), "block {lba}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    }));
    let (cpu, wall) = (mfio_conformance::cpu::thread_ticks() - cpu0, t0.elapsed());
    let s = q.stats();
    assert_eq!(s.completed, 64);
    assert!(s.wakeup.armed > 0 && s.wakeup.interrupts > 0, "{s:?}");
    assert!(wall >= Duration::from_millis(70), "{wall:?}");
    assert!(cpu <= mfio_conformance::cpu::bound(5), "{cpu} ticks of CPU over {wall:?}");
    let (r, _) = mfio_rt::smol::block_on(&*q, q.read_at(0, vec![0u8; 512]));
    assert_eq!(r, Ok(512));
}
