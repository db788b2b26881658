//! The model's device side: walks the available ring, checks each descriptor chain, carries
//! out the virtio-blk request, writes the status byte and the used ring.

use super::{State, Violation, VirtioBlkModel};
use crate::spec::{blk, feature, ring};
use mfio_dma::{CheckingMapper, DmaFault, Iova};
use std::sync::atomic::{fence, Ordering};

type R<T> = Result<T, Violation>;

fn dma(e: DmaFault) -> Violation {
    Violation(format!("DMA fault: {e}"))
}

/// Per-batch scratch, kept in the model's state so processing allocates nothing.
#[derive(Default)]
pub(super) struct Scratch {
    busy: Vec<bool>,
    bufs: Vec<Buf>,
}

/// One buffer of a chain.
#[derive(Copy, Clone)]
struct Buf {
    addr: u64,
    len: u32,
    write: bool,
}

/// Bytes of a chain seen as one stream (the readable or the writable part).
struct Stream<'a> {
    bufs: &'a [Buf],
}

impl Stream<'_> {
    fn len(&self) -> u64 {
        self.bufs.iter().map(|b| u64::from(b.len)).sum()
    }
    /// Calls `f(iova, range in the stream)` for each piece of `[off, off + len)`.
    fn pieces(&self, off: u64, len: u64, mut f: impl FnMut(u64, u64, u64) -> R<()>) -> R<()> {
        let (mut at, end) = (0u64, off + len);
        for b in self.bufs {
            let (s, e) = (at, at + u64::from(b.len));
            let (lo, hi) = (s.max(off), e.min(end));
            if lo < hi {
                f(b.addr + (lo - s), lo - off, hi - lo)?;
            }
            at = e;
        }
        Ok(())
    }
    fn read(&self, m: &CheckingMapper, off: u64, out: &mut [u8]) -> R<()> {
        self.pieces(off, out.len() as u64, |iova, o, n| {
            m.read(Iova(iova), &mut out[o as usize..(o + n) as usize]).map_err(dma)
        })
    }
    fn write(&self, m: &CheckingMapper, off: u64, data: &[u8]) -> R<()> {
        self.pieces(off, data.len() as u64, |iova, o, n| {
            m.write(Iova(iova), &data[o as usize..(o + n) as usize]).map_err(dma)
        })
    }
    /// Checks that `[off, off + len)` is reachable without moving data (null mode).
    fn touch(&self, m: &CheckingMapper, off: u64, len: u64) -> R<()> {
        self.pieces(off, len, |iova, _, n| {
            if m.is_mapped(Iova(iova), n as usize) {
                Ok(())
            } else {
                Err(Violation(format!("data buffer at IOVA {iova:#x} ({n} bytes) is unmapped")))
            }
        })
    }
}

fn read_desc(m: &CheckingMapper, table: u64, i: u64) -> R<(u64, u32, u16, u16)> {
    let at = table + i * ring::DESC_SIZE as u64;
    let mut b = [0u8; 16];
    m.read(Iova(at), &mut b).map_err(dma)?;
    Ok((
        u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
        u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
        u16::from_le_bytes([b[12], b[13]]),
        u16::from_le_bytes([b[14], b[15]]),
    ))
}

/// Walks the chain headed by `head`; `busy` marks descriptors used by chains of this batch.
fn walk(
    m: &CheckingMapper,
    st: &State,
    q: usize,
    head: u16,
    busy: &mut [bool],
    bufs: &mut Vec<Buf>,
) -> R<bool> {
    let mq = &st.queues[q];
    let size = mq.size;
    let indirect_ok = st.driver_features & feature::INDIRECT_DESC != 0;
    let mut id = head;
    let mut indirect = false;
    loop {
        if id >= size {
            return Err(Violation(format!("queue {q}: descriptor id {id} >= queue size {size}")));
        }
        if std::mem::replace(&mut busy[usize::from(id)], true) {
            return Err(Violation(format!(
                "queue {q}: descriptor {id} used twice (a loop, or in two chains at once)"
            )));
        }
        let (addr, len, flags, next) = read_desc(m, mq.desc, u64::from(id))?;
        if flags & !(ring::DESC_F_NEXT | ring::DESC_F_WRITE | ring::DESC_F_INDIRECT) != 0 {
            return Err(Violation(format!(
                "queue {q}: descriptor {id} has unknown flags {flags:#x}"
            )));
        }
        if flags & ring::DESC_F_INDIRECT != 0 {
            if !indirect_ok {
                return Err(Violation(format!(
                    "queue {q}: indirect descriptor without INDIRECT_DESC"
                )));
            }
            if flags & (ring::DESC_F_NEXT | ring::DESC_F_WRITE) != 0 || id != head {
                return Err(Violation(format!(
                    "queue {q}: indirect descriptor {id} with NEXT or WRITE, or not alone in its chain"
                )));
            }
            if len == 0 || len % 16 != 0 {
                return Err(Violation(format!("queue {q}: indirect table of {len} bytes")));
            }
            indirect = true;
            let n = u64::from(len / 16);
            let mut i = 0u64;
            let mut count = 0;
            loop {
                count += 1;
                if count > n {
                    return Err(Violation(format!("queue {q}: indirect table loops")));
                }
                let (a, l, f, nx) = read_desc(m, addr, i)?;
                if f & ring::DESC_F_INDIRECT != 0 {
                    return Err(Violation(format!("queue {q}: nested indirect table")));
                }
                push(bufs, q, a, l, f)?;
                if f & ring::DESC_F_NEXT == 0 {
                    break;
                }
                if u64::from(nx) >= n {
                    return Err(Violation(format!(
                        "queue {q}: indirect next {nx} past the table of {n}"
                    )));
                }
                i = u64::from(nx);
            }
            return Ok(indirect);
        }
        push(bufs, q, addr, len, flags)?;
        if flags & ring::DESC_F_NEXT == 0 {
            return Ok(indirect);
        }
        id = next;
    }
}

