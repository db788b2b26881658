//! The facts about an export every client is told ([`ExportInfo`]); the device itself is an
//! [`mfio_devices::Device`].

use crate::proto::flag;
use mfio::Capabilities;

/// The largest payload a client may send or ask for in one request (the protocol's own
/// "never a denial of service" size, 32 MiB).
pub const MAX_PAYLOAD: u32 = 1 << 25;

/// An export as clients see it.
#[derive(Clone, Debug)]
pub struct ExportInfo {
    /// The name clients ask for (the empty name, the default export, also finds it).
    pub name: String,
    /// A description for people (`NBD_INFO_DESCRIPTION`, `NBD_OPT_LIST`).
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// The device's block size: every offset and length must be a multiple.
    pub min_block: u32,
    /// The size at which I/O is efficient: 4 KiB, or the block size if larger.
    pub preferred_block: u32,
    /// The largest read or write payload.
    pub max_payload: u32,
    /// What the device does natively.
    pub caps: Capabilities,
    /// Writes are refused (`NBD_FLAG_READ_ONLY`).
    pub read_only: bool,
    /// Flush covers every connection (`NBD_FLAG_CAN_MULTI_CONN`).
    pub multi_conn: bool,
}

impl ExportInfo {
    /// The transmission flags for a client that negotiated structured replies or not.
    ///
    /// Flush and FUA are always offered (on a device without a volatile cache a flush is
    /// immediate, and FUA is a flush where the device lacks it); write zeroes too (written as
    /// zeroed blocks where the device cannot, in which case a `FAST_ZERO` request fails at
    /// once, as the protocol asks); trim only where the device discards.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = flag::HAS_FLAGS | flag::SEND_FLUSH;
        if self.read_only {
            f |= flag::READ_ONLY;
        } else {
            f |= flag::SEND_FUA | flag::SEND_WRITE_ZEROES | flag::SEND_FAST_ZERO;
            if self.caps.discard {
                f |= flag::SEND_TRIM;
            }
        }
        if structured {
            f |= flag::SEND_DF;
        }
        if self.multi_conn {
            f |= flag::CAN_MULTI_CONN;
        }
        f
    }
}
