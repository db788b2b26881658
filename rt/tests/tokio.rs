//! The tokio driver on model queues: many tasks sharing one interrupt-driven queue, a driver
//! that sleeps while I/O is in flight and while nothing is sent, a polled queue still served.

use mfio::{ReadAt, WriteAt};
use mfio_nvme::model::{CompletionMode as ModelCompletion, ModelConfig, NvmeModel};
use mfio_nvme::{CompletionMode, Controller, ControllerOptions, IoQueue};
use std::rc::Rc;
use std::time::{Duration, Instant};

fn queue(latency_us: u64, mode: CompletionMode) -> (NvmeModel, IoQueue<NvmeModel>) {
    let model = NvmeModel::new(ModelConfig {
        completion: ModelCompletion::Timed { micros: latency_us },
        ..ModelConfig::default()
    });
    let ctrl = Controller::new(model.clone(), ControllerOptions::default()).unwrap();
    let q = ctrl.io_queue_with(1, mode).unwrap();
    (model, q)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// 32 tasks, one read in flight each, on one queue: every read returns the block's data.
async fn readers(q: Rc<IoQueue<NvmeModel>>, per_task: u64) {
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let q = q.clone();
        tasks.push(tokio::task::spawn_local(async move {
            for i in 0..per_task {
                let lba = (t * per_task + i) % 4096;
                let (r, buf) = q.read_at(lba * 512, vec![0u8; 512]).await;
                assert_eq!(r, Ok(512));
                assert_eq!(&buf[..8], &lba.to_le_bytes(), "task {t}: block {lba}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn fill(model: &NvmeModel) {
    for lba in 0..4096u64 {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(&lba.to_le_bytes());
        model.write_blocks(1, lba, &b);
    }
}

#[test]
fn many_tasks_share_an_interrupt_driven_queue_and_the_thread_sleeps() {
    for mode in [CompletionMode::Interrupt, CompletionMode::ADAPTIVE] {
        // 20 ms per read: 32 tasks x 5 reads is 100 ms of waiting, none of it spent spinning.
        let (model, q) = queue(20_000, mode);
        fill(&model);
        let q = Rc::new(q);
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        let (cpu0, t0) = (mfio_conformance::cpu::thread_ticks(), Instant::now());
        local.block_on(&rt, async {
            tokio::task::spawn_local(mfio_rt::tokio::drive(q.clone()));
            readers(q.clone(), 5).await;
        });
        let (cpu, wall) = (mfio_conformance::cpu::thread_ticks() - cpu0, t0.elapsed());
        let s = q.stats();
        assert_eq!(s.completed, 160);
        assert!(s.max_pending == 0, "32 in flight fit the queue: {s:?}");
        assert!(s.wakeup.armed > 0 && s.wakeup.interrupts > 0, "{mode}: {s:?}");
        assert_eq!(s.wakeup.unannounced, 0, "{mode}: {s:?}");
        assert!(wall >= Duration::from_millis(90), "{wall:?}");
        assert!(cpu <= mfio_conformance::cpu::bound(6), "{mode}: {cpu} ticks of CPU over {wall:?}");
    }
}

#[test]
fn an_idle_driver_sleeps_until_work_is_sent() {
    let (model, q) = queue(100, CompletionMode::Interrupt);
    fill(&model);
    let q = Rc::new(q);
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        tokio::task::spawn_local(mfio_rt::tokio::drive(q.clone()));
        let cpu0 = mfio_conformance::cpu::thread_ticks();
        // Nothing sent for 300 ms: the driver is parked, the thread sleeps in the reactor.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = mfio_conformance::cpu::thread_ticks() - cpu0;
        assert!(idle <= mfio_conformance::cpu::bound(3), "{idle} ticks of CPU while idle");
        // Then a read: the queue wakes its parked driver.
        let (r, buf) = q.read_at(7 * 512, vec![0u8; 512]).await;
        assert_eq!(r, Ok(512));
        assert_eq!(&buf[..8], &7u64.to_le_bytes());
    });
}

#[test]
fn block_on_and_a_polled_queue_work_too() {
    let (model, q) = queue(50, CompletionMode::Poll);
    fill(&model);
    let (r, buf) = mfio_rt::tokio::block_on(&q, q.read_at(3 * 512, vec![0u8; 512]));
    assert_eq!((r, &buf[..8]), (Ok(512), &3u64.to_le_bytes()[..]));
    let (model, q) = queue(50, CompletionMode::ADAPTIVE);
    fill(&model);
    let r = mfio_rt::tokio::block_on(&q, async {
        let (w, _) = q.write_at(0, vec![0xabu8; 4096]).await;
        let (r, buf) = q.read_at(0, vec![0u8; 4096]).await;
        (w, r, buf.iter().all(|&b| b == 0xab))
    });
    assert_eq!(r, (Ok(4096), Ok(4096), true));
}

#[test]
fn a_lost_interrupt_does_not_hang_a_tokio_driver() {
    let (model, q) = queue(1_000, CompletionMode::Interrupt);
    fill(&model);
    model.lose_interrupts(true);
    let q = Rc::new(q);
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        tokio::task::spawn_local(mfio_rt::tokio::drive(q.clone()));
        readers(q.clone(), 5).await;
    });
    assert!(q.stats().wakeup.fell_back, "{:?}", q.stats());
}

#[test]
fn a_file_backend_sleeps_on_its_io_uring_and_wakes_when_work_is_sent() {
    file_backend_sleeps(true);
}

#[test]
fn a_file_backend_without_io_uring_sleeps_too() {
    file_backend_sleeps(false);
}

fn file_backend_sleeps(io_uring: bool) {
    use mfio::backends::{FileBackend, FileOptions};
    let p = std::env::temp_dir().join(format!("mfio-rt-file-{}-{io_uring}", std::process::id()));
    std::fs::write(&p, vec![5u8; 1 << 20]).unwrap();
    let f = FileBackend::open_with(&p, &FileOptions { io_uring, ..Default::default() }).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(f.uses_io_uring(), io_uring, "this test needs io_uring");
    let f = Rc::new(f);
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        tokio::task::spawn_local(mfio_rt::tokio::drive(f.clone()));
        let cpu0 = mfio_conformance::cpu::thread_ticks();
        // Idle: the driver is parked until a send wakes it (it used to be woken by nothing,
        // and a read sent then waited for ever).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = mfio_conformance::cpu::thread_ticks() - cpu0;
        assert!(idle <= mfio_conformance::cpu::bound(3), "{idle} ticks of CPU while idle");
        let read = tokio::time::timeout(Duration::from_secs(5), f.read_at(4096, vec![0u8; 4096]));
        let (r, buf) = read.await.expect("a read on a parked file backend completed");
        assert_eq!(r, Ok(4096));
        assert!(buf.iter().all(|&b| b == 5));
        // Many tasks at once, each answered.
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                let f = f.clone();
                tokio::task::spawn_local(async move {
                    f.write_all(i * 4096, vec![i as u8; 4096]).await.0
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
    });
}
