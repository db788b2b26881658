//! Guest test of nvme-cat against QEMU's devices through VFIO, run the way a user runs it.
//!
//! `nvme-cat` is found on PATH (the harness puts the workspace's target directory there).
//! Checks: `list` shows both functions bound to vfio-pci and identifies the NVMe one; `id-ctrl`
//! shows QEMU's model number (text and JSON); `id-ns`, `smart-log`, `error-log` parse; a write
//! then a read returns the same bytes on NVMe and on virtio-blk; `bench` reports I/Os.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use vm_tests::R;

fn main() -> ExitCode {
    vm_tests::run_main("guest-nvme-cat", run)
}

fn nvme_cat(args: &[&str], stdin: &[u8]) -> R<Vec<u8>> {
    let mut child = Command::new("nvme-cat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nvme-cat (is it built and on PATH?): {e}"))?;
    child.stdin.take().ok_or("stdin")?.write_all(stdin).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("nvme-cat {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out.stdout)
}

fn text(args: &[&str]) -> R<String> {
    let out = String::from_utf8(nvme_cat(args, &[])?).map_err(|e| e.to_string())?;
    println!("$ nvme-cat {}\n{}", args.join(" "), out.trim_end());
    Ok(out)
}

fn json(args: &[&str]) -> R<serde_json::Value> {
    let out = nvme_cat(args, &[])?;
    serde_json::from_slice(&out).map_err(|e| format!("nvme-cat {args:?}: not JSON: {e}"))
}

fn run() -> R<()> {
    let nvme = std::env::var("MFIO_NVME_PCI").map_err(|_| "MFIO_NVME_PCI unset")?;
    let virtio = std::env::var("MFIO_VIRTIO_PCI").map_err(|_| "MFIO_VIRTIO_PCI unset")?;

    let list = text(&["list"])?;
    if !list.contains(&nvme) || !list.contains("QEMU NVMe Ctrl") {
        return Err(format!("list does not identify {nvme}"));
    }
    let l = json(&["list", "-o", "json"])?;
    let devs = l["devices"].as_array().ok_or("list -o json: no devices array")?;
    for want in [&nvme, &virtio] {
        let d =
            devs.iter().find(|d| d["address"] == **want).ok_or(format!("list misses {want}"))?;
        if d["driver"] != "vfio-pci" {
            return Err(format!("{want} listed with driver {}", d["driver"]));
        }
    }

    let id = text(&["id-ctrl", &nvme])?;
    if !id.contains("QEMU NVMe Ctrl") {
        return Err("id-ctrl does not show QEMU's model number".into());
    }
    let v = json(&["id-ctrl", &nvme, "-o", "json"])?;
    if v["mn"] != "QEMU NVMe Ctrl" || v["vid"] != 0x1b36 {
        return Err(format!("id-ctrl -o json: mn {} vid {}", v["mn"], v["vid"]));
    }
    let ns = json(&["id-ns", &nvme, "-n", "1", "-o", "json"])?;
    if ns["nsze"].as_u64().unwrap_or(0) == 0 {
        return Err("id-ns: nsze is 0".into());
    }
    json(&["smart-log", &nvme, "-o", "json"])?;
    json(&["error-log", &nvme, "-o", "json"])?;

    let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for dev in [&nvme, &virtio] {
        nvme_cat(&["write", dev, "--offset", "1M", "--pad"], &data)?;
        let padded = data.len().next_multiple_of(512);
        let back =
            nvme_cat(&["read", dev, "--offset", "1M", "--length", &padded.to_string()], &[])?;
        if back[..data.len()] != data[..] || back[data.len()..].iter().any(|&b| b != 0) {
            return Err(format!("{dev}: read after write returns different bytes"));
        }
        println!("{dev}: wrote and read back {} bytes", data.len());
        let b = json(&["bench", dev, "--qd", "16", "--time", "1", "--span", "16M", "-o", "json"])?;
        if b["ios"].as_u64().unwrap_or(0) == 0 || b["errors"] != 0 {
            return Err(format!("{dev}: bench: {b}"));
        }
        println!("{dev}: bench randread 4K QD16: {:.0} IOPS", b["iops"].as_f64().unwrap_or(0.0));
    }
    Ok(())
}
