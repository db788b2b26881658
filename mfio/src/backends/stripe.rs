//! Striping across several devices: fragmentation of one request over many backends.
//!
//! A view is split at stripe-unit boundaries and each piece is sent to the device that holds
//! it; the pieces complete independently, possibly on different devices and out of order, and
//! the packet still reports its good prefix and first error.

use crate::backend::{Activity, BlockDevice, IoBackend, PacketIo};
use crate::block::clip;
use crate::error::Origin;
use crate::perms::PacketPerms;
use crate::PacketView;
use alloc::vec::Vec;
use core::task::Context;

/// RAID-0 over `devices`, in units of `unit` bytes.
pub struct Stripe<B> {
    devices: Vec<B>,
    unit: u64,
    capacity: u64,
    block_size: u32,
}

impl<B: BlockDevice> Stripe<B> {
    /// Stripes over `devices` in units of `unit` bytes.
    ///
    /// The capacity is the largest whole number of stripe units every device holds, times the
    /// number of devices. Returns `None` if there is no device, `unit` is zero, or `unit` is not
    /// a multiple of every device's block size.
    pub fn new(devices: Vec<B>, unit: u64) -> Option<Self> {
        let block_size = devices.iter().map(|d| d.block_size()).max()?;
        if unit == 0 || devices.iter().any(|d| unit % u64::from(d.block_size()) != 0) {
            return None;
        }
        let per_device = devices.iter().map(|d| d.capacity() / unit * unit).min()?;
        let capacity = per_device * devices.len() as u64;
        Some(Self { devices, unit, capacity, block_size })
    }

    /// The devices striped over.
    pub fn devices(&self) -> &[B] {
        &self.devices
    }

    /// Which device holds byte `pos`, and where on that device.
    fn locate(&self, pos: u64) -> (usize, u64) {
        let n = self.devices.len() as u64;
        let unit_index = pos / self.unit;
        let device = (unit_index % n) as usize;
        let device_pos = (unit_index / n) * self.unit + pos % self.unit;
        (device, device_pos)
    }
}

impl<B> BlockDevice for Stripe<B> {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl<B, P> PacketIo<P, u64> for Stripe<B>
where
    B: PacketIo<P, u64> + BlockDevice,
    P: PacketPerms,
{
    fn send_io(&self, mut pos: u64, view: PacketView<P>) {
        let Some(mut view) = clip(pos, view, self.capacity, self.block_size, Origin::Router) else {
            return;
        };
        loop {
            let (device, device_pos) = self.locate(pos);
            let room = self.unit - pos % self.unit;
            if view.len() as u64 <= room {
                self.devices[device].send_io(device_pos, view);
                return;
            }
            let (head, tail) = view.split_at(room as usize);
            self.devices[device].send_io(device_pos, head);
            pos += room;
            view = tail;
        }
    }
}

impl<B: IoBackend> IoBackend for Stripe<B> {
    fn poll_backend(&self, cx: &mut Context<'_>) -> Activity {
        let mut activity = Activity::Idle;
        for d in &self.devices {
            // A member that is armed counts as busy: the stripe has no one descriptor to sleep on.
            if d.poll_backend(cx) != Activity::Idle {
                activity = Activity::Busy;
            }
        }
        activity
    }
}
