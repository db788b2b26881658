//! The model's virtio-blk side: a fetched chain's buffers as a request (header, data,
//! status), checked for framing and lengths, carried out on the backing store, its status
//! byte written.

use super::chain::{Buf, Fetched};
use super::{cold, dma, State, Violation, VirtioBlkModel, R};
use crate::spec::{blk, feature};
use mfio_dma::{DeviceMemory, DmaView, Iova};

/// Bytes of a chain seen as one stream (the readable or the writable part).
struct Stream<'a> {
    bufs: &'a [Buf],
}

impl Stream<'_> {
    /// Calls `f(iova, range in the stream)` for each piece of `[off, off + len)`.
    #[inline(always)]
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
    fn read(&self, m: &DmaView, off: u64, out: &mut [u8]) -> R<()> {
        self.pieces(off, out.len() as u64, |iova, o, n| {
            m.read(Iova(iova), &mut out[o as usize..(o + n) as usize]).map_err(dma)
        })
    }
    fn write(&self, m: &DmaView, off: u64, data: &[u8]) -> R<()> {
        self.pieces(off, data.len() as u64, |iova, o, n| {
            m.write(Iova(iova), &data[o as usize..(o + n) as usize]).map_err(dma)
        })
    }
    /// Checks that `[off, off + len)` is reachable without moving data (null mode).
    #[inline(always)]
    fn touch(&self, m: &DmaView, off: u64, len: u64) -> R<()> {
        match self.bufs {
            // The data in one buffer, the status in the next (the usual read): no walk.
            [d, _] if off == 0 && u64::from(d.len) == len => touch(m, d.addr, len),
            _ => self.pieces(off, len, |iova, _, n| touch(m, iova, n)),
        }
    }
}

/// Checks that `n` bytes at `iova` are mapped (null mode moves no data).
#[inline(always)]
fn touch(m: &DmaView, iova: u64, n: u64) -> R<()> {
    if m.is_mapped(Iova(iova), n as usize) {
        Ok(())
    } else {
        Err(cold(|| format!("data buffer at IOVA {iova:#x} ({n} bytes) is unmapped")))
    }
}

/// Carries out one request; returns the bytes written into the chain (data and status).
pub(super) fn request(model: &VirtioBlkModel, st: &mut State, m: &DmaView, f: &Fetched) -> R<u32> {
    let (rd, wr) = f.bufs().split_at(f.readable);
    let (rlen, wlen) = (f.rlen, f.wlen);
    if rlen < blk::HEADER_SIZE as u64 {
        return Err(cold(|| format!("request header of {rlen} bytes")));
    }
    if wlen < 1 {
        return Err(Violation("request without a status byte".into()));
    }
    let (rd, wr) = (Stream { bufs: rd }, Stream { bufs: wr });
    // The header as the two u64s the driver stores (loads of the stores' width, which a CPU
    // forwards from its store buffer), when its first buffer holds it, as it does in practice.
    let [h0, sector] = if rd.bufs[0].len as usize >= blk::HEADER_SIZE {
        m.read_le64s::<2>(Iova(rd.bufs[0].addr)).map_err(dma)?
    } else {
        let mut h = [0u8; 16];
        rd.read(m, 0, &mut h)?;
        [0, 8].map(|o| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes")))
    };
    let kind = h0 as u32;
    let opts = &model.inner.opts;
    let cap = opts.capacity_sectors;
    let nego = |f: u64| st.driver_features & f != 0;
    let ioerr = |st: &State, s: u64, n: u64| st.ioerr.iter().any(|r| r.start < s + n && s < r.end);
    let in_range = |s: u64, n: u64| s.checked_add(n).is_some_and(|e| e <= cap);
    let exact = |what: &str, got: u64, want: u64| -> R<()> {
        if got == want {
            Ok(())
        } else {
            Err(cold(|| format!("{what}: {got} bytes where {want} belong")))
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
                    return Err(cold(|| format!("read of {len} bytes: not whole sectors")));
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
                    return Err(cold(|| format!("write of {len} bytes: not whole sectors")));
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
                    return Err(cold(|| format!("range request with {ranges} bytes of ranges")));
                }
                if !nego(f) {
                    blk::S_UNSUPP
                } else if ranges / 16 > 1 {
                    // The model's max_*_seg is 1.
                    return Err(cold(|| format!("{} ranges where max_*_seg is 1", ranges / 16)));
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
    // The status is the chain's last byte: the last byte of its last buffer.
    let last = wr.bufs[wr.bufs.len() - 1];
    m.write(Iova(last.addr + u64::from(last.len) - 1), &[status]).map_err(dma)?;
    Ok(written)
}
