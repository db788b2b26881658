//! The model's packed ring (virtio 1.1+, 2.8), checked as strictly as the split one.
//!
//! Fetching: the descriptor at the device's position is new when its flags differ from what
//! the model last saw or wrote there; new flags must then say available for the device's
//! wrap counter (AVAIL equal to it, USED the inverse), and so must every descriptor the chain
//! continues into (the counter flips at the end of the ring, within a chain too). Flags hold
//! no unknown bits; a chain is no longer than the ring; an INDIRECT descriptor is alone in its
//! chain, its table a whole number of descriptors carrying WRITE as their only flag; the
//! buffer ID, read from the last descriptor as the specification has it, is also in the first
//! (QEMU up to 9.0 reads it there) and not already in flight; the descriptors in flight never
//! exceed the ring. The chain's buffers are copied out at fetch, as a device must: used
//! descriptors written out of order overwrite chains still in flight.
//!
//! Completing: a used descriptor at the device's used position (ID, length, then AVAIL and
//! USED equal to the device's wrap counter), which then skips the buffer's chain. Event
//! suppression: the driver's structure must hold a valid mode; the device's is DESC at the
//! next position to fetch with EVENT_IDX, ENABLE without.

use super::chain::{keep_read_shape, push, read_three, Buf, Each, Fetched};
use super::{cold, dma, State, Violation, R};
use crate::spec::packed::{
    DESC_FLAGS, DESC_F_AVAIL, DESC_F_USED, DESC_ID, DESC_LEN, EVENT_FLAGS, EVENT_F_DESC,
    EVENT_F_ENABLE, EVENT_OFF_WRAP, EVENT_SIZE, EVENT_WRAP,
};
use crate::spec::ring::desc_fields;
use crate::spec::{feature, ring};
use mfio_dma::{DeviceMemory, DmaView, Iova};
use std::sync::atomic::{fence, Ordering};

const KNOWN_FLAGS: u16 =
    ring::DESC_F_NEXT | ring::DESC_F_WRITE | ring::DESC_F_INDIRECT | DESC_F_AVAIL | DESC_F_USED;

