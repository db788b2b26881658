//! mfio-nbd: any mfio block backend served over NBD, to the clients that already speak it
//! (the Linux kernel's `nbd-client`, QEMU, libnbd's `nbdinfo`, `nbdsh` and `nbdcopy`, fio).
//!
//! ```text
//!  client ──TCP/Unix──► acceptor ──► worker thread (one per device queue)
//!                                      current-thread tokio runtime:
//!                                        connection tasks ─ reader: headers, payloads into DMA buffers
//!                                                         ─ request tasks ─► queue (batched, one doorbell)
//!                                                         ─ writer: replies, vectored, out of order
//!                                        driver: mfio-rt, asleep on the queue's MSI-X eventfd
//! ```
//!
//! - [`proto`]: the wire format; [`handshake`]: fixed newstyle negotiation (`GO`, `INFO`,
//!   `EXPORT_NAME`, `LIST`, `ABORT`, `STRUCTURED_REPLY`); `transmission`: the request loop
//!   of one connection; [`server`]: listeners and workers; [`devices`] (mfio-devices): NVMe,
//!   virtio-blk and file exports.
//! - Commands: READ, WRITE (with FUA), FLUSH, TRIM, WRITE_ZEROES (`NO_HOLE`, `FAST_ZERO`),
//!   DISC, on the framework's [`mfio::BlockCommands`], so every backend behaves the same.
//! - A client that breaks the protocol is disconnected; the others go on. A write is
//!   acknowledged only once the device has completed it.
//!
//! ```no_run
//! use mfio_nbd::{devices, Config, Listener, Server};
//! let dev = devices::File::new("disk.img", mfio::backends::FileOptions { block_size: 512, ..Default::default() });
//! let listener = std::net::TcpListener::bind("127.0.0.1:10809").unwrap();
//! let cfg = Config { name: "disk".into(), ..Config::default() };
//! Server::start(std::sync::Arc::new(dev), cfg, vec![Listener::Tcp(listener)]).unwrap().wait();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod export;
pub mod handshake;
mod pool;
pub mod proto;
pub mod server;
mod spin;
mod stats;
mod transmission;

pub use export::{ExportInfo, MAX_PAYLOAD};
/// The devices a server exports (re-exported: [`mfio_devices`]).
pub use mfio_devices as devices;
pub use mfio_devices::Device;
pub use pool::CHUNK;
pub use server::{Config, Listener, ServeError, Server, Stats};
pub use spin::MAX_WINDOW as MAX_SPIN_WINDOW;
pub use transmission::{Ended, MAX_IN_FLIGHT};
