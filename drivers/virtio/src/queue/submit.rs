//! Turning a request into a descriptor chain: plan its data's IOVA segments, reserve
//! descriptors (and a bounce buffer), fill its control slot (header, status, range), and add
//! the chain (indirect or direct). One function on purpose: cut into helpers, the same
//! steps cost 40 to 70 more instructions per I/O (callgrind), the request's fields going
//! through memory between them.

use super::*;

impl<D: PciDevice> BlkQueue<D> {
    /// Fills `st.segs` with the IOVA segments of up to `want` bytes at `ptr`, within the
    /// segment limits; returns the bytes covered (whole blocks when cut short; 0 when the
    /// memory is not DMA-mapped from its first byte).
    #[inline(always)]
    fn plan(&self, st: &mut State, ptr: *const u8, want: usize) -> usize {
        let State { tr, segs, seg_limit, .. } = st;
        segs.clear();
        // Fast path (inline): one mapped chunk holds it all and one descriptor can carry it.
        if *seg_limit > 0 && want <= self.limits.size_max {
            if let Some(iova) = tr.contiguous(ptr, want) {
                segs.push(IovaSegment { iova, len: want });
                return want;
            }
        }
        self.plan_pieces(st, ptr, want)
    }

    /// [`plan`](Self::plan) when the buffer spans chunks or descriptors: out of line.
    #[inline(never)]
    fn plan_pieces(&self, st: &mut State, ptr: *const u8, want: usize) -> usize {
        let State { tr, segs, seg_limit, .. } = st;
        let mut total = 0usize;
        'outer: for s in tr.segments(ptr, want) {
            let Ok(s) = s else { break };
            let (mut iova, mut left) = (s.iova.get(), s.len);
            while left > 0 {
                if segs.len() == *seg_limit {
                    break 'outer;
                }
                let n = left.min(self.limits.size_max);
                segs.push(IovaSegment { iova: Iova(iova), len: n });
                total += n;
                iova += n as u64;
                left -= n;
            }
        }
        if total == want {
            return total;
        }
        let keep = total / self.block_size as usize * self.block_size as usize;
        let mut acc = 0usize;
        let mut n = 0;
        for s in segs.iter_mut() {
            if acc == keep {
                break;
            }
            s.len = s.len.min(keep - acc);
            acc += s.len;
            n += 1;
        }
        segs.truncate(n);
        keep
    }

    /// Puts one request (or its first piece) on the ring. `Ok(rest)`: done, with what is left
    /// of it; `Err(p)`: out of resources, try again after completions.
    #[inline(always)] // One caller; the request's fields stay in registers.
    pub(super) fn submit(&self, st: &mut State, p: Pending) -> Result<Option<Pending>, Pending> {
        // The buffer ID the request will have, and so its control slot.
        let Some(id) = st.parts.vq.next_id() else {
            return Err(p);
        };
        let Pending { op, pos, range, view } = p;
        let mut bounce = None;
        let mut rest = None;
        let (view, data_len) = match op {
            Op::Read | Op::Write => {
                let len = view.len();
                let mut piece = self.plan(st, view.ptr(), len.min(self.limits.max_transfer));
                if piece == 0 {
                    let Some(b) = st.parts.bounce.alloc() else {
                        return Err(Pending { op, pos, range, view });
                    };
                    let ptr = st.parts.bounce.ptr(&b);
                    piece = self.plan(
                        st,
                        ptr,
                        len.min(self.limits.bounce_size).min(self.limits.max_transfer),
                    );
                    if piece == 0 {
                        st.parts.bounce.free(b).expect("bounce slot of this queue");
                        view.complete(Err(Error::new(ErrorKind::Dma, Origin::Virtio)));
                        return Ok(None);
                    }
                    bounce = Some(b);
                }
                let need = if self.limits.indirect { 1 } else { st.segs.len() as u16 + 2 };
                if st.parts.vq.num_free() < need {
                    if let Some(b) = bounce {
                        st.parts.bounce.free(b).expect("bounce slot of this queue");
                    }
                    return Err(Pending { op, pos, range, view });
                }
                let view = if piece < len {
                    let (head, tail) = view.split_at(piece);
                    rest = Some(Pending { op, pos: pos + piece as u64, range, view: tail });
                    head
                } else {
                    view
                };
                (view, piece)
            }
            Op::Discard | Op::WriteZeroes { .. } => {
                let need = if self.limits.indirect { 1 } else { 3 };
                if st.parts.vq.num_free() < need {
                    return Err(Pending { op, pos, range, view });
                }
                let max_sectors = if op == Op::Discard {
                    self.shared.info.max_discard_sectors
                } else {
                    self.shared.info.max_write_zeroes_sectors
                };
                let bs = u64::from(self.block_size);
                let max = (u64::from(max_sectors) * blk::SECTOR_SIZE / bs * bs).max(bs);
                let piece = range.min(max);
                let view = if piece < range {
                    let (head, tail) = view.split_at(0);
                    rest = Some(Pending { op, pos: pos + piece, range: range - piece, view: tail });
                    head
                } else {
                    view
                };
                (view, piece as usize)
            }
            Op::Flush | Op::GetId => {
                let need = if self.limits.indirect {
                    1
                } else if op == Op::Flush {
                    2
                } else {
                    3
                };
                if st.parts.vq.num_free() < need {
                    return Err(Pending { op, pos, range, view });
                }
                (view, 0)
            }
        };
        let cm = st.parts.ctrl_mem(id);
        let ctrl_iova = st.parts.ctrl_iova[usize::from(id)];
        let sector = pos / blk::SECTOR_SIZE;
        let kind = match op {
            Op::Read => blk::T_IN,
            Op::Write => blk::T_OUT,
            Op::Flush => blk::T_FLUSH,
            Op::GetId => blk::T_GET_ID,
            Op::Discard => blk::T_DISCARD,
            Op::WriteZeroes { .. } => blk::T_WRITE_ZEROES,
        };
        // Type, reserved, sector: as two u64s (a device reads it whole; same-width loads are
        // forwarded from the store buffer, narrower stores under a wider load are not).
        let header_sector = if matches!(op, Op::Read | Op::Write) { sector } else { 0 };
        cm.write_le64s(CTRL_HEADER, [u64::from(kind), header_sector]);
        cm.write_u8(CTRL_STATUS, STATUS_UNSET);
        if let (Some(b), AnyView::To(v)) = (&bounce, &view) {
            st.parts.bounce.mem(b).copy_from_slice(0, v.as_slice());
        }
        if let Op::Discard | Op::WriteZeroes { .. } = op {
            cm.write_le64(CTRL_RANGE, sector);
            cm.write_le32(CTRL_RANGE + 8, (data_len as u64 / blk::SECTOR_SIZE) as u32);
            let unmap = matches!(op, Op::WriteZeroes { unmap: true });
            cm.write_le32(CTRL_RANGE + 12, if unmap { blk::RANGE_F_UNMAP } else { 0 });
        }
        // The chain: header, data, status.
        // Built where used (not kept in a variable): copied from where it was stored in pieces,
        // a descriptor is a load wider than those stores, which the CPU cannot forward (a
        // stall measured at half of `send_io`).
        let header = || Desc { addr: ctrl_iova, len: blk::HEADER_SIZE as u32, flags: 0 };
        let status =
            || Desc { addr: ctrl_iova + CTRL_STATUS as u64, len: 1, flags: ring::DESC_F_WRITE };
        let nseg = match op {
            Op::Read | Op::Write => st.segs.len(),
            Op::Flush => 0,
            _ => 1,
        };
        let data_flags = if matches!(op, Op::Read | Op::GetId) { ring::DESC_F_WRITE } else { 0 };
        let segs = &st.segs;
        let desc_of = |k: usize| -> Desc {
            if k == 0 {
                header()
            } else if k == nseg + 1 {
                status()
            } else {
                match op {
                    Op::Read | Op::Write => {
                        let s = segs[k - 1];
                        Desc { addr: s.iova.get(), len: s.len as u32, flags: data_flags }
                    }
                    Op::GetId => Desc {
                        addr: ctrl_iova + CTRL_ID as u64,
                        len: blk::ID_BYTES as u32,
                        flags: ring::DESC_F_WRITE,
                    },
                    _ => Desc {
                        addr: ctrl_iova + CTRL_RANGE as u64,
                        len: blk::RANGE_SIZE as u32,
                        flags: 0,
                    },
                }
            }
        };
        let n = nseg + 2;
        let added = if self.limits.indirect {
            let table = cm.sub(CTRL_TABLE, n * ring::DESC_SIZE).expect("the table fits its slot");
            if let (Op::Read | Op::Write, [s]) = (op, &segs[..]) {
                // One data segment (almost every request): the three entries without asking
                // `desc_of` which one each is.
                let data = Desc { addr: s.iova.get(), len: s.len as u32, flags: data_flags };
                let three = [header(), data, status()];
                st.parts.vq.write_table(&table, 3, |k| three[k]);
            } else {
                st.parts.vq.write_table(&table, n, desc_of);
            }
            let table = Desc {
                addr: ctrl_iova + CTRL_TABLE as u64,
                len: (n * ring::DESC_SIZE) as u32,
                flags: ring::DESC_F_INDIRECT,
            };
            st.parts.vq.add_chain(1, |_| table)
        } else {
            st.parts.vq.add_chain(n as u16, desc_of)
        }
        .expect("descriptors were checked free");
        debug_assert_eq!(added, id, "the buffer ID next_id named");
        if bounce.is_some() {
            st.stats.bounced += 1;
        }
        st.stats.requests += 1;
        tracing::trace!(queue = self.index, id, ?op, sector, len = data_len, "request");
        // Stored over the old entry (None: the ID was free) before that is dropped, so the
        // record goes from registers to its slot; assigned with `=`, it was built on the stack
        // around the drop call and copied with loads wider than its stores (a store-forwarding
        // stall; the profile is in docs/benchmarks.md).
        let old = st.inflight[usize::from(id)].replace(Inflight { op, view, bounce });
        debug_assert!(old.is_none(), "buffer ID {id} was free");
        Ok(rest)
    }
}
