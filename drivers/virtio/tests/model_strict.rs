//! The model's strictness: a driver that breaks the rules of either ring layout is caught at
//! once, with a message naming the rule. Each test plays a broken driver by hand, writing
//! descriptors straight into the rings of a queue the real driver set up.

use mfio::ReadAt;
use mfio::{ErrorKind, IoBackend};
use mfio_dma::{DeviceMemory, Iova};
use mfio_pci::PciDevice;
use mfio_virtio::model::{CompletionMode, ModelOptions, OnViolation, VirtioBlkModel, BAR};
use mfio_virtio::spec::{common, feature, packed, status};
use mfio_virtio::{Options, VirtioBlk};
use std::task::{Context, Waker};

fn up(model: ModelOptions, opts: Options) -> (VirtioBlkModel, VirtioBlk<VirtioBlkModel>) {
    let m = VirtioBlkModel::new(model);
    let dev = VirtioBlk::new(m.clone(), &opts).expect("bring-up");
    (m, dev)
}

fn split() -> (VirtioBlkModel, VirtioBlk<VirtioBlkModel>) {
    up(ModelOptions::split_only(), Options::default())
}

// ---- split ----------------------------------------------------------------------------------

/// Queue 0's Descriptor and Driver Area addresses (split: table and available ring; packed:
/// ring and driver event suppression).
fn rings(m: &VirtioBlkModel) -> (u64, u64) {
    m.write16(BAR, common::QUEUE_SELECT, 0);
    (m.read64(BAR, common::QUEUE_DESC), m.read64(BAR, common::QUEUE_DRIVER))
}

/// Makes the chain at `head` available by hand and notifies queue 0.
fn offer(m: &VirtioBlkModel, avail: u64, head: u16) {
    let mp = m.mapper();
    mp.write_le16(mfio_dma::Iova(avail + 4), head).unwrap();
    mp.write_le16(mfio_dma::Iova(avail + 2), 1).unwrap();
    m.write16(BAR, 0x3000, 0);
}

fn write_desc(m: &VirtioBlkModel, desc: u64, id: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mp = m.mapper();
    let at = desc + 16 * id;
    mp.write_le64(mfio_dma::Iova(at), addr).unwrap();
    mp.write_le32(mfio_dma::Iova(at + 8), len).unwrap();
    mp.write_le16(mfio_dma::Iova(at + 12), flags).unwrap();
    mp.write_le16(mfio_dma::Iova(at + 14), next).unwrap();
}

#[test]
#[should_panic(expected = "used twice (a loop")]
fn model_catches_a_looping_chain() {
    let (m, dev) = split();
    let _q = dev.queue(0).unwrap();
    let (desc, avail) = rings(&m);
    write_desc(&m, desc, 0, desc, 16, 1, 1);
    write_desc(&m, desc, 1, desc, 16, 1, 0);
    offer(&m, avail, 0);
}

#[test]
#[should_panic(expected = "descriptor id 300 >= queue size 256")]
fn model_catches_a_head_past_the_ring() {
    let (m, dev) = split();
    let _q = dev.queue(0).unwrap();
    let (_, avail) = rings(&m);
    offer(&m, avail, 300);
}

#[test]
#[should_panic(expected = "DMA fault")]
fn model_catches_dma_to_unmapped_memory() {
    let (m, dev) = split();
    let _q = dev.queue(0).unwrap();
    let (desc, avail) = rings(&m);
    // A header at a virtual address instead of an IOVA.
    let bogus = &desc as *const u64 as u64;
    write_desc(&m, desc, 0, bogus, 16, 1, 1);
    write_desc(&m, desc, 1, desc, 1, 2, 0);
    offer(&m, avail, 0);
}

#[test]
#[should_panic(expected = "readable buffer after a writable")]
fn model_catches_readable_after_writable() {
    let (m, dev) = split();
    let _q = dev.queue(0).unwrap();
    let (desc, avail) = rings(&m);
    write_desc(&m, desc, 0, desc, 16, 2 | 1, 1);
    write_desc(&m, desc, 1, desc, 16, 0, 0);
    offer(&m, avail, 0);
}

