//! list: NVMe and virtio-blk PCI functions, identified where bound to vfio-pci.

use crate::output::json;
use crate::Format;
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::{Sysfs, VfioPci};
use serde_json::json;

/// Lists storage functions.
pub fn run(out: Format) -> Result<(), String> {
    let sysfs = Sysfs::system();
    let funcs = sysfs.storage_functions().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for f in &funcs {
        let kind = if f.is_nvme() { "nvme" } else { "virtio-blk" };
        let mut row = json!({
            "address": f.address.to_string(),
            "kind": kind,
            "vendor": format!("{:04x}", f.vendor),
            "device": format!("{:04x}", f.device),
            "class": format!("{:06x}", f.class),
            "driver": f.driver.clone(),
            "iommu_group": f.iommu_group,
            "group_peers": f.group_peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "numa_node": f.numa_node,
        });
        if f.is_nvme() && f.driver.as_deref() == Some("vfio-pci") {
            // Identify it; a failure is reported in the row, not fatal for the listing.
            match VfioPci::open(f.address).map_err(|e| e.to_string()).and_then(|d| {
                Controller::new(d, ControllerOptions { io_queues: 1, ..Default::default() })
                    .map_err(|e| e.to_string())
            }) {
                Ok(c) => {
                    let id = c.identify();
                    row["model"] = json!(id.mn);
                    row["serial"] = json!(id.sn);
                    row["firmware"] = json!(id.fr);
                    row["namespaces"] = json!(c
                        .namespaces()
                        .iter()
                        .map(|n| json!({"nsid": n.nsid, "blocks": n.blocks, "block_size": n.block_size, "bytes": n.capacity()}))
                        .collect::<Vec<_>>());
                }
                Err(e) => row["error"] = json!(e),
            }
        }
        rows.push(row);
    }
    match out {
        Format::Json => json(&json!({ "devices": rows })),
        Format::Normal => {
            if rows.is_empty() {
                println!("no NVMe or virtio-blk PCI functions found");
            }
            println!(
                "{:<13} {:<10} {:<9} {:<10} {:<6} details",
                "address", "kind", "id", "driver", "group"
            );
            for r in &rows {
                let group = r["iommu_group"].as_u64().map_or("-".to_string(), |g| g.to_string());
                let mut details = String::new();
                if let Some(m) = r["model"].as_str() {
                    details = format!(
                        "{m} sn {} fw {}",
                        r["serial"].as_str().unwrap_or(""),
                        r["firmware"].as_str().unwrap_or("")
                    );
                    for n in r["namespaces"].as_array().into_iter().flatten() {
                        details += &format!(
                            "; ns{} {} MiB ({}-byte blocks)",
                            n["nsid"],
                            n["bytes"].as_u64().unwrap_or(0) >> 20,
                            n["block_size"]
                        );
                    }
                } else if let Some(e) = r["error"].as_str() {
                    details = format!("cannot open: {e}");
                } else if r["driver"].as_str() != Some("vfio-pci") {
                    details =
                        "not bound to vfio-pci: `scripts/setup.sh config` binds it".to_string();
                }
                println!(
                    "{:<13} {:<10} {:<9} {:<10} {:<6} {}",
                    r["address"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or(""),
                    format!(
                        "{}:{}",
                        r["vendor"].as_str().unwrap_or(""),
                        r["device"].as_str().unwrap_or("")
                    ),
                    r["driver"].as_str().unwrap_or("-"),
                    group,
                    details
                );
            }
        }
    }
    Ok(())
}
