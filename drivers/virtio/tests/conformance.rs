//! The shared block-device conformance suite on the virtio-blk driver over the strict model,
//! on both virtqueue layouts: the same device, with `Options::ring` forcing split or packed,
//! in each of the model's completion modes (in order, reversed, shuffled, deferred and
//! released from another thread) and on tight rings that wrap over and over.

use mfio_virtio::model::{CompletionMode, ModelOptions, VirtioBlkModel};
use mfio_virtio::spec::feature;
use mfio_virtio::{BlkQueue, Options, RingLayout, VirtioBlk};
use std::time::Duration;

fn queue(model: ModelOptions, opts: Options) -> BlkQueue<VirtioBlkModel> {
    let deferred = matches!(model.completion, CompletionMode::Deferred { .. });
    let m = VirtioBlkModel::new(model);
    if deferred {
        // Completions arrive on their own, from another thread, while the driver polls.
        m.release_in_background(Duration::from_micros(200));
    }
    let want = opts.ring;
    let dev = VirtioBlk::new(m, &opts).expect("bring-up on the model");
    assert_eq!(Some(dev.ring_layout()), want, "the layout asked for");
    dev.queue(0).expect("queue 0")
}

/// Everything the model offers: indirect tables, EVENT_IDX, SIZE_MAX splitting.
fn all(ring: RingLayout) -> Options {
    Options { ring: Some(ring), ..Default::default() }
}

/// Direct descriptor chains, no EVENT_IDX, small bounce buffers.
fn direct(ring: RingLayout) -> Options {
    Options {
        ring: Some(ring),
        refuse_features: feature::INDIRECT_DESC | feature::EVENT_IDX,
        bounce_slots: 4,
        bounce_size: 16 << 10,
        ..Default::default()
    }
}

/// A ring of `size` descriptors, SEG_MAX 8, completing per `completion`.
fn model(size: u16, completion: CompletionMode) -> ModelOptions {
    ModelOptions { seg_max: 8, queue_size_max: size, completion, ..Default::default() }
}

const SHUFFLED: CompletionMode = CompletionMode::Shuffled { seed: 42 };
const DEFERRED: CompletionMode = CompletionMode::Deferred { notifies: 3, seed: 7 };

mod split {
    use super::*;
    const R: RingLayout = RingLayout::Split;

    mod all_features {
        use super::*;
        mfio_conformance::conformance_tests!(queue(ModelOptions::default(), all(R)));
    }

    /// A 16-entry ring of direct chains: backpressure.
    mod direct_chains {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(16, CompletionMode::InOrder), direct(R)));
    }

    mod block_4k {
        use super::*;
        mfio_conformance::conformance_tests!(queue(
            ModelOptions { blk_size: 4096, ..Default::default() },
            all(R)
        ));
    }

    mod shuffled {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(64, SHUFFLED), all(R)));
    }

    mod asynchronous {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(16, DEFERRED), direct(R)));
    }
}

mod packed {
    use super::*;
    const R: RingLayout = RingLayout::Packed;

    mod all_features {
        use super::*;
        mfio_conformance::conformance_tests!(queue(ModelOptions::default(), all(R)));
    }

    mod direct_chains {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(16, CompletionMode::InOrder), direct(R)));
    }

    /// Four descriptors: a chain of up to four, so the ring wraps every request or two, the
    /// wrap counters flipping inside chains.
    mod tiny_ring {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(4, CompletionMode::InOrder), direct(R)));
    }

    mod block_4k {
        use super::*;
        mfio_conformance::conformance_tests!(queue(
            ModelOptions { blk_size: 4096, ..Default::default() },
            all(R)
        ));
    }

    mod reversed {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(64, CompletionMode::Reversed), all(R)));
    }

    mod shuffled {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(64, SHUFFLED), all(R)));
    }

    /// Deferred, out of order, from another thread, with EVENT_IDX and indirect tables.
    mod asynchronous {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(32, DEFERRED), all(R)));
    }

    /// The same on a ring of 8 with direct chains: used descriptors written out of order,
    /// from another thread, over chains still in flight, many laps over.
    mod asynchronous_tight {
        use super::*;
        mfio_conformance::conformance_tests!(queue(model(8, DEFERRED), direct(R)));
    }
}