#[test]
fn model_violation_can_set_needs_reset_instead_and_the_driver_recovers_by_failing() {
    let (m, dev) = up(
        ModelOptions { on_violation: OnViolation::NeedsReset, ..ModelOptions::split_only() },
        Options::default(),
    );
    let q = dev.queue(0).unwrap();
    // A notify before DRIVER_OK on a second, fresh model is a violation too.
    let fresh = VirtioBlkModel::new(ModelOptions {
        on_violation: OnViolation::NeedsReset,
        ..Default::default()
    });
    fresh.write16(BAR, 0x3000, 0);
    assert!(fresh.violations()[0].contains("before it runs"), "{:?}", fresh.violations());
    // A bad chain on the running device: recorded, DEVICE_NEEDS_RESET, and the driver then
    // fails its I/O with Fatal after resetting the device.
    let (desc, avail) = rings(&m);
    write_desc(&m, desc, 0, desc, 0, 0, 0);
    offer(&m, avail, 0);
    assert!(m.violations()[0].contains("zero-length"), "{:?}", m.violations());
    assert_ne!(m.status() & status::DEVICE_NEEDS_RESET, 0);
    let e = q.read_all_blocking(0, &mut [0u8; 512]).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Fatal);
    assert_eq!(m.status(), 0);
}

// ---- packed ---------------------------------------------------------------------------------

const AVAIL: u16 = packed::DESC_F_AVAIL;
const USED: u16 = packed::DESC_F_USED;
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// A packed device whose requests stay in flight (so buffer IDs stay taken).
fn packed_held(queue_size: u16) -> (VirtioBlkModel, VirtioBlk<VirtioBlkModel>) {
    let completion = CompletionMode::Deferred { notifies: 1000, seed: 0 };
    up(
        ModelOptions { queue_size_max: queue_size, completion, ..Default::default() },
        Options::default(),
    )
}

/// Writes descriptor `pos` of the packed ring at `ring`, flags last.
fn pdesc(m: &VirtioBlkModel, ring: u64, pos: u64, addr: u64, len: u32, id: u16, flags: u16) {
    let mp = m.mapper();
    let at = ring + 16 * pos;
    mp.write_le64(Iova(at), addr).unwrap();
    mp.write_le32(Iova(at + 8), len).unwrap();
    mp.write_le16(Iova(at + 12), id).unwrap();
    mp.write_le16(Iova(at + 14), flags).unwrap();
}

fn notify(m: &VirtioBlkModel) {
    m.write16(BAR, 0x3000, 0);
}

/// A well-formed two-descriptor chain (a "header" and a "status") at `pos`, `pos + 1`.
fn chain(m: &VirtioBlkModel, ring: u64, pos: u64, id: u16, bits: [u16; 2]) {
    pdesc(m, ring, pos + 1, ring, 1, id, WRITE | bits[1]);
    pdesc(m, ring, pos, ring, 16, id, NEXT | bits[0]);
}

#[test]
#[should_panic(expected = "do not mark it available for wrap counter 1 (a wrong wrap counter?)")]
fn packed_model_catches_a_wrong_wrap_counter() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    // Lap 1 wants AVAIL=1, USED=0: this is lap 2's pattern.
    pdesc(&m, ring, 0, ring, 16, 0, USED);
    notify(&m);
}

#[test]
#[should_panic(expected = "a chain continues into descriptor 1, whose flags 0x0")]
fn packed_model_catches_a_chain_into_a_descriptor_not_made_available() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    pdesc(&m, ring, 0, ring, 16, 0, NEXT | AVAIL);
    notify(&m);
}

#[test]
#[should_panic(expected = "buffer ID 7 made available again while still in flight")]
fn packed_model_catches_a_buffer_id_reused_in_flight() {
    let (m, dev) = packed_held(16);
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    chain(&m, ring, 0, 7, [AVAIL, AVAIL]);
    notify(&m);
    chain(&m, ring, 2, 7, [AVAIL, AVAIL]);
    notify(&m);
}

#[test]
#[should_panic(expected = "buffer ID 3 in the chain's last descriptor but 2 in its first")]
fn packed_model_catches_ids_that_differ_within_a_chain() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    pdesc(&m, ring, 1, ring, 1, 3, WRITE | AVAIL);
    pdesc(&m, ring, 0, ring, 16, 2, NEXT | AVAIL);
    notify(&m);
}

