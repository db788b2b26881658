//! The model's split ring (virtio 1.x, 2.7): fetching chains from the available ring (ids,
//! loops, flags, indirect rules, a descriptor reused while its chain is in flight) and writing
//! used elements and the used index.

use super::chain::{keep_read_shape, push, read_three, Buf, Each, Fetched};
use super::{cold, dma, State, R};
use crate::spec::{feature, ring};
use mfio_dma::{DeviceMemory, DmaView, Iova};
use std::sync::atomic::{fence, Ordering};

/// Reads descriptor `i` of the table at `table`: (addr, len, flags, next).
fn read_desc(m: &DmaView, table: u64, i: u64) -> R<(u64, u32, u16, u16)> {
    let at = table + i * ring::DESC_SIZE as u64;
    Ok(ring::desc_fields(m.read_le64s::<2>(Iova(at)).map_err(dma)?))
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
    let mq = st.queues[q];
    let flags = m.read_le16(Iova(mq.driver)).map_err(dma)?;
    if flags & !ring::AVAIL_F_NO_INTERRUPT != 0 {
        return Err(cold(|| format!("queue {q}: available ring flags {flags:#x}")));
    }
    let avail_idx = m.read_le16(Iova(mq.driver + 2)).map_err(dma)?;
    // The ring entries and descriptors are read after the index that published them.
    fence(Ordering::Acquire);
    let n = avail_idx.wrapping_sub(mq.last_avail);
    if n > mq.size {
        return Err(cold(|| {
            format!(
                "queue {q}: available index {avail_idx} is {n} past the device's {} (size {})",
                mq.last_avail, mq.size
            )
        }));
    }
    for k in 0..n {
        let last = mq.last_avail.wrapping_add(k);
        let slot = u64::from(last % mq.size);
        let head = m.read_le16(Iova(mq.driver + 4 + 2 * slot)).map_err(dma)?;
        f.clear();
        f.id = u32::from(head);
        walk(m, st, q, head, f)?;
        st.queues[q].last_avail = last.wrapping_add(1);
        each(st, f)?;
    }
    if st.driver_features & feature::EVENT_IDX != 0 {
        // Tell me when you pass what I have seen.
        let at = mq.device + ring::used_size(mq.size) as u64 - 2;
        m.write_le16(Iova(at), st.queues[q].last_avail).map_err(dma)?;
    }
    Ok(())
}

