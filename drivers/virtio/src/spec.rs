//! Constants and layouts of the virtio 1.x specification this driver uses: feature bits,
//! device status bits, virtio-pci capability types and the common configuration layout, split
//! and packed virtqueue layouts, and virtio-blk request types, status codes and configuration
//! layout.

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest has noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive the device.
    pub const DRIVER: u8 = 2;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device has hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// Something went wrong in the guest; it has given up on the device.
    pub const FAILED: u8 = 0x80;
}

/// Feature bits: device independent (24 and up) and virtio-blk's own (below 24).
pub mod feature {
    /// virtio-blk: `size_max` holds the largest segment size.
    pub const BLK_SIZE_MAX: u64 = 1 << 1;
    /// virtio-blk: `seg_max` holds the most segments per request.
    pub const BLK_SEG_MAX: u64 = 1 << 2;
    /// virtio-blk: disk geometry is in the config.
    pub const BLK_GEOMETRY: u64 = 1 << 4;
    /// virtio-blk: the device is read-only.
    pub const BLK_RO: u64 = 1 << 5;
    /// virtio-blk: `blk_size` holds the logical block size.
    pub const BLK_BLK_SIZE: u64 = 1 << 6;
    /// virtio-blk: FLUSH requests.
    pub const BLK_FLUSH: u64 = 1 << 9;
    /// virtio-blk: topology information is in the config.
    pub const BLK_TOPOLOGY: u64 = 1 << 10;
    /// virtio-blk: the write cache mode is configurable.
    pub const BLK_CONFIG_WCE: u64 = 1 << 11;
    /// virtio-blk: several request queues (`num_queues`).
    pub const BLK_MQ: u64 = 1 << 12;
    /// virtio-blk: DISCARD requests.
    pub const BLK_DISCARD: u64 = 1 << 13;
    /// virtio-blk: WRITE_ZEROES requests.
    pub const BLK_WRITE_ZEROES: u64 = 1 << 14;
    /// Indirect descriptor tables.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// virtio 1.x (modern) device.
    pub const VERSION_1: u64 = 1 << 32;
    /// The device reaches memory through the platform's IOMMU (addresses are IOVAs).
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// Packed virtqueues.
    pub const RING_PACKED: u64 = 1 << 34;
    /// Buffers are used in the order they were made available.
    pub const IN_ORDER: u64 = 1 << 35;
    /// Per-queue reset.
    pub const RING_RESET: u64 = 1 << 40;

    /// Names of the bits, for logs and reports.
    pub const NAMES: &[(u64, &str)] = &[
        (BLK_SIZE_MAX, "SIZE_MAX"),
        (BLK_SEG_MAX, "SEG_MAX"),
        (BLK_GEOMETRY, "GEOMETRY"),
        (BLK_RO, "RO"),
        (BLK_BLK_SIZE, "BLK_SIZE"),
        (BLK_FLUSH, "FLUSH"),
        (BLK_TOPOLOGY, "TOPOLOGY"),
        (BLK_CONFIG_WCE, "CONFIG_WCE"),
        (BLK_MQ, "MQ"),
        (BLK_DISCARD, "DISCARD"),
        (BLK_WRITE_ZEROES, "WRITE_ZEROES"),
        (INDIRECT_DESC, "INDIRECT_DESC"),
        (EVENT_IDX, "EVENT_IDX"),
        (VERSION_1, "VERSION_1"),
        (ACCESS_PLATFORM, "ACCESS_PLATFORM"),
        (RING_PACKED, "RING_PACKED"),
        (IN_ORDER, "IN_ORDER"),
        (RING_RESET, "RING_RESET"),
    ];

    /// Everything this driver can use (it accepts the intersection with what is offered).
    /// Not in it: IN_ORDER (completions may come in any order; the driver tracks each
    /// buffer by its ID either way) and RING_RESET (a failed queue resets the whole device).
    pub const SUPPORTED: u64 = BLK_SIZE_MAX
        | BLK_SEG_MAX
        | BLK_RO
        | BLK_BLK_SIZE
        | BLK_FLUSH
        | BLK_MQ
        | BLK_DISCARD
        | BLK_WRITE_ZEROES
        | INDIRECT_DESC
        | EVENT_IDX
        | VERSION_1
        | ACCESS_PLATFORM
        | RING_PACKED;
}

/// virtio-pci vendor capability (`struct virtio_pci_cap`) layout and types.
pub mod cap {
    /// Offset of `cfg_type` in the capability.
    pub const CFG_TYPE: u16 = 3;
    /// Offset of `bar`.
    pub const BAR: u16 = 4;
    /// Offset of `offset` (le32).
    pub const OFFSET: u16 = 8;
    /// Offset of `length` (le32).
    pub const LENGTH: u16 = 12;
    /// Offset of `notify_off_multiplier` (le32) in the notify capability.
    pub const NOTIFY_OFF_MULTIPLIER: u16 = 16;
    /// Common configuration.
    pub const COMMON_CFG: u8 = 1;
    /// Notifications.
    pub const NOTIFY_CFG: u8 = 2;
    /// ISR status.
    pub const ISR_CFG: u8 = 3;
    /// Device-specific configuration.
    pub const DEVICE_CFG: u8 = 4;
}