#[test]
#[should_panic(expected = "5 descriptors in flight, more than the ring's 4")]
fn packed_model_catches_more_in_flight_than_the_ring_holds() {
    let (m, dev) = packed_held(4);
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    for pos in 0..4 {
        pdesc(&m, ring, pos, ring, 1, pos as u16, WRITE | AVAIL);
    }
    notify(&m);
    // Lap 2 over position 0, which the device has not used yet.
    pdesc(&m, ring, 0, ring, 1, 9, WRITE | USED);
    notify(&m);
}

#[test]
#[should_panic(expected = "indirect table entry 0 has flags 0x1 (WRITE is the only one allowed)")]
fn packed_model_catches_next_in_an_indirect_table() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    // The table at position 4..5 of the ring itself (mapped memory, zero until now).
    let table = ring + 4 * 16;
    pdesc(&m, table, 0, ring, 16, 0, NEXT);
    pdesc(&m, table, 1, ring, 1, 0, WRITE);
    pdesc(&m, ring, 0, table, 32, 0, INDIRECT | AVAIL);
    notify(&m);
}

#[test]
#[should_panic(expected = "indirect descriptor 1 in a chain linked by NEXT")]
fn packed_model_catches_an_indirect_descriptor_inside_a_chain() {
    let (m, dev) = up(ModelOptions::default(), Options::default());
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    pdesc(&m, ring, 1, ring, 32, 0, INDIRECT | AVAIL);
    pdesc(&m, ring, 0, ring, 16, 0, NEXT | AVAIL);
    notify(&m);
}

#[test]
#[should_panic(expected = "indirect descriptor without INDIRECT_DESC")]
fn packed_model_catches_indirect_without_the_feature() {
    let opts = Options { refuse_features: feature::INDIRECT_DESC, ..Default::default() };
    let (m, dev) = up(ModelOptions::default(), opts);
    let _q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    pdesc(&m, ring, 0, ring, 32, 0, INDIRECT | AVAIL);
    notify(&m);
}

#[test]
fn packed_model_catches_a_reserved_driver_event_mode() {
    // NeedsReset, not a panic: the panic would strike with the driver's read in flight.
    let (m, dev) = up(
        ModelOptions { on_violation: OnViolation::NeedsReset, ..Default::default() },
        Options::default(),
    );
    let q = dev.queue(0).unwrap();
    let (_, driver_event) = rings(&m);
    m.mapper().write_le16(Iova(driver_event + 2), 3).unwrap();
    let e = q.read_all_blocking(0, &mut [0u8; 512]).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Fatal);
    assert!(
        m.violations()[0].contains("driver event suppression flags 0x3"),
        "{:?}",
        m.violations()
    );
}

