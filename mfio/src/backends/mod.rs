//! Reference backends: an in-memory block device, striping across devices, and files.

pub mod memory;
pub mod stripe;

#[cfg(all(feature = "std", target_os = "linux"))]
pub mod file;

pub use memory::{MemoryBackend, MemoryStats};
pub use stripe::Stripe;

#[cfg(all(feature = "std", target_os = "linux"))]
pub use file::{FileBackend, FileOptions};
