//! Which way data moves, named for what the backend does to the packet's memory.
//!
//! Upstream mfio names these from the packet's point of view ("Write" packets for reads), which
//! reads backwards at every call site. Here the names follow the data, as DMA APIs do:
//! a read moves data [`FromDevice`] into the packet (the backend writes packet memory), a write
//! moves data [`ToDevice`] out of the packet (the backend only reads packet memory).

mod sealed {
    pub trait Sealed {}
}

/// Direction marker of a packet: [`FromDevice`] or [`ToDevice`].
pub trait PacketPerms: sealed::Sealed + Send + Sync + 'static {
    /// The direction as a value, for code that handles both.
    const DIRECTION: Direction;
}

/// A read: the device's data lands in the packet; the backend writes packet memory.
#[derive(Debug, Clone, Copy)]
pub enum FromDevice {}

/// A write: the packet's data goes to the device; the backend only reads packet memory.
#[derive(Debug, Clone, Copy)]
pub enum ToDevice {}

impl sealed::Sealed for FromDevice {}
impl sealed::Sealed for ToDevice {}

impl PacketPerms for FromDevice {
    const DIRECTION: Direction = Direction::FromDevice;
}

impl PacketPerms for ToDevice {
    const DIRECTION: Direction = Direction::ToDevice;
}

/// The direction of a transfer, as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A read: device to memory.
    FromDevice,
    /// A write: memory to device.
    ToDevice,
}