/// `struct virtio_pci_common_cfg` offsets.
pub mod common {
    /// le32: which 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32: device feature bits (read only).
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32: which 32 feature bits `DRIVER_FEATURE` sets.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32: driver feature bits.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16: MSI-X vector for configuration changes.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// le16: number of virtqueues (read only).
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8: device status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8: configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16: queue the following fields refer to.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16: queue size (the device's maximum on reset; the driver may lower it).
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16: MSI-X vector of the queue.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16: 1 enables the queue.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16: notify offset of the queue (times the multiplier).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64: descriptor table address.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64: driver (available) ring address.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64: device (used) ring address.
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Length of the structure this driver needs.
    pub const LEN: u64 = 0x38;
    /// No MSI-X vector.
    pub const NO_VECTOR: u16 = 0xffff;
}

/// Split virtqueue layout (virtio 1.x, 2.7).
pub mod ring {
    /// Bytes per descriptor.
    pub const DESC_SIZE: usize = 16;
    /// Descriptor continues in `next`.
    pub const DESC_F_NEXT: u16 = 1;
    /// Device writes the buffer (otherwise it reads it).
    pub const DESC_F_WRITE: u16 = 2;
    /// The buffer is a table of descriptors.
    pub const DESC_F_INDIRECT: u16 = 4;
    /// Available ring flag: no interrupts wanted (without EVENT_IDX).
    pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
    /// Used ring flag: no notifications wanted (without EVENT_IDX).
    pub const USED_F_NO_NOTIFY: u16 = 1;
    /// Bytes of the available ring of `n` entries (flags, idx, ring, used_event).
    pub const fn avail_size(n: u16) -> usize {
        6 + 2 * n as usize
    }
    /// Bytes of the used ring of `n` entries (flags, idx, ring, avail_event).
    pub const fn used_size(n: u16) -> usize {
        6 + 8 * n as usize
    }
    /// Largest split queue size.
    pub const MAX_SIZE: u16 = 32768;

    /// A descriptor as two little-endian u64 words, as both layouts lay it out: the address,
    /// then the length (bytes 8..12) and two 16-bit fields at bytes 12 and 14 (split: flags,
    /// next; packed: buffer ID, flags). Driver and model store and load it as these words:
    /// fewer bounds checks, and loads of the stores' width, which a CPU forwards from its
    /// store buffer when both run in one thread.
    #[inline(always)]
    pub const fn desc_words(addr: u64, len: u32, at12: u16, at14: u16) -> [u64; 2] {
        [addr, len as u64 | (at12 as u64) << 32 | (at14 as u64) << 48]
    }

    /// The fields of a descriptor read as [`desc_words`]: (address, length, the 16-bit field
    /// at byte 12, the one at byte 14).
    #[inline(always)]
    pub const fn desc_fields([addr, word]: [u64; 2]) -> (u64, u32, u16, u16) {
        (addr, word as u32, (word >> 32) as u16, (word >> 48) as u16)
    }

