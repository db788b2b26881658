//! The NVMe driver against the controller model in null mode (the model validates every
//! command and PRP but moves no data): 4 KiB random reads on one queue at QD 1, 32 and 128.
//! IOPS, ns and heap allocations per I/O (a counting allocator), doorbells per I/O.
//!
//! Run: `cargo bench -p mfio-nvme --bench null` (`-- --quick` for a short run). The figures
//! include the model's own work (a lock and IOVA-checked reads per command), so they bound the
//! driver's cost from above.

use mfio::{FromDevice, Window};
use mfio_conformance::load::{self, LoadSpec, Pattern};
use mfio_nvme::model::{ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::PciDevice;

#[global_allocator]
static GLOBAL: mfio::alloc_count::CountingAlloc = mfio::alloc_count::CountingAlloc;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ios: u64 = if quick { 20_000 } else { 400_000 };
    let cfg = ModelConfig {
        namespaces: vec![NamespaceConfig::new((1u64 << 30) / 512, 512)],
        null_io: true,
        ..ModelConfig::default()
    };
    println!("| doorbells | QD | IOPS | ns / IO | allocs / IO | SQ doorbells / IO | bounced |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    // Registers only (what a physical controller offers), then shadow doorbells (what emulated
    // controllers such as QEMU's and the model offer).
    for (shadow, qd) in [false, true].into_iter().flat_map(|s| [1usize, 32, 128].map(|q| (s, q))) {
        let model = NvmeModel::new(cfg.clone());
        let opts = ControllerOptions {
            queue_depth: (qd as u16 + 1).max(2),
            io_queues: 1,
            shadow_doorbells: shadow,
            ..ControllerOptions::default()
        };
        let ctrl = Controller::new(model.clone(), opts).expect("bring-up on the model");
        let q = ctrl.io_queue(1).expect("an I/O queue");
        let space = ctrl.device().dma().clone();
        let spec = LoadSpec {
            pattern: Pattern::Random,
            block: 4096,
            qd,
            duration: None,
            ios: Some(ios / 10),
            span: 1 << 30,
            seed: 1,
        };
        let bufs = || Window::new(space.alloc(4096).expect("DMA memory"), 0, 4096).expect("window");
        // Warm up (pools, queues and the model reach their steady state), then measure.
        load::run::<_, FromDevice, _>(&q, &spec, bufs);
        // Allocations per I/O: the difference between a run of N/2 and a run of N I/Os, so the
        // runs' own setup (packets, DMA buffers) cancels out.
        let a0 = mfio::alloc_count::allocations();
        load::run::<_, FromDevice, _>(&q, &LoadSpec { ios: Some(ios / 2), ..spec.clone() }, bufs);
        let a1 = mfio::alloc_count::allocations();
        let spec = LoadSpec { ios: Some(ios), ..spec };
        let before = q.stats();
        let r = load::run::<_, FromDevice, _>(&q, &spec, bufs);
        let a2 = mfio::alloc_count::allocations();
        let after = q.stats();
        assert_eq!((r.ios, r.errors), (ios, 0), "every I/O completes");
        let per_io_allocs = ((a2 - a1) as f64 - (a1 - a0) as f64) / (ios - ios / 2) as f64;
        println!(
            "| {} | {qd} | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
            if shadow { "shadow" } else { "registers" },
            r.iops(),
            r.elapsed.as_nanos() as f64 / r.ios as f64,
            per_io_allocs,
            (after.sq_doorbells - before.sq_doorbells) as f64 / r.ios as f64,
            after.bounced - before.bounced
        );
        assert!(model.violations().is_empty());
    }
}
