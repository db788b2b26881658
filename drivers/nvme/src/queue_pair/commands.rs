//! The block commands beyond Read and Write: Flush, Deallocate (discard), Write Zeroes and
//! writes with FUA. Each rides an empty packet view (or, for FUA, the write's own) through the
//! same slots as the data path, so it completes, fails and recovers like any other command.

use super::slots::{Other, Pending};
use super::{unpark, IoQueue, ORIGIN};
use crate::spec::{Command, IdentifyController, IdentifyNamespace};
use mfio::{
    BlockCommands, BlockDevice, Capabilities, Error, ErrorKind, Fua, PacketIo, PacketView,
    ToDevice, Zeroes,
};
use mfio_pci::PciDevice;
use std::future::Future;

impl<D: PciDevice> IoQueue<D> {
    /// A command without data, behind what waits (these are rare: no fast path).
    fn send_other(&self, op: Other, view: PacketView<ToDevice>) {
        let mut inner = self.inner.borrow_mut();
        inner.enqueue(Pending::Other(op, view), self);
        unpark(inner);
    }

    /// Splits a block range into commands of at most 65536 blocks, one empty view each.
    fn send_ranged(
        &self,
        pos: u64,
        len: u64,
        view: PacketView<ToDevice>,
        make: impl Fn(u64, u32) -> Other,
    ) {
        let bs = u64::from(self.ns.block_size);
        if let Err(e) = mfio::check_range(pos, len, self.capacity(), self.ns.block_size, ORIGIN) {
            return view.fail(e);
        }
        let (mut slba, mut left) = (pos / bs, len / bs);
        if left == 0 {
            return view.ok();
        }
        let mut rest = Some(view);
        while let Some(v) = rest.take() {
            let n = left.min(65536);
            left -= n;
            let this = if left > 0 {
                let (a, b) = v.split_at(0);
                rest = Some(b);
                a
            } else {
                v
            };
            self.send_other(make(slba, n as u32), this);
            slba += n;
        }
    }
}

impl<D: PciDevice> BlockCommands for IoQueue<D> {
    /// From Identify: VWC (a volatile write cache), ONCS (Dataset Management, Write Zeroes)
    /// and the namespace's DLFEAT (Write Zeroes may deallocate). FUA is part of every NVMe
    /// write.
    fn capabilities(&self) -> Capabilities {
        let id = self.ctrl.identify();
        let dlfeat = self.ns.identify.dlfeat;
        Capabilities {
            volatile_cache: id.vwc & 1 != 0,
            fua: true,
            discard: id.oncs & IdentifyController::ONCS_DSM != 0,
            // Deallocate is advisory: DLFEAT says what a deallocated block reads, not that
            // Dataset Management deallocated it (QEMU's ignores it on an image opened without
            // discard=unmap, and still reports DLFEAT 1).
            discard_zeroes: false,
            write_zeroes: id.oncs & IdentifyController::ONCS_WRITE_ZEROES != 0,
            zeroes_unmap: dlfeat & IdentifyNamespace::DLFEAT_WRITE_ZEROES_DEAC != 0,
            read_only: false,
        }
    }

    /// Flush: the controller's volatile write cache reaches the media.
    fn flush(&self) -> impl Future<Output = Result<(), Error>> + '_ {
        mfio::command(self, |q: &Self, view| q.send_other(Other::Flush, view))
    }

    /// Deallocate (Dataset Management): one command per 65536 blocks.
    fn discard(&self, pos: u64, len: u64) -> impl Future<Output = Result<(), Error>> + '_ {
        let supported = self.capabilities().discard;
        mfio::command(self, move |q: &Self, view| match supported {
            true => {
                q.send_ranged(pos, len, view, |slba, blocks| Other::Deallocate { slba, blocks })
            }
            false => view.fail(Error::new(ErrorKind::Unsupported, ORIGIN)),
        })
    }

    /// Write Zeroes, with DEAC when the blocks may be unmapped and the namespace can.
    fn write_zeroes(
        &self,
        pos: u64,
        len: u64,
        zeroes: Zeroes,
    ) -> impl Future<Output = Result<(), Error>> + '_ {
        let caps = self.capabilities();
        let deac = zeroes == Zeroes::MayUnmap && caps.zeroes_unmap;
        mfio::command(self, move |q: &Self, view| match caps.write_zeroes {
            true => q.send_ranged(pos, len, view, |slba, blocks| Other::WriteZeroes {
                slba,
                blocks,
                deac,
            }),
            false => view.fail(Error::new(ErrorKind::Unsupported, ORIGIN)),
        })
    }

    /// One Write with FUA per piece (the data is durable when each completes).
    fn write_all_fua<B: mfio::IoBuf>(
        &self,
        pos: u64,
        buf: B,
    ) -> impl Future<Output = (Result<(), mfio::PartialError>, B)> + '_ {
        mfio::Io::<Self, ToDevice, B, mfio::All, Fua>::new(self, Fua(pos), buf)
    }
}

impl<D: PciDevice> PacketIo<ToDevice, Fua> for IoQueue<D> {
    fn send_io(&self, pos: Fua, view: PacketView<ToDevice>) {
        self.send_rw(pos.0, view, Command::FUA);
    }
}