fn push(bufs: &mut Vec<Buf>, q: usize, addr: u64, len: u32, flags: u16) -> R<()> {
    let write = flags & ring::DESC_F_WRITE != 0;
    if len == 0 {
        return Err(Violation(format!("queue {q}: zero-length descriptor")));
    }
    if !write && bufs.last().is_some_and(|b| b.write) {
        return Err(Violation(format!("queue {q}: device-readable buffer after a writable one")));
    }
    bufs.push(Buf { addr, len, write });
    Ok(())
}

/// Processes every available request of queue `q`.
pub(super) fn process_queue(model: &VirtioBlkModel, st: &mut State, q: usize) -> R<()> {
    let m = model.inner.mapper.clone();
    let (size, avail) = {
        let mq = &st.queues[q];
        (mq.size, mq.avail)
    };
    let flags = m.read_le16(Iova(avail)).map_err(dma)?;
    if flags & !ring::AVAIL_F_NO_INTERRUPT != 0 {
        return Err(Violation(format!("queue {q}: available ring flags {flags:#x}")));
    }
    let avail_idx = m.read_le16(Iova(avail + 2)).map_err(dma)?;
    let n = avail_idx.wrapping_sub(st.queues[q].last_avail);
    if n > size {
        return Err(Violation(format!(
            "queue {q}: available index {avail_idx} is {n} past the device's {} (size {size})",
            st.queues[q].last_avail
        )));
    }
    if n == 0 {
        return Ok(());
    }
    // Descriptors of the chains in this batch: a driver that reuses one before it was used
    // is caught.
    let mut scratch = std::mem::take(&mut st.scratch);
    let r = batch(model, st, &m, q, n, &mut scratch);
    st.scratch = scratch;
    r
}

fn batch(
    model: &VirtioBlkModel,
    st: &mut State,
    m: &CheckingMapper,
    q: usize,
    n: u16,
    scratch: &mut Scratch,
) -> R<()> {
    let (size, avail, used) = {
        let mq = &st.queues[q];
        (mq.size, mq.avail, mq.used)
    };
    let Scratch { busy, bufs } = scratch;
    busy.clear();
    busy.resize(usize::from(size), false);
    for _ in 0..n {
        let last = st.queues[q].last_avail;
        let slot = u64::from(last & (size - 1));
        let head = m.read_le16(Iova(avail + 4 + 2 * slot)).map_err(dma)?;
        bufs.clear();
        let indirect = walk(m, st, q, head, busy, bufs)?;
        let written = request(model, st, m, bufs)?;
        st.requests += 1;
        st.indirect_requests += u64::from(indirect);
        let mq = &mut st.queues[q];
        let uslot = u64::from(mq.used_idx & (size - 1));
        m.write_le32(Iova(used + 4 + 8 * uslot), u32::from(head)).map_err(dma)?;
        m.write_le32(Iova(used + 8 + 8 * uslot), written).map_err(dma)?;
        mq.used_idx = mq.used_idx.wrapping_add(1);
        mq.last_avail = last.wrapping_add(1);
    }
    let mq = &st.queues[q];
    // The entries before the index.
    fence(Ordering::SeqCst);
    m.write_le16(Iova(used + 2), mq.used_idx).map_err(dma)?;
    if st.driver_features & feature::EVENT_IDX != 0 {
        // Tell me when you pass what I have seen.
        m.write_le16(Iova(used + ring::used_size(size) as u64 - 2), mq.last_avail).map_err(dma)?;
    }
    Ok(())
}

