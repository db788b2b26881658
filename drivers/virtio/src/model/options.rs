//! How a model is built and how it behaves: what it does on a violation, when it completes
//! what it fetches, what it offers.

use super::*;

/// What the model does when the driver breaks a rule.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OnViolation {
    /// Panic with the rule broken (default: the test fails at the culprit).
    Panic,
    /// Record it, set DEVICE_NEEDS_RESET and stop processing until reset.
    NeedsReset,
}

/// When and in what order the model completes the requests it fetches.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// Every request fetched on a notify is completed during that notify write, in ring order
    /// (used entries are in memory before `write16` returns).
    #[default]
    InOrder,
    /// Like `InOrder`, but the requests of one notify complete in reverse order.
    Reversed,
    /// Like `InOrder`, but the requests of one notify complete in a shuffled order
    /// (deterministic: a xorshift generator seeded with `seed`, which must not be 0).
    Shuffled {
        /// Seed of the generator.
        seed: u64,
    },
    /// Each request is fetched on its notify but carried out (data moved, used entry written)
    /// only on the `notifies`-th notify after it, or on [`VirtioBlkModel::release`]: a device
    /// that completes on its own time. A driver waiting for its last request notifies no
    /// more, so something must release: a test thread, or
    /// [`VirtioBlkModel::release_in_background`]. Those completed together come in a
    /// shuffled order when `seed` is not 0, in fetch order when it is.
    Deferred {
        /// Later notifies before a request completes (at least 1).
        notifies: u32,
        /// Seed of the shuffle (0: no shuffle).
        seed: u64,
    },
}

/// How to build a model.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Null mode: no storage; reads return whatever the buffer held, writes are dropped.
    pub null: bool,
    /// Feature bits offered (default: everything the driver can use, RING_PACKED included;
    /// drop it for a split-only device like QEMU's default).
    pub features: u64,
    /// Request queues (config `num_queues`; MQ must be offered for more than 1).
    pub num_queues: u16,
    /// Largest queue size.
    pub queue_size_max: u16,
    /// `seg_max`.
    pub seg_max: u32,
    /// `size_max` (bytes per segment).
    pub size_max: u32,
    /// `blk_size`.
    pub blk_size: u32,
    /// `max_discard_sectors` and `max_write_zeroes_sectors`.
    pub max_range_sectors: u32,
    /// The GET_ID answer.
    pub id: [u8; blk::ID_BYTES],
    /// What a violation does.
    pub on_violation: OnViolation,
    /// When and in what order requests complete.
    pub completion: CompletionMode,
    /// MSI-X table size (0: no MSI-X). A queue given a vector (`queue_msix_vector`) raises it
    /// for used buffers the driver's event suppression asks to hear of. Default: one per
    /// queue plus one for configuration changes.
    pub msix_vectors: u32,
}

impl Default for ModelOptions {
    fn default() -> Self {
        let mut id = [0u8; blk::ID_BYTES];
        id[..10].copy_from_slice(b"mfio-model");
        Self {
            capacity_sectors: (40 << 20) / 512,
            null: false,
            features: feature::BLK_SIZE_MAX
                | feature::BLK_SEG_MAX
                | feature::BLK_BLK_SIZE
                | feature::BLK_FLUSH
                | feature::BLK_MQ
                | feature::BLK_DISCARD
                | feature::BLK_WRITE_ZEROES
                | feature::INDIRECT_DESC
                | feature::EVENT_IDX
                | feature::VERSION_1
                | feature::ACCESS_PLATFORM
                | feature::RING_PACKED,
            num_queues: 2,
            queue_size_max: 256,
            seg_max: 254,
            size_max: 64 << 10,
            blk_size: 512,
            max_range_sectors: 8192,
            id,
            on_violation: OnViolation::Panic,
            completion: CompletionMode::InOrder,
            msix_vectors: 3,
        }
    }
}

impl ModelOptions {
    /// The default device without RING_PACKED: split virtqueues only.
    pub fn split_only() -> Self {
        let d = Self::default();
        Self { features: d.features & !feature::RING_PACKED, ..d }
    }
}
