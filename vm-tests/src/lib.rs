//! Guest-side test programs, run inside a QEMU guest against QEMU's NVMe and virtio-blk devices
//! bound to vfio-pci. Each binary in `src/bin/guest-*.rs` is one guest test; `scripts/vm-tests.sh`
//! builds them on the host and runs every one of them in the guest, in IOMMU and no-IOMMU mode.

use std::process::ExitCode;

/// A guest test step: `Err(message)` fails the program with that message.
pub type R<T> = Result<T, String>;

/// Returns `Err(format!(...))` from the enclosing step when `$cond` is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Runs a guest test program: prints `NAME: PASS` or `NAME: FAIL: message` (the line the
/// harness and a reader look for) and returns the exit code.
pub fn run_main(name: &str, run: impl FnOnce() -> R<()>) -> ExitCode {
    match run() {
        Ok(()) => {
            println!("{name}: PASS");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{name}: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Bytes of the zero-copy round trip, and where on the device it goes (1 MiB in).
pub const ZERO_COPY_LEN: usize = 256 << 10;
const ZERO_COPY_AT: u64 = 1 << 20;

/// Writes [`ZERO_COPY_LEN`] bytes from DMA memory of `dma` and reads them back into the same
/// memory, checking the data and that `bounced` (the queue's bounce counter) did not move: the
/// driver gave the device the buffer's own IOVAs. Returns the buffer and the data, for a
/// driver's further checks.
pub fn zero_copy_round_trip<Q>(
    q: &Q,
    dma: &std::sync::Arc<mfio_dma::DmaSpace>,
    bounced: impl Fn(&Q) -> u64,
) -> R<(mfio_dma::DmaBuffer, Vec<u8>)>
where
    Q: mfio::ReadAt + mfio::WriteAt,
{
    use mfio::{block_on, Window};
    let before = bounced(q);
    let buf = dma.alloc(ZERO_COPY_LEN).map_err(|e| e.to_string())?;
    let data = mfio_conformance::Rng::new(11).bytes(ZERO_COPY_LEN);
    buf.mem().copy_from_slice(0, &data);
    let w = Window::new(buf, 0, ZERO_COPY_LEN).ok_or("window")?;
    let (r, w) = block_on(q, q.write_all(ZERO_COPY_AT, w));
    r.map_err(|e| format!("zero-copy write: {e}"))?;
    let buf = w.into_inner();
    buf.mem().zero();
    let w = Window::new(buf, 0, ZERO_COPY_LEN).ok_or("window")?;
    let (r, w) = block_on(q, q.read_all(ZERO_COPY_AT, w));
    r.map_err(|e| format!("zero-copy read: {e}"))?;
    let mut back = vec![0u8; ZERO_COPY_LEN];
    w.get_ref().mem().copy_to_slice(0, &mut back);
    ensure!(back == data, "zero-copy round trip differs");
    let bounces = bounced(q) - before;
    ensure!(bounces == 0, "DMA memory was bounced ({bounces} bounces)");
    Ok((w.into_inner(), data))
}