    /// EVENT_IDX rule: must the other side be told, now that the index moved from `old` to
    /// `new`, given that it asked to be told once `event` is passed? (`vring_need_event`)
    #[inline]
    pub const fn need_event(event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }
}

/// Packed virtqueue layout (virtio 1.1+, 2.8): a ring of `struct pvirtq_desc` (le64 addr,
/// le32 len, le16 id, le16 flags) and two event suppression structures (le16 off_wrap, le16
/// flags), the driver's in the Driver Area and the device's in the Device Area.
pub mod packed {
    /// Offset of `len` in a descriptor.
    pub const DESC_LEN: usize = 8;
    /// Offset of the buffer `id` in a descriptor.
    pub const DESC_ID: usize = 12;
    /// Offset of `flags` in a descriptor.
    pub const DESC_FLAGS: usize = 14;
    // `ring::desc_words` puts the length at 8, the ID at 12 and the flags at 14.
    const _: () = assert!(DESC_LEN == 8 && DESC_ID == 12 && DESC_FLAGS == 14);
    /// Descriptor flag: available (matches the driver's wrap counter when made available).
    pub const DESC_F_AVAIL: u16 = 1 << 7;
    /// Descriptor flag: used (matches the device's wrap counter when used; AVAIL then equals it).
    pub const DESC_F_USED: u16 = 1 << 15;
    /// Bytes of one event suppression structure.
    pub const EVENT_SIZE: usize = 4;
    /// Offset of `off_wrap` (le16: descriptor offset, wrap counter in bit 15).
    pub const EVENT_OFF_WRAP: usize = 0;
    /// Offset of `flags` (le16).
    pub const EVENT_FLAGS: usize = 2;
    /// Event flags: notifications wanted.
    pub const EVENT_F_ENABLE: u16 = 0;
    /// Event flags: no notifications wanted.
    pub const EVENT_F_DISABLE: u16 = 1;
    /// Event flags: a notification only when the descriptor at `off_wrap` is made available /
    /// used (with EVENT_IDX only).
    pub const EVENT_F_DESC: u16 = 2;
    /// Bit of `off_wrap` holding the wrap counter.
    pub const EVENT_WRAP: u16 = 1 << 15;
    /// Largest packed queue size.
    pub const MAX_SIZE: u16 = 32768;
}

/// virtio-blk requests, status codes and configuration layout (virtio 1.x, 5.2).
pub mod blk {
    /// Read.
    pub const T_IN: u32 = 0;
    /// Write.
    pub const T_OUT: u32 = 1;
    /// Flush the write cache.
    pub const T_FLUSH: u32 = 4;
    /// Device id string (20 bytes).
    pub const T_GET_ID: u32 = 8;
    /// Discard ranges.
    pub const T_DISCARD: u32 = 11;
    /// Write zeroes to ranges.
    pub const T_WRITE_ZEROES: u32 = 13;
    /// Success.
    pub const S_OK: u8 = 0;
    /// Device or driver error.
    pub const S_IOERR: u8 = 1;
    /// Request unsupported by the device.
    pub const S_UNSUPP: u8 = 2;
    /// Bytes of the request header (type, reserved, sector).
    pub const HEADER_SIZE: usize = 16;
    /// Bytes of one discard / write-zeroes range (sector, num_sectors, flags).
    pub const RANGE_SIZE: usize = 16;
    /// Write-zeroes range flag: the device may unmap.
    pub const RANGE_F_UNMAP: u32 = 1;
    /// Bytes of the GET_ID answer.
    pub const ID_BYTES: usize = 20;
    /// virtio-blk's addressing unit, whatever the block size.
    pub const SECTOR_SIZE: u64 = 512;

    /// Config: le64 capacity in 512-byte sectors.
    pub const CFG_CAPACITY: u64 = 0x00;
    /// Config: le32 largest segment size.
    pub const CFG_SIZE_MAX: u64 = 0x08;
    /// Config: le32 most segments per request.
    pub const CFG_SEG_MAX: u64 = 0x0c;
    /// Config: le32 block size.
    pub const CFG_BLK_SIZE: u64 = 0x14;
    /// Config: le16 number of request queues (MQ).
    pub const CFG_NUM_QUEUES: u64 = 0x22;
    /// Config: le32 largest discard, in sectors.
    pub const CFG_MAX_DISCARD_SECTORS: u64 = 0x24;
    /// Config: le32 most discard ranges per request.
    pub const CFG_MAX_DISCARD_SEG: u64 = 0x28;
    /// Config: le32 discard alignment, in sectors.
    pub const CFG_DISCARD_SECTOR_ALIGNMENT: u64 = 0x2c;
    /// Config: le32 largest write-zeroes, in sectors.
    pub const CFG_MAX_WRITE_ZEROES_SECTORS: u64 = 0x30;
    /// Config: le32 most write-zeroes ranges per request.
    pub const CFG_MAX_WRITE_ZEROES_SEG: u64 = 0x34;
    /// Config: u8 whether write-zeroes may unmap.
    pub const CFG_WRITE_ZEROES_MAY_UNMAP: u64 = 0x38;
    /// Bytes of the configuration this driver reads.
    pub const CFG_LEN: u64 = 0x3c;
}

/// Names of the bits set in `features`, for logs (`"VERSION_1 ACCESS_PLATFORM ..."`).
pub fn feature_names(features: u64) -> String {
    let mut out = String::new();
    let mut rest = features;
    for &(bit, name) in feature::NAMES {
        if features & bit != 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(name);
            rest &= !bit;
        }
    }
    for b in 0..64 {
        if rest & (1 << b) != 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("bit{b}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_including_wrap() {
        // The device asked to be told once index 10 is passed.
        assert!(ring::need_event(10, 11, 10));
        assert!(ring::need_event(10, 15, 9));
        assert!(!ring::need_event(10, 10, 9), "10 itself was not passed");
        assert!(!ring::need_event(10, 15, 11), "already passed before this batch");
        // Across the 16-bit wrap.
        assert!(ring::need_event(0xfffe, 2, 0xfffd));
        assert!(!ring::need_event(0xfffe, 2, 0xffff));
        assert!(ring::need_event(0xffff, 0, 0xffff));
        assert!(!ring::need_event(5, 5, 5), "nothing new");
    }

    #[test]
    fn names() {
        assert_eq!(
            feature_names(feature::VERSION_1 | feature::EVENT_IDX | (1 << 50)),
            "EVENT_IDX VERSION_1 bit50"
        );
    }
}
