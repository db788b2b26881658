//! guest-nbd: QEMU's NVMe namespace and virtio-blk device, through VFIO and the project's
//! drivers, served by mfio-nbd on a Unix socket to the guest kernel's own NBD client
//! (`nbd-client`, `/dev/nbd0`): a file system made, written, checked and read back on each.
//!
//! mkfs.ext4, mount, files of random sizes, sync, unmount, `fsck.ext4 -fn` clean, mount again
//! and every file compared, then `blkdiscard` where the export offers trim. Needs the `nbd` and
//! `ext4` modules (the guest's initramfs loads them) and nbd-client, e2fsprogs, util-linux.

use mfio_conformance::Rng;
use mfio_nbd::{devices, Config, Device, Listener, Server};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{CompletionMode, VfioPci};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_tests::{ensure, R};

const NBD: &str = "/dev/nbd0";

fn main() -> ExitCode {
    vm_tests::run_main("guest-nbd", run)
}

fn run() -> R<()> {
    ensure!(Path::new(NBD).exists(), "{NBD} is missing: the guest did not load the nbd module");
    for tool in ["nbd-client", "mkfs.ext4", "fsck.ext4", "mount", "umount", "blkdiscard"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        ensure!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is not installed in the host root"
        );
    }
    let nvme =
        std::env::var("MFIO_NVME_PCI").map_err(|_| "MFIO_NVME_PCI is not set".to_string())?;
    let pci = VfioPci::open_str(&nvme).map_err(|e| format!("open {nvme}: {e}"))?;
    let ctrl = Controller::new(pci, ControllerOptions { io_queues: 2, ..Default::default() })
        .map_err(|e| format!("NVMe bring-up: {e}"))?;
    file_system("nvme", devices::Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE))?;

    let vblk = std::env::var("MFIO_VIRTIO_PCI").unwrap_or_else(|_| "0000:00:05.0".into());
    let pci = VfioPci::open_str(&vblk).map_err(|e| format!("open {vblk}: {e}"))?;
    let opts = mfio_virtio::Options {
        queues: 2,
        completion: CompletionMode::ADAPTIVE,
        ..Default::default()
    };
    let dev = mfio_virtio::VirtioBlk::new(pci, &opts).map_err(|e| format!("virtio-blk: {e}"))?;
    file_system("virtio", devices::Virtio::new(Arc::new(dev), CompletionMode::ADAPTIVE))
}

/// Runs a command; its failure (or a missing binary) is this step's error.
fn sh(prog: &str, args: &[&str]) -> R<String> {
    let out = Command::new(prog).args(args).output().map_err(|e| format!("{prog}: {e}"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{prog} {args:?}: {}: {text}", out.status);
    Ok(text)
}

fn file_system<D: Device>(name: &str, dev: D) -> R<()> {
    let sock = PathBuf::from(format!("/run/mfio/nbd-{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let listener =
        std::os::unix::net::UnixListener::bind(&sock).map_err(|e| format!("bind: {e}"))?;
    let cfg = Config { name: name.into(), workers: 2, ..Config::default() };
    let server = Server::start(Arc::new(dev), cfg, vec![Listener::Unix(listener)])
        .map_err(|e| format!("serve {name}: {e}"))?;
    let trim = server.info().caps.discard;
    println!(
        "{name}: serving {} bytes (block {}, trim {trim})",
        server.info().size,
        server.info().min_block
    );
    let sockstr = sock.to_str().unwrap_or_default();
    sh("nbd-client", &["-unix", sockstr, NBD, "-N", name, "-b", "512"])?;
    let result = exercise(name, trim);
    if result.is_err() {
        // What the kernel said (a failed mount says it only there).
        let _ = Command::new("sh")
            .args(["-c", "dmesg | tail -15; grep ext4 /proc/filesystems"])
            .status();
    }
    // Disconnect whatever happened, so the next device can use /dev/nbd0.
    let _ = Command::new("umount").arg(MNT).output();
    let detached = sh("nbd-client", &["-d", NBD]);
    let st = server.stats();
    println!(
        "{name}: {} requests, {} error replies, {} protocol violations",
        st.requests.load(Relaxed),
        st.error_replies.load(Relaxed),
        st.violations.load(Relaxed)
    );
    result?;
    detached?;
    ensure!(st.violations.load(Relaxed) == 0, "the kernel's client broke the protocol?");
    Ok(())
}

const MNT: &str = "/run/mfio/mnt";

fn exercise(name: &str, trim: bool) -> R<()> {
    // The kernel sets the size once the client has negotiated.
    let t0 = Instant::now();
    while std::fs::read_to_string("/sys/block/nbd0/size").map_or(true, |s| s.trim() == "0") {
        ensure!(t0.elapsed() < Duration::from_secs(10), "{NBD} never got a size");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first 64 KiB go back at the end: later programs in this boot read the image's
    // marker in sector 0.
    let mut saved = vec![0u8; 64 << 10];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(NBD).map_err(|e| format!("{NBD}: {e}"))?;
        f.read_exact(&mut saved).map_err(|e| format!("reading {NBD}: {e}"))?;
    }
    sh("mkfs.ext4", &["-q", "-F", NBD])?;
    std::fs::create_dir_all(MNT).map_err(|e| format!("{MNT}: {e}"))?;
    sh("mount", &[NBD, MNT])?;
    let mut rng = Rng::new(0xf11e);
    let files: Vec<(PathBuf, Vec<u8>)> = (0..12)
        .map(|i| {
            let len = 1 + rng.below(384 << 10) as usize;
            (Path::new(MNT).join(format!("f{i}")), rng.bytes(len))
        })
        .collect();
    for (p, data) in &files {
        std::fs::write(p, data).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    sh("sync", &[])?;
    sh("umount", &[MNT])?;
    sh("fsck.ext4", &["-fn", NBD])?;
    sh("mount", &[NBD, MNT])?;
    for (p, data) in &files {
        let back = std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
        ensure!(&back == data, "{name}: {} came back different after a remount", p.display());
    }
    sh("umount", &[MNT])?;
    println!(
        "{name}: mkfs.ext4, {} files written, fsck clean, read back after a remount: ok",
        files.len()
    );
    if trim {
        sh("blkdiscard", &[NBD])?;
        println!("{name}: blkdiscard: ok");
    } else {
        println!("{name}: the device offers no discard: blkdiscard not run");
    }
    {
        use std::io::{Read, Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(NBD)
            .map_err(|e| format!("{NBD}: {e}"))?;
        f.write_all(&saved).and_then(|_| f.sync_all()).map_err(|e| format!("restoring: {e}"))?;
        let mut back = vec![0u8; saved.len()];
        f.rewind().and_then(|_| f.read_exact(&mut back)).map_err(|e| format!("re-reading: {e}"))?;
        ensure!(back == saved, "{name}: the restored first 64 KiB read back different");
    }
    Ok(())
}