/// Carries out one request; returns the bytes written into the chain (data and status).
fn request(model: &VirtioBlkModel, st: &mut State, m: &CheckingMapper, bufs: &[Buf]) -> R<u32> {
    let split = bufs.iter().position(|b| b.write).unwrap_or(bufs.len());
    let rd = Stream { bufs: &bufs[..split] };
    let wr = Stream { bufs: &bufs[split..] };
    let (rlen, wlen) = (rd.len(), wr.len());
    if rlen < blk::HEADER_SIZE as u64 {
        return Err(Violation(format!("request header of {rlen} bytes")));
    }
    if wlen < 1 {
        return Err(Violation("request without a status byte".into()));
    }
    let mut h = [0u8; 16];
    rd.read(m, 0, &mut h)?;
    let kind = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let opts = &model.inner.opts;
    let cap = opts.capacity_sectors;
    let nego = |f: u64| st.driver_features & f != 0;
    let ioerr = |st: &State, s: u64, n: u64| st.ioerr.iter().any(|r| r.start < s + n && s < r.end);
    let in_range = |s: u64, n: u64| s.checked_add(n).is_some_and(|e| e <= cap);
    let exact = |what: &str, got: u64, want: u64| -> R<()> {
        if got == want {
            Ok(())
        } else {
            Err(Violation(format!("{what}: {got} bytes where {want} belong")))
        }
    };
    let mut written = 1u32;
    let status = if st.unsupported.contains(&kind) {
        blk::S_UNSUPP
    } else {
        match kind {
            blk::T_IN => {
                exact("read request's readable part", rlen, 16)?;
                let len = wlen - 1;
                if len % 512 != 0 || len == 0 {
                    return Err(Violation(format!("read of {len} bytes: not whole sectors")));
                }
                if !in_range(sector, len / 512) || ioerr(st, sector, len / 512) {
                    blk::S_IOERR
                } else {
                    if opts.null {
                        wr.touch(m, 0, len)?;
                    } else {
                        let at = (sector * 512) as usize;
                        wr.write(m, 0, &st.disk[at..at + len as usize])?;
                    }
                    written += len as u32;
                    blk::S_OK
                }
            }
            blk::T_OUT => {
                exact("write request's writable part", wlen, 1)?;
                let len = rlen - 16;
                if len % 512 != 0 || len == 0 {
                    return Err(Violation(format!("write of {len} bytes: not whole sectors")));
                }
                if !in_range(sector, len / 512) || ioerr(st, sector, len / 512) {
                    blk::S_IOERR
                } else {
                    if opts.null {
                        rd.touch(m, 16, len)?;
                    } else {
                        let at = (sector * 512) as usize;
                        rd.read(m, 16, &mut st.disk[at..at + len as usize])?;
                    }
                    blk::S_OK
                }
            }
            blk::T_FLUSH => {
                exact("flush request's readable part", rlen, 16)?;
                exact("flush request's writable part", wlen, 1)?;
                if nego(feature::BLK_FLUSH) {
                    blk::S_OK
                } else {
                    blk::S_UNSUPP
                }
            }
            blk::T_GET_ID => {
                exact("get-id request's readable part", rlen, 16)?;
                exact("get-id request's writable part", wlen, blk::ID_BYTES as u64 + 1)?;
                wr.write(m, 0, &opts.id)?;
                written += blk::ID_BYTES as u32;
                blk::S_OK
            }
            blk::T_DISCARD | blk::T_WRITE_ZEROES => {
                let f = if kind == blk::T_DISCARD {
                    feature::BLK_DISCARD
                } else {
                    feature::BLK_WRITE_ZEROES
                };
                exact("range request's writable part", wlen, 1)?;
                let ranges = rlen - 16;
                if ranges == 0 || ranges % 16 != 0 {
                    return Err(Violation(format!("range request with {ranges} bytes of ranges")));
                }
                if !nego(f) {
                    blk::S_UNSUPP
                } else if ranges / 16 > 1 {
                    // The model's max_*_seg is 1.
                    return Err(Violation(format!("{} ranges where max_*_seg is 1", ranges / 16)));
                } else {
                    let mut r = [0u8; 16];
                    rd.read(m, 16, &mut r)?;
                    let s = u64::from_le_bytes(r[0..8].try_into().expect("8 bytes"));
                    let n = u64::from(u32::from_le_bytes(r[8..12].try_into().expect("4 bytes")));
                    let fl = u32::from_le_bytes(r[12..16].try_into().expect("4 bytes"));
                    let flags_ok = if kind == blk::T_DISCARD { fl == 0 } else { fl & !1 == 0 };
                    if !flags_ok {
                        blk::S_UNSUPP
                    } else if n == 0
                        || n > u64::from(opts.max_range_sectors)
                        || !in_range(s, n)
                        || ioerr(st, s, n)
                    {
                        blk::S_IOERR
                    } else {
                        if !opts.null {
                            st.disk[(s * 512) as usize..((s + n) * 512) as usize].fill(0);
                        }
                        blk::S_OK
                    }
                }
            }
            _ => blk::S_UNSUPP,
        }
    };
    wr.write(m, wlen - 1, &[status])?;
    Ok(written)
}