#[test]
fn packed_model_catches_a_ring_not_zeroed_at_enable() {
    // A hand-made bring-up whose ring holds what looks like an available descriptor.
    let m = VirtioBlkModel::new(ModelOptions {
        on_violation: OnViolation::NeedsReset,
        ..Default::default()
    });
    let c = |off: u64| off; // common configuration at BAR offset 0
    m.write8(BAR, c(common::DEVICE_STATUS), 0);
    m.write8(BAR, c(common::DEVICE_STATUS), status::ACKNOWLEDGE | status::DRIVER);
    let f = feature::VERSION_1 | feature::ACCESS_PLATFORM | feature::RING_PACKED;
    m.write32(BAR, c(common::DRIVER_FEATURE_SELECT), 0);
    m.write32(BAR, c(common::DRIVER_FEATURE), f as u32);
    m.write32(BAR, c(common::DRIVER_FEATURE_SELECT), 1);
    m.write32(BAR, c(common::DRIVER_FEATURE), (f >> 32) as u32);
    m.write8(
        BAR,
        c(common::DEVICE_STATUS),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    let mem = m.dma().alloc(4096).unwrap();
    mem.mem().write_le16(16 + 14, AVAIL); // descriptor 1
    let iova = mem.iova().get();
    m.write16(BAR, c(common::QUEUE_SELECT), 0);
    m.write16(BAR, c(common::QUEUE_SIZE), 4);
    m.write64(BAR, c(common::QUEUE_DESC), iova);
    m.write64(BAR, c(common::QUEUE_DRIVER), iova + 1024);
    m.write64(BAR, c(common::QUEUE_DEVICE), iova + 2048);
    m.write16(BAR, c(common::QUEUE_ENABLE), 1);
    assert!(m.violations()[0].contains("not zeroed (byte 30)"), "{:?}", m.violations());
    assert_ne!(m.status() & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn packed_violation_with_needs_reset_fails_the_driver_cleanly() {
    let (m, dev) = up(
        ModelOptions { on_violation: OnViolation::NeedsReset, ..Default::default() },
        Options::default(),
    );
    let q = dev.queue(0).unwrap();
    let (ring, _) = rings(&m);
    pdesc(&m, ring, 0, ring, 0, 0, AVAIL);
    notify(&m);
    assert!(m.violations()[0].contains("zero-length"), "{:?}", m.violations());
    let e = q.read_all_blocking(0, &mut [0u8; 512]).unwrap_err();
    assert_eq!(e.error.kind(), ErrorKind::Fatal);
    assert_eq!(m.status(), 0, "the driver reset the device");
    q.poll_backend(&mut Context::from_waker(Waker::noop()));
    assert_eq!(q.in_flight(), 0);
}

/// Offers one request by hand on a fresh device (null model, violations recorded; a split-only
/// one when `split`): an indirect table of three entries, a header (type, sector) of
/// `header_len` bytes, a data buffer of `data_len` bytes at `data` (None: in the same DMA
/// buffer), a status byte; returns the violations.
fn three_entry_request(
    split: bool,
    header_len: u32,
    kind: u32,
    data_len: u32,
    data: Option<u64>,
) -> Vec<String> {
    let model = if split { ModelOptions::split_only() } else { ModelOptions::default() };
    let (m, dev) = up(
        ModelOptions { null: true, on_violation: OnViolation::NeedsReset, ..model },
        Options::default(),
    );
    let _q = dev.queue(0).unwrap();
    let (ring, avail) = rings(&m);
    let mem = m.dma().alloc(8192).unwrap();
    let base = mem.iova().get();
    let (table, header, status, buf) = (base, base + 64, base + 128, base + 4096);
    mem.mem().write_le32(64, kind);
    mem.mem().write_le64(72, 0);
    let entries =
        [(header, header_len, 0u16), (data.unwrap_or(buf), data_len, WRITE), (status, 1, WRITE)];
    for (i, (addr, len, flags)) in entries.into_iter().enumerate() {
        if split {
            // Linked in table order.
            let next = if i < 2 { NEXT } else { 0 };
            write_desc(&m, table, i as u64, addr, len, flags | next, i as u16 + 1);
        } else {
            pdesc(&m, table, i as u64, addr, len, 0, flags);
        }
    }
    if split {
        write_desc(&m, ring, 0, table, 48, INDIRECT, 0);
        offer(&m, avail, 0);
    } else {
        pdesc(&m, ring, 0, table, 48, 0, INDIRECT | AVAIL);
        notify(&m);
    }
    let v = m.violations();
    drop(mem);
    v
}

#[test]
fn the_usual_three_entry_request_is_checked_as_strictly_as_any() {
    // The model keeps a table of one readable and two writable buffers without a buffer list
    // (its most common shape), in both layouts: the same checks must hold on that path.
    for split in [false, true] {
        let req = |h, k, d, at| three_entry_request(split, h, k, d, at);
        assert_eq!(req(16, 0, 4096, None), Vec::<String>::new(), "a valid read (split {split})");
        let v = req(8, 0, 4096, None);
        assert!(v[0].contains("request header of 8 bytes"), "{v:?}");
        let v = req(16, 0, 100, None);
        assert!(v[0].contains("read of 100 bytes: not whole sectors"), "{v:?}");
        let v = req(32, 0, 4096, None);
        assert!(v[0].contains("read request's readable part: 32 bytes where 16 belong"), "{v:?}");
        let v = req(16, 0, 0, None);
        assert!(v[0].contains("zero-length descriptor"), "{v:?}");
        // Far above every mapping: never mapped.
        let v = req(16, 0, 4096, Some(u64::MAX - 8191));
        assert!(v[0].contains("is unmapped"), "{v:?}");
    }
}
