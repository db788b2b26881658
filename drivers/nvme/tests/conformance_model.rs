//! The shared conformance suite on the driver against the strict controller model, in every
//! completion mode the model has.

use mfio_nvme::model::{CompletionMode, ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{Controller, ControllerOptions, IoQueue};
use std::sync::Arc;

fn queue(cfg: ModelConfig, nsid: u32, opts: ControllerOptions) -> IoQueue<NvmeModel> {
    let deferred = matches!(cfg.completion, CompletionMode::Deferred { .. });
    let model = NvmeModel::new(cfg);
    if deferred {
        // A device that completes on its own time, from another thread, while the driver
        // polls: the model holds completions and this thread lets them go.
        let m = model.clone();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(120) {
                m.release_held();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
    }
    let ctrl: Arc<Controller<NvmeModel>> = Controller::new(model, opts).unwrap();
    ctrl.io_queue(nsid).unwrap()
}

fn cfg(mode: CompletionMode) -> ModelConfig {
    ModelConfig {
        namespaces: vec![NamespaceConfig::new(80_000, 512), NamespaceConfig::new(12_000, 4096)],
        mdts: 5,
        completion: mode,
        ..ModelConfig::default()
    }
}

mod inline_512 {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Inline),
        1,
        ControllerOptions::default()
    ));
}

mod inline_4096 {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Inline),
        2,
        ControllerOptions::default()
    ));
}

mod reversed {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Reversed),
        1,
        ControllerOptions::default()
    ));
}

mod shuffled {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Shuffled { seed: 42 }),
        2,
        ControllerOptions::default()
    ));
}

/// Completions arrive from another thread, late and in batches.
mod asynchronous {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Deferred { doorbells: 1000 }),
        1,
        ControllerOptions::default()
    ));
}

/// A small queue and few bounce buffers: everything goes through backpressure.
mod tight {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Shuffled { seed: 7 }),
        1,
        ControllerOptions {
            queue_depth: 4,
            bounce_buffers: 1,
            bounce_size: 8192,
            ..ControllerOptions::default()
        }
    ));
}

/// No MDTS limit and a large transfer cap: PRP lists chained over several pages.
mod chained_prp_lists {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelConfig { mdts: 0, ..cfg(CompletionMode::Inline) },
        1,
        ControllerOptions {
            max_transfer: 4 << 20,
            bounce_size: 4 << 20,
            bounce_buffers: 2,
            ..ControllerOptions::default()
        }
    ));
}

/// Every read and write described by an SGL (the model offers SGLs), with chained PRP-sized
/// list pages replaced by SGL segments.
mod sgl_inline {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelConfig { sgl: true, ..cfg(CompletionMode::Inline) },
        1,
        ControllerOptions { data_pointer: mfio_nvme::DataPointer::Sgl, ..Default::default() }
    ));
}

mod sgl_shuffled_4096 {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelConfig { sgl: true, ..cfg(CompletionMode::Shuffled { seed: 7 }) },
        2,
        ControllerOptions { data_pointer: mfio_nvme::DataPointer::Sgl, ..Default::default() }
    ));
}

/// Memory scattered page by page, as in no-IOMMU mode without huge pages: 64-entry queues (a
/// ring must fit in one page), PRP lists of scattered pages, and with SGLs a descriptor per page
/// in chained segments.
mod scattered_prp {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelConfig { scattered_dma: true, mdts: 9, ..cfg(CompletionMode::Inline) },
        1,
        ControllerOptions { bounce_size: 2 << 20, ..Default::default() }
    ));
}

mod scattered_sgl {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelConfig { scattered_dma: true, sgl: true, mdts: 9, ..cfg(CompletionMode::Reversed) },
        1,
        ControllerOptions {
            data_pointer: mfio_nvme::DataPointer::Sgl,
            bounce_size: 2 << 20,
            ..Default::default()
        }
    ));
}

/// Shadow doorbells (the model offers them, as QEMU does), completions late from another
/// thread: the EventIdx protocol under real concurrency.
mod shadow_asynchronous {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        cfg(CompletionMode::Deferred { doorbells: 1000 }),
        1,
        ControllerOptions { shadow_doorbells: true, queue_depth: 16, ..Default::default() }
    ));
}