/// Whether `flags` mark a descriptor available in a lap whose wrap counter is `wrap`.
fn available(flags: u16, wrap: bool) -> bool {
    (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
}

/// A descriptor: (addr, len, id, flags).
type PDesc = (u64, u32, u16, u16);

/// The descriptor at `at`, its flags read first (see `DeviceMemory::read_entry_le64s`).
#[inline(always)]
fn read_desc(m: &DmaView, at: u64) -> R<PDesc> {
    Ok(desc_fields(m.read_entry_le64s::<2>(Iova(at)).map_err(dma)?))
}

/// Checks the ring areas at QUEUE_ENABLE (alignment, mapping, a zeroed ring) and sets the
/// queue's packed state up.
pub(super) fn enable(st: &mut State, m: &DmaView, q: usize) -> Result<(), String> {
    let mq = st.queues[q];
    let n = usize::from(mq.size);
    let checks = [
        ("descriptor ring", mq.desc, 16u64, n * ring::DESC_SIZE),
        ("driver event suppression", mq.driver, 4, EVENT_SIZE),
        ("device event suppression", mq.device, 4, EVENT_SIZE),
    ];
    for (what, iova, align, len) in checks {
        if iova % align != 0 || !m.is_mapped(Iova(iova), len) {
            return Err(format!(
                "queue {q}: {what} at {iova:#x} ({len} bytes) is misaligned or unmapped"
            ));
        }
    }
    let mut ring_bytes = vec![0u8; n * ring::DESC_SIZE];
    m.read(Iova(mq.desc), &mut ring_bytes).map_err(|e| e.to_string())?;
    if let Some(at) = ring_bytes.iter().position(|&b| b != 0) {
        return Err(format!(
            "queue {q}: the descriptor ring is not zeroed (byte {at}): stale flags could read as available"
        ));
    }
    let w = &mut st.work[q];
    w.seen = vec![0; n];
    w.ids = vec![0; 1 << 10];
    w.in_flight = 0;
    let mq = &mut st.queues[q];
    (mq.avail_pos, mq.avail_wrap, mq.used_pos, mq.used_wrap) = (0, true, 0, true);
    let event_idx = st.driver_features & feature::EVENT_IDX != 0;
    write_device_event(m, mq.device, 0, true, event_idx).map_err(|Violation(v)| v)
}

/// The device's event suppression: with EVENT_IDX, "tell me when you make the descriptor at
/// `pos` of the lap `wrap` available" (what it has fetched so far); otherwise ENABLE.
fn write_device_event(m: &DmaView, at: u64, pos: u16, wrap: bool, idx: bool) -> R<()> {
    let (off_wrap, flags) = if idx {
        (pos | if wrap { EVENT_WRAP } else { 0 }, EVENT_F_DESC)
    } else {
        (0, EVENT_F_ENABLE)
    };
    m.write_le16(Iova(at + EVENT_OFF_WRAP as u64), off_wrap).map_err(dma)?;
    m.write_le16(Iova(at + EVENT_FLAGS as u64), flags).map_err(dma)
}

/// Fetches every chain made available since the last call into `f`, handing each to `each`
/// (which carries it out, or keeps it by swapping in another entry).
pub(super) fn fetch(
    st: &mut State,
    m: &DmaView,
    q: usize,
    f: &mut Fetched,
    each: &mut impl Each,
) -> R<()> {
    let event_idx = st.driver_features & feature::EVENT_IDX != 0;
    loop {
        while fetch_one(st, m, q, f)? {
            each(st, f)?;
        }
        let mq = st.queues[q];
        if !event_idx {
            return Ok(());
        }
        write_device_event(m, mq.device, mq.avail_pos, mq.avail_wrap, true)?;
        // A chain made available while the event was being written may have been published
        // to a driver that read the old event and did not notify: look once more.
        fence(Ordering::SeqCst);
        let at = mq.desc + u64::from(mq.avail_pos) * ring::DESC_SIZE as u64;
        let flags = m.read_le16(Iova(at + DESC_FLAGS as u64)).map_err(dma)?;
        if flags == st.work[q].seen[usize::from(mq.avail_pos)] {
            return Ok(());
        }
    }
}

/// Fetches the chain at the device's position into `f`, if one is available; returns whether
/// one was.
#[inline]
fn fetch_one(st: &mut State, m: &DmaView, q: usize, f: &mut Fetched) -> R<bool> {
    // Field by field: a copy of the whole MQueue loads it in 16-byte pieces over the 2-byte
    // stores that last moved the positions, which the CPU cannot forward (a stall).
    let mq = &st.queues[q];
    let (size, desc, avail_pos, avail_wrap) = (mq.size, mq.desc, mq.avail_pos, mq.avail_wrap);
    let at = |pos: u16| desc + u64::from(pos) * ring::DESC_SIZE as u64;
    // The flags first: the rest of the descriptor is read after them.
    let mut desc = read_desc(m, at(avail_pos))?;
    let flags = desc.3;
    if flags == st.work[q].seen[usize::from(avail_pos)] {
        return Ok(false);
    }
    if !available(flags, avail_wrap) {
        return Err(cold(|| {
            format!(
                "queue {q}: descriptor {} changed to flags {flags:#x}, which do not mark it \
                 available for wrap counter {} (a wrong wrap counter?)",
                avail_pos, avail_wrap as u8
            )
        }));
    }
    let indirect_ok = st.driver_features & feature::INDIRECT_DESC != 0;
    f.clear();
    let (mut pos, mut wrap) = (avail_pos, avail_wrap);
    let mut count = 0u16;
    let mut head_id = 0;
    loop {
        if count > 0 {
            desc = read_desc(m, at(pos))?;
        }
        let (addr, len, id, fl) = desc;
        if count > 0 && !available(fl, wrap) {
            return Err(cold(|| {
                format!(
                    "queue {q}: a chain continues into descriptor {pos}, whose flags {fl:#x} do \
                     not mark it available for wrap counter {}",
                    wrap as u8
                )
            }));
        }
        if fl & !KNOWN_FLAGS != 0 {
            return Err(cold(|| format!("queue {q}: descriptor {pos} has unknown flags {fl:#x}")));
        }
        st.work[q].seen[usize::from(pos)] = fl;
        count += 1;
        if count == 1 {
            head_id = id;
        }
        f.id = u32::from(id);
        if fl & ring::DESC_F_INDIRECT != 0 {
            if !indirect_ok {
                return Err(cold(|| {
                    format!("queue {q}: indirect descriptor without INDIRECT_DESC")
                }));
            }
            if fl & ring::DESC_F_NEXT != 0 || count != 1 {
                return Err(cold(|| {
                    format!("queue {q}: indirect descriptor {pos} in a chain linked by NEXT")
                }));
            }
            indirect_table(m, q, addr, len, f)?;
        } else {
            push(f, q, addr, len, fl)?;
        }
        (pos, wrap) = if pos + 1 == size { (0, !wrap) } else { (pos + 1, wrap) };
        if fl & ring::DESC_F_NEXT == 0 {
            break;
        }
        if count == size {
            return Err(cold(|| format!("queue {q}: a chain longer than the ring ({size})")));
        }
    }
    let id = f.id as u16;
    if head_id != id {
        return Err(cold(|| {
            format!(
                "queue {q}: buffer ID {id} in the chain's last descriptor but {head_id} in its \
                 first (QEMU up to 9.0 reads the first)"
            )
        }));
    }
    let w = &mut st.work[q];
    let (word, bit) = (usize::from(id) / 64, 1u64 << (id % 64));
    if w.ids[word] & bit != 0 {
        return Err(cold(|| {
            format!("queue {q}: buffer ID {id} made available again while still in flight")
        }));
    }
    if w.in_flight + u32::from(count) > u32::from(size) {
        return Err(cold(|| {
            format!(
                "queue {q}: {} descriptors in flight, more than the ring's {size}",
                w.in_flight + u32::from(count)
            )
        }));
    }
    w.ids[word] |= bit;
    w.in_flight += u32::from(count);
    f.ndescs = count;
    let mq = &mut st.queues[q];
    (mq.avail_pos, mq.avail_wrap) = (pos, wrap);
    Ok(true)
}

/// Reads the indirect table at `addr` (`len` bytes) into `f`.
fn indirect_table(m: &DmaView, q: usize, addr: u64, len: u32, f: &mut Fetched) -> R<()> {
    if len == 0 || len % 16 != 0 {
        return Err(cold(|| format!("queue {q}: indirect table of {len} bytes")));
    }
    f.indirect = true;
    let entry = |f: &mut Fetched, i: usize, d: PDesc| {
        let (a, l, _id, fl) = d;
        if fl & !ring::DESC_F_WRITE != 0 {
            return Err(cold(|| {
                format!(
                    "queue {q}: indirect table entry {i} has flags {fl:#x} (WRITE is the only \
                     one allowed)"
                )
            }));
        }
        push(f, q, a, l, fl)
    };
    if len == 48 {
        // Header, one data buffer, status: the usual request, as six u64s in registers (read
        // through the stack array below, it measured slower per I/O).
        let d = read_three(m, addr)?;
        // One readable buffer then two writable ones: what three pushes would accept and
        // record, recorded at once.
        if [d[0].3, d[1].3, d[2].3] == [0, ring::DESC_F_WRITE, ring::DESC_F_WRITE] {
            return keep_read_shape(f, q, d.map(|(addr, len, _, _)| Buf { addr, len }));
        }
        for (i, e) in d.into_iter().enumerate() {
            entry(f, i, e)?;
        }
        return Ok(());
    }
    // Other small tables in one bounds-checked read of the u64s the driver stored; larger
    // ones entry by entry.
    let n = len as usize / 16;
    let mut small = [0u64; 2 * 8];
    if n <= 8 {
        m.read_le64_slice(Iova(addr), &mut small[..2 * n]).map_err(dma)?;
    }
    for i in 0..n {
        let d = if n <= 8 {
            desc_fields([small[2 * i], small[2 * i + 1]])
        } else {
            read_desc(m, addr + 16 * i as u64)?
        };
        entry(f, i, d)?;
    }
    Ok(())
}

/// Writes the used descriptor of `f` at the device's used position, which then skips its
/// chain.
pub(super) fn complete(st: &mut State, m: &DmaView, q: usize, f: &Fetched, written: u32) -> R<()> {
    let mq = &mut st.queues[q];
    let at = mq.desc + u64::from(mq.used_pos) * ring::DESC_SIZE as u64;
    let wrap = if mq.used_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
    let flags = wrap | if written > 0 { ring::DESC_F_WRITE } else { 0 };
    // The length, ID and flags in one release store: the flags that make the descriptor the
    // driver's to read become visible with the rest, never before, and after the data.
    let word = u64::from(written) | u64::from(f.id as u16) << 32 | u64::from(flags) << 48;
    m.store_release_le64(Iova(at + DESC_LEN as u64), word).map_err(dma)?;
    let w = &mut st.work[q];
    w.seen[usize::from(mq.used_pos)] = flags;
    mq.used_pos += f.ndescs;
    if mq.used_pos >= mq.size {
        mq.used_pos -= mq.size;
        mq.used_wrap = !mq.used_wrap;
    }
    let id = f.id as usize;
    w.ids[id / 64] &= !(1u64 << (id % 64));
    w.in_flight -= u32::from(f.ndescs);
    Ok(())
}

/// Checks the driver's event suppression structure (read before sending a used buffer
/// notification, which this polled model never does, but the value must still be valid).
pub(super) fn check_driver_event(st: &State, m: &DmaView, q: usize) -> R<()> {
    let at = st.queues[q].driver + EVENT_FLAGS as u64;
    let flags = m.read_le16(Iova(at)).map_err(dma)?;
    let max = if st.driver_features & feature::EVENT_IDX != 0 { EVENT_F_DESC } else { 1 };
    if flags > max {
        return Err(cold(|| {
            format!(
                "queue {q}: driver event suppression flags {flags:#x} (reserved bits, or DESC \
                 without EVENT_IDX)"
            )
        }));
    }
    Ok(())
}

/// Whether the driver wants a used buffer notification now that the used position moved on
/// from `before` (position, wrap counter), per its event suppression structure: ENABLE,
/// DISABLE, or with EVENT_IDX DESC: when the descriptor at its `off_wrap` was used.
pub(super) fn wants_notification(
    st: &State,
    m: &DmaView,
    q: usize,
    before: (u16, bool),
) -> R<bool> {
    let mq = &st.queues[q];
    let flags = m.read_le16(Iova(mq.driver + EVENT_FLAGS as u64)).map_err(dma)?;
    Ok(match flags & 3 {
        EVENT_F_ENABLE => true,
        EVENT_F_DESC => {
            let off_wrap = m.read_le16(Iova(mq.driver + EVENT_OFF_WRAP as u64)).map_err(dma)?;
            // Positions on a ring of twice the size, the wrap counter as the lap.
            let n = u32::from(mq.size);
            let lin = |pos: u16, wrap: bool| u32::from(pos) + if wrap { 0 } else { n };
            let (old, new) = (lin(before.0, before.1), lin(mq.used_pos, mq.used_wrap));
            let event = lin(off_wrap & !EVENT_WRAP, off_wrap & EVENT_WRAP != 0);
            (event + 2 * n - old) % (2 * n) < (new + 2 * n - old) % (2 * n)
        }
        _ => false,
    })
}

/// A used descriptor naming buffer `id` at the device's used position, written as a buggy
/// device would.
pub(super) fn inject_stray(st: &mut State, m: &DmaView, q: usize, id: u32) -> R<()> {
    let mq = &mut st.queues[q];
    let at = mq.desc + u64::from(mq.used_pos) * ring::DESC_SIZE as u64;
    m.write_le16(Iova(at + DESC_ID as u64), id as u16).map_err(dma)?;
    let flags = if mq.used_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
    fence(Ordering::Release);
    m.write_le16(Iova(at + DESC_FLAGS as u64), flags).map_err(dma)?;
    st.work[q].seen[usize::from(mq.used_pos)] = flags;
    (mq.used_pos, mq.used_wrap) = if mq.used_pos + 1 == mq.size {
        (0, !mq.used_wrap)
    } else {
        (mq.used_pos + 1, mq.used_wrap)
    };
    Ok(())
}
