//! Guest smoke test: the harness set the guest up as promised.
//!
//! Run inside the QEMU guest by `scripts/vm-tests.sh` (or by hand:
//! `scripts/vm-run.sh -- guest-smoke`). It checks, with nothing but sysfs and `/dev`:
//! - the NVMe function (class 0x010802) and the modern virtio-blk function (1af4:1042) exist,
//!   sit at the addresses in `MFIO_NVME_PCI` / `MFIO_VIRTIO_PCI`, and are bound to vfio-pci;
//! - each one's IOMMU group holds only that function, and its group node (`/dev/vfio/N` in
//!   IOMMU mode, `/dev/vfio/noiommu-N` in no-IOMMU mode) exists and opens read-write;
//! - `/dev/vfio/vfio` opens read-write;
//! - the kernel's IOMMU state matches `MFIO_IOMMU_MODE` (`iommu` or `noiommu`).
//!
//! Every failed check is printed; the exit code is 1 if any failed.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// The two VFIO modes the harness boots the guest in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// intel-iommu and VFIO type1: group nodes are `/dev/vfio/N`.
    Iommu,
    /// `vfio.enable_unsafe_noiommu_mode=1`: group nodes are `/dev/vfio/noiommu-N`.
    NoIommu,
}

impl Mode {
    fn from_env() -> Result<Mode, String> {
        match std::env::var("MFIO_IOMMU_MODE").as_deref() {
            Ok("iommu") => Ok(Mode::Iommu),
            Ok("noiommu") => Ok(Mode::NoIommu),
            Ok(other) => Err(format!("MFIO_IOMMU_MODE={other:?}: expected iommu or noiommu")),
            Err(_) => Err("MFIO_IOMMU_MODE is not set: run me in the guest through \
                           scripts/vm-run.sh or scripts/vm-tests.sh"
                .to_string()),
        }
    }

    fn group_node(self, group: &str) -> PathBuf {
        match self {
            Mode::Iommu => PathBuf::from(format!("/dev/vfio/{group}")),
            Mode::NoIommu => PathBuf::from(format!("/dev/vfio/noiommu-{group}")),
        }
    }
}

/// Collects the outcome of every check, so one run reports all problems at once.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            println!("ok    {what}");
        } else {
            println!("FAIL  {what}");
            self.failures.push(what);
        }
    }

    fn fail(&mut self, what: impl Into<String>) {
        self.check(false, what);
    }
}

/// Reads a sysfs attribute, trimmed; `None` if it cannot be read.
fn attr(dir: &Path, name: &str) -> Option<String> {
    fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_string())
}

/// The last path component of a sysfs symlink (a driver's or an IOMMU group's name).
fn link_name(path: &Path) -> Option<String> {
    fs::read_link(path).ok().and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// PCI addresses of the functions for which `pred(class, vendor, device)` holds, sorted.
fn find_functions(pred: impl Fn(&str, &str, &str) -> bool) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(PCI_DEVICES)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let d = e.path();
                    match (attr(&d, "class"), attr(&d, "vendor"), attr(&d, "device")) {
                        (Some(c), Some(v), Some(dev)) => pred(&c, &v, &dev),
                        _ => false,
                    }
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Opens `path` read-write and closes it again.
fn opens_rw(path: &Path) -> Result<(), String> {
    OpenOptions::new().read(true).write(true).open(path).map(drop).map_err(|e| e.to_string())
}

/// Checks one device kind: present, at the advertised address, bound to vfio-pci, alone in its
/// IOMMU group, and its group node opens read-write.
fn check_device(checks: &mut Checks, mode: Mode, name: &str, env_var: &str, found: &[String]) {
    let Some(first) = found.first() else {
        checks.fail(format!("{name}: no such PCI function in the guest"));
        return;
    };
    let addr = match std::env::var(env_var) {
        Ok(a) => {
            checks.check(
                found.contains(&a),
                format!("{name}: {env_var}={a} is one of the functions found ({found:?})"),
            );
            a
        }
        Err(_) => {
            checks.fail(format!("{name}: {env_var} is not set"));
            first.clone()
        }
    };
    let dev = Path::new(PCI_DEVICES).join(&addr);
    let driver = link_name(&dev.join("driver"));
    checks.check(
        driver.as_deref() == Some("vfio-pci"),
        format!("{name} {addr}: bound to vfio-pci (driver: {driver:?})"),
    );
    let Some(group) = link_name(&dev.join("iommu_group")) else {
        checks.fail(format!("{name} {addr}: has no IOMMU group"));
        return;
    };
    let members: Vec<String> = fs::read_dir(format!("/sys/kernel/iommu_groups/{group}/devices"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    checks.check(
        members == [addr.clone()],
        format!("{name} {addr}: alone in IOMMU group {group} (members: {members:?})"),
    );
    let node = mode.group_node(&group);
    match opens_rw(&node) {
        Ok(()) => checks.check(true, format!("{name} {addr}: {} opens read-write", node.display())),
        Err(e) => {
            checks.fail(format!("{name} {addr}: cannot open {} read-write: {e}", node.display()))
        }
    }
}

/// Checks that the kernel's IOMMU state is the one the harness promised.
fn check_mode(checks: &mut Checks, mode: Mode) {
    let iommus = fs::read_dir("/sys/class/iommu").map(|rd| rd.count()).unwrap_or(0);
    let noiommu_param =
        fs::read_to_string("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode")
            .map(|s| s.trim() == "Y")
            .unwrap_or(false);
    match mode {
        Mode::Iommu => {
            checks.check(
                iommus > 0,
                format!("iommu mode: an IOMMU is active ({iommus} in /sys/class/iommu)"),
            );
            checks.check(!noiommu_param, "iommu mode: vfio.enable_unsafe_noiommu_mode is off");
        }
        Mode::NoIommu => {
            checks.check(
                iommus == 0,
                format!("noiommu mode: no IOMMU is active ({iommus} in /sys/class/iommu)"),
            );
            checks.check(noiommu_param, "noiommu mode: vfio.enable_unsafe_noiommu_mode=Y");
        }
    }
}

fn main() -> ExitCode {
    let mode = match Mode::from_env() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("guest-smoke: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("guest-smoke: mode {mode:?}");
    let mut checks = Checks::default();
    check_mode(&mut checks, mode);

    let nvme = find_functions(|class, _, _| class == "0x010802");
    check_device(&mut checks, mode, "NVMe", "MFIO_NVME_PCI", &nvme);
    let vblk = find_functions(|_, vendor, device| vendor == "0x1af4" && device == "0x1042");
    check_device(&mut checks, mode, "virtio-blk", "MFIO_VIRTIO_PCI", &vblk);

    match opens_rw(Path::new("/dev/vfio/vfio")) {
        Ok(()) => checks.check(true, "/dev/vfio/vfio opens read-write"),
        Err(e) => checks.fail(format!("cannot open /dev/vfio/vfio read-write: {e}")),
    }

    if checks.failures.is_empty() {
        println!("guest-smoke: all checks passed");
        ExitCode::SUCCESS
    } else {
        eprintln!("guest-smoke: {} check(s) failed:", checks.failures.len());
        for f in &checks.failures {
            eprintln!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
