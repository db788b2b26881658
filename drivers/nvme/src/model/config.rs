//! What a model controller looks like: namespaces, limits, completion behaviour.

use std::time::Duration;

/// One namespace: its size and block size. NSIDs are given in order from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Size in logical blocks (NSZE = NCAP).
    pub blocks: u64,
    /// Logical block size in bytes: 512 or 4096.
    pub lba_size: u32,
}

impl NamespaceConfig {
    /// A namespace of `blocks` blocks of `lba_size` bytes.
    pub fn new(blocks: u64, lba_size: u32) -> Self {
        Self { blocks, lba_size }
    }
}

/// When and in what order the model posts the completions of I/O commands. Admin commands
/// always complete inline and in order: a driver waits for them one at a time during bring-up,
/// and deferring them would only hang it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum CompletionMode {
    /// Every command is executed and its CQE posted during the SQ tail doorbell write that
    /// submitted it, in submission order (CQEs are in memory before `write32` returns).
    #[default]
    Inline,
    /// Like `Inline`, but the CQEs of one doorbell write are posted in reverse order.
    Reversed,
    /// Like `Inline`, but the CQEs of one doorbell write are posted in a shuffled order
    /// (deterministic: a xorshift generator seeded with `seed`).
    Shuffled {
        /// Seed of the generator.
        seed: u64,
    },
    /// Each command is fetched on its doorbell write but executed (data moved, CQE posted) only
    /// on the `doorbells`-th doorbell write after it (any SQ or CQ doorbell of the controller),
    /// on [`NvmeModel::release_held`](super::NvmeModel::release_held), or, when the driver
    /// rings nothing more, after [`ModelConfig::deferred_timeout`] (a real device completes
    /// eventually; a driver waiting for its last command rings nothing). With that timeout
    /// off the order is fully deterministic.
    Deferred {
        /// Number of later doorbell writes before the command executes (at least 1).
        doorbells: u32,
    },
    /// Each command is fetched on its doorbell write and executed `micros` microseconds later
    /// by a background thread of the model (which polls every 100 us). Realistic "slow"
    /// completion for timeouts and latency, but not deterministic: prefer `Deferred` or
    /// [`Injection::Hold`](super::Injection::Hold) where a test needs exact control.
    Timed {
        /// Delay from fetch to execution.
        micros: u64,
    },
}

/// A model controller's configuration. `Default` is one 16 MiB namespace of 512-byte blocks,
/// MDTS 128 KiB, 16 I/O queue pairs of up to 1024 entries, PRPs only, inline completions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// The namespaces (NSID 1, 2, ...). Default: one of 32768 blocks of 512 bytes.
    pub namespaces: Vec<NamespaceConfig>,
    /// Identify MDTS: the largest transfer is `4096 << mdts` bytes (0: no limit). Default 5.
    pub mdts: u8,
    /// Most I/O submission (and completion) queues granted by Set Features Number of Queues.
    /// Default 16. At most 1535 (the doorbells of BAR0's 16 KiB).
    pub max_queues: u16,
    /// CAP.MQES: largest queue size minus one. Default 1023.
    pub mqes: u16,
    /// Offer SGLs for I/O commands (Identify SGLS = 1, no alignment requirement). Default off.
    pub sgl: bool,
    /// Map the driver's DMA memory page by page at scattered IOVAs, as no-IOMMU mode without
    /// huge pages does (see [`CheckingMapper::scattered`]). Default off.
    ///
    /// [`CheckingMapper::scattered`]: mfio_dma::CheckingMapper::scattered
    pub scattered_dma: bool,
    /// Offer shadow doorbells (Identify OACS bit 8, Doorbell Buffer Config), as QEMU does.
    /// Default on.
    pub shadow_doorbells: bool,
    /// When I/O completions are posted. Default inline.
    pub completion: CompletionMode,
    /// Null I/O: reads and writes validate everything (NSID, range, MDTS, the whole PRP/SGL
    /// walk, that every data segment is mapped) but move no data and keep none (reads leave
    /// the buffer untouched). For driver benchmarks. Default off.
    pub null_io: bool,
    /// Panic on a driver bug (bad doorbell, stray DMA, DMA without bus mastering, register
    /// misuse) after recording it in [`NvmeModel::violations`](super::NvmeModel::violations).
    /// Default on; turn it off to assert on the recorded violations instead.
    pub panic_on_violation: bool,
    /// Serial number reported by Identify Controller.
    pub serial: String,
    /// Deferred commands ([`CompletionMode::Deferred`], [`Injection::Delay`]) still waiting
    /// this long after their fetch are executed by the model's timer thread. `None`: only
    /// doorbells and `release_held` release them (deterministic tests). Default 2 ms.
    ///
    /// [`Injection::Delay`]: super::Injection::Delay
    pub deferred_timeout: Option<Duration>,
    /// Identify VWC bit: a volatile write cache is present (Flush then matters). Default on.
    pub volatile_write_cache: bool,
    /// MSI-X table size (0: no MSI-X, the queues can only be polled). Vector `n` is raised
    /// for each CQE posted to a CQ created with IEN = 1 and IV = `n`. Default 65, as QEMU's.
    pub msix_vectors: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            namespaces: vec![NamespaceConfig::new(32768, 512)],
            mdts: 5,
            max_queues: 16,
            mqes: 1023,
            sgl: false,
            scattered_dma: false,
            shadow_doorbells: true,
            completion: CompletionMode::Inline,
            null_io: false,
            panic_on_violation: true,
            serial: "MFIO-MODEL-0001".to_string(),
            volatile_write_cache: true,
            deferred_timeout: Some(Duration::from_millis(2)),
            msix_vectors: 65,
        }
    }
}

impl ModelConfig {
    /// Largest transfer in bytes, if limited.
    pub fn max_transfer(&self) -> Option<usize> {
        (self.mdts != 0).then(|| 4096usize << self.mdts)
    }

    /// Panics on a configuration no controller could have (a test bug, not a driver bug).
    pub(crate) fn validate(&self) {
        for (i, ns) in self.namespaces.iter().enumerate() {
            assert!(
                ns.lba_size == 512 || ns.lba_size == 4096,
                "NVMe model config: namespace {} has LBA size {} (512 or 4096 only)",
                i + 1,
                ns.lba_size
            );
            assert!(ns.blocks > 0, "NVMe model config: namespace {} is empty", i + 1);
        }
        assert!(
            (1..=1535).contains(&self.max_queues),
            "NVMe model config: max_queues {} not in 1..=1535",
            self.max_queues
        );
        assert!(self.mqes >= 1, "NVMe model config: mqes must be at least 1 (2 entries)");
        assert!(self.mdts <= 20, "NVMe model config: mdts {} is absurd", self.mdts);
        assert!(
            self.msix_vectors <= 2048,
            "NVMe model config: an MSI-X table has 2048 entries at most"
        );
        if let CompletionMode::Deferred { doorbells } = self.completion {
            assert!(doorbells >= 1, "NVMe model config: Deferred needs doorbells >= 1");
        }
    }
}
