//! Requests: what is asked of the device, waiting for room, and held by it.

use super::*;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes { unmap: bool },
}

pub(super) enum AnyView {
    From(PacketView<FromDevice>),
    To(PacketView<ToDevice>),
}

impl AnyView {
    pub(super) fn len(&self) -> usize {
        match self {
            AnyView::From(v) => v.len(),
            AnyView::To(v) => v.len(),
        }
    }
    pub(super) fn ptr(&self) -> *const u8 {
        match self {
            AnyView::From(v) => v.as_ptr(),
            AnyView::To(v) => v.as_ptr(),
        }
    }
    pub(super) fn split_at(self, mid: usize) -> (AnyView, AnyView) {
        match self {
            AnyView::From(v) => {
                let (a, b) = v.split_at(mid);
                (AnyView::From(a), AnyView::From(b))
            }
            AnyView::To(v) => {
                let (a, b) = v.split_at(mid);
                (AnyView::To(a), AnyView::To(b))
            }
        }
    }
    #[inline(always)]
    pub(super) fn complete(self, r: Result<(), Error>) {
        match self {
            AnyView::From(v) => v.complete(r),
            AnyView::To(v) => v.complete(r),
        }
    }
}

/// A request waiting for descriptors, a control slot or a bounce buffer.
pub(super) struct Pending {
    pub(super) op: Op,
    /// Byte offset on the device.
    pub(super) pos: u64,
    /// Bytes of a discard / write-zeroes range (its view is empty).
    pub(super) range: u64,
    pub(super) view: AnyView,
}

/// A request the device holds, by buffer ID (split: its head descriptor's index).
pub(super) struct Inflight {
    pub(super) op: Op,
    pub(super) view: AnyView,
    pub(super) bounce: Option<PoolSlot>,
}

pub(super) fn map_status(s: u8) -> Result<(), Error> {
    match s {
        blk::S_OK => Ok(()),
        blk::S_UNSUPP => {
            Err(Error::new(ErrorKind::Unsupported, Origin::Virtio).with_status(u16::from(s)))
        }
        other => Err(Error::device(Origin::Virtio, u16::from(other))),
    }
}
