//! Namespaces: what the controller reports about each, and how byte offsets map to LBAs.

use crate::spec::IdentifyNamespace;

/// An active namespace of the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size in bytes (the data size of the LBA format in use).
    pub block_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// The Identify Namespace data.
    pub identify: IdentifyNamespace,
    /// The raw 4 KiB Identify Namespace data structure.
    pub identify_raw: Vec<u8>,
}

impl Namespace {
    pub(crate) fn from_identify(
        nsid: u32,
        identify: IdentifyNamespace,
        identify_raw: Vec<u8>,
    ) -> Option<Self> {
        let block_size = identify.block_size();
        (block_size != 0 && identify.nsze != 0).then_some(Self {
            nsid,
            block_size,
            blocks: identify.nsze,
            identify,
            identify_raw,
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}
