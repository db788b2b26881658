//! The shared block-device conformance suite on the virtio-blk driver over the strict model.

use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
use mfio_virtio::spec::feature;
use mfio_virtio::{BlkQueue, Options, VirtioBlk};

fn queue(model: ModelOptions, opts: Options) -> BlkQueue<VirtioBlkModel> {
    let dev = VirtioBlk::new(VirtioBlkModel::new(model), &opts).expect("bring-up on the model");
    dev.queue(0).expect("queue 0")
}

/// Everything the model offers: indirect tables, EVENT_IDX, SIZE_MAX splitting.
mod all_features {
    mfio_conformance::conformance_tests!(super::queue(Default::default(), Default::default()));
}

/// Direct descriptor chains, no EVENT_IDX, a small ring (backpressure) and a small SEG_MAX.
mod direct_chains {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelOptions { seg_max: 8, queue_size_max: 16, ..Default::default() },
        Options {
            refuse_features: feature::INDIRECT_DESC | feature::EVENT_IDX,
            bounce_slots: 4,
            bounce_size: 16 << 10,
            ..Default::default()
        }
    ));
}

/// 4 KiB logical blocks.
mod block_4k {
    use super::*;
    mfio_conformance::conformance_tests!(queue(
        ModelOptions { blk_size: 4096, ..Default::default() },
        Default::default()
    ));
}