/// Walks the chain headed by `head` into `f` (its buffers and descriptor ids), marking its
/// descriptors busy until used.
fn walk(m: &DmaView, st: &mut State, q: usize, head: u16, f: &mut Fetched) -> R<()> {
    let (size, table) = (st.queues[q].size, st.queues[q].desc);
    let indirect_ok = st.driver_features & feature::INDIRECT_DESC != 0;
    let busy = &mut st.work[q].busy;
    let mut id = head;
    loop {
        if id >= size {
            return Err(cold(|| format!("queue {q}: descriptor id {id} >= queue size {size}")));
        }
        if std::mem::replace(&mut busy[usize::from(id)], true) {
            return Err(cold(|| {
                format!("queue {q}: descriptor {id} used twice (a loop, or in two chains at once)")
            }));
        }
        f.descs.push(id);
        let (addr, len, flags, next) = read_desc(m, table, u64::from(id))?;
        if flags & !(ring::DESC_F_NEXT | ring::DESC_F_WRITE | ring::DESC_F_INDIRECT) != 0 {
            return Err(cold(|| {
                format!("queue {q}: descriptor {id} has unknown flags {flags:#x}")
            }));
        }
        if flags & ring::DESC_F_INDIRECT != 0 {
            if !indirect_ok {
                return Err(cold(|| {
                    format!("queue {q}: indirect descriptor without INDIRECT_DESC")
                }));
            }
            if flags & (ring::DESC_F_NEXT | ring::DESC_F_WRITE) != 0 || id != head {
                return Err(cold(|| {
                    format!(
                    "queue {q}: indirect descriptor {id} with NEXT or WRITE, or not alone in its chain"
                )
                }));
            }
            if len == 0 || len % 16 != 0 {
                return Err(cold(|| format!("queue {q}: indirect table of {len} bytes")));
            }
            f.indirect = true;
            if len == 48 {
                // Header -> data -> status, linked in table order: the usual read, read whole
                // and recorded as three pushes would (see `keep_read_shape`).
                let d = read_three(m, addr)?;
                let (next, write) = (ring::DESC_F_NEXT, ring::DESC_F_WRITE);
                let links = [(d[0].2, d[0].3), (d[1].2, d[1].3), (d[2].2, d[2].3)];
                if links[0] == (next, 1) && links[1] == (next | write, 2) && links[2].0 == write {
                    return keep_read_shape(f, q, d.map(|(addr, len, _, _)| Buf { addr, len }));
                }
            }
            let n = u64::from(len / 16);
            let mut i = 0u64;
            let mut count = 0;
            loop {
                count += 1;
                if count > n {
                    return Err(cold(|| format!("queue {q}: indirect table loops")));
                }
                let (a, l, fl, nx) = read_desc(m, addr, i)?;
                if fl & ring::DESC_F_INDIRECT != 0 {
                    return Err(cold(|| format!("queue {q}: nested indirect table")));
                }
                push(f, q, a, l, fl)?;
                if fl & ring::DESC_F_NEXT == 0 {
                    break;
                }
                if u64::from(nx) >= n {
                    return Err(cold(|| {
                        format!("queue {q}: indirect next {nx} past the table of {n}")
                    }));
                }
                i = u64::from(nx);
            }
            return Ok(());
        }
        push(f, q, addr, len, flags)?;
        if flags & ring::DESC_F_NEXT == 0 {
            return Ok(());
        }
        id = next;
    }
}

/// Writes the used element of `f` (its descriptors are free again); the index follows in
/// [`publish_used`].
pub(super) fn complete(st: &mut State, m: &DmaView, q: usize, f: &Fetched, written: u32) -> R<()> {
    let mq = &mut st.queues[q];
    let slot = u64::from(mq.used_idx % mq.size);
    // ID and length in one bounds-checked write (the element is only 4-byte aligned).
    let elem = u64::from(f.id) | u64::from(written) << 32;
    m.write_le64(Iova(mq.device + 4 + 8 * slot), elem).map_err(dma)?;
    mq.used_idx = mq.used_idx.wrapping_add(1);
    for &d in &f.descs {
        st.work[q].busy[usize::from(d)] = false;
    }
    Ok(())
}

/// Publishes the used elements written so far: the used index, after them.
pub(super) fn publish_used(st: &State, m: &DmaView, q: usize) -> R<()> {
    let mq = &st.queues[q];
    fence(Ordering::SeqCst);
    m.write_le16(Iova(mq.device + 2), mq.used_idx).map_err(dma)
}

/// Whether the driver wants a used buffer notification now that the used index moved on
/// from `old`: per `used_event` with EVENT_IDX, else unless the available ring's flags say
/// NO_INTERRUPT.
pub(super) fn wants_notification(st: &State, m: &DmaView, q: usize, old: u16) -> R<bool> {
    let mq = &st.queues[q];
    if st.driver_features & feature::EVENT_IDX != 0 {
        let at = mq.driver + 4 + 2 * u64::from(mq.size);
        let used_event = m.read_le16(Iova(at)).map_err(dma)?;
        Ok(ring::need_event(used_event, mq.used_idx, old))
    } else {
        let flags = m.read_le16(Iova(mq.driver)).map_err(dma)?;
        Ok(flags & ring::AVAIL_F_NO_INTERRUPT == 0)
    }
}

/// A used element naming descriptor `id`, written as a buggy device would.
pub(super) fn inject_stray(st: &mut State, m: &DmaView, q: usize, id: u32) -> R<()> {
    let f = Fetched { id, ..Fetched::default() };
    complete(st, m, q, &f, 0)?;
    publish_used(st, m, q)
}
