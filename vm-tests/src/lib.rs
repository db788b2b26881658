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
