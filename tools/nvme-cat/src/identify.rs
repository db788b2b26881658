//! id-ctrl and id-ns.

use crate::output::{fields, hexdump, json};
use crate::target::open_nvme;
use crate::{with_ctrl, Format};
use mfio_nvme::spec::{IdentifyController, IdentifyNamespace};
use mfio_nvme::ControllerOptions;
use serde_json::json;

/// Identify Controller.
pub fn id_ctrl(device: &str, raw: bool, out: Format) -> Result<(), String> {
    let nvme = open_nvme(device, ControllerOptions::default())?;
    with_ctrl!(&nvme, |c| {
        if raw {
            hexdump(c.identify_raw());
            return Ok(());
        }
        print_ctrl(c.identify(), c.version(), out);
        Ok(())
    })
}

fn print_ctrl(id: &IdentifyController, ver: u32, out: Format) {
    let v = json!({
        "vid": id.vid, "ssvid": id.ssvid, "sn": id.sn, "mn": id.mn, "fr": id.fr,
        "mdts": id.mdts, "cntlid": id.cntlid, "ver": id.ver, "oacs": id.oacs, "acl": id.acl,
        "elpe": id.elpe, "sqes": id.sqes, "cqes": id.cqes, "nn": id.nn, "oncs": id.oncs,
        "vwc": id.vwc, "sgls": id.sgls,
    });
    match out {
        Format::Json => json(&v),
        Format::Normal => {
            println!(
                "NVME Identify Controller (version register {}.{}):",
                ver >> 16,
                (ver >> 8) & 0xff
            );
            fields(&[
                ("vid", format!("{:#x}", id.vid)),
                ("ssvid", format!("{:#x}", id.ssvid)),
                ("sn", id.sn.clone()),
                ("mn", id.mn.clone()),
                ("fr", id.fr.clone()),
                ("mdts", id.mdts.to_string()),
                ("cntlid", format!("{:#x}", id.cntlid)),
                ("ver", format!("{:#x}", id.ver)),
                ("oacs", format!("{:#x}", id.oacs)),
                ("acl", id.acl.to_string()),
                ("elpe", id.elpe.to_string()),
                ("sqes", format!("{:#x}", id.sqes)),
                ("cqes", format!("{:#x}", id.cqes)),
                ("nn", id.nn.to_string()),
                ("oncs", format!("{:#x}", id.oncs)),
                ("vwc", format!("{:#x}", id.vwc)),
                ("sgls", format!("{:#x}", id.sgls)),
            ]);
        }
    }
}

/// Identify Namespace.
pub fn id_ns(device: &str, nsid: u32, raw: bool, out: Format) -> Result<(), String> {
    let nvme = open_nvme(device, ControllerOptions::default())?;
    with_ctrl!(&nvme, |c| {
        let ns = c.namespace(nsid).ok_or_else(|| {
            let ids: Vec<u32> = c.namespaces().iter().map(|n| n.nsid).collect();
            format!("namespace {nsid} is not active; active namespaces: {ids:?}")
        })?;
        if raw {
            hexdump(&ns.identify_raw);
            return Ok(());
        }
        print_ns(nsid, &ns.identify, out);
        Ok(())
    })
}

fn print_ns(nsid: u32, id: &IdentifyNamespace, out: Format) {
    let lbaf: Vec<_> =
        id.lbaf.iter().map(|f| json!({"ms": f.ms, "ds": f.lbads, "rp": f.rp})).collect();
    let v = json!({
        "nsid": nsid, "nsze": id.nsze, "ncap": id.ncap, "nuse": id.nuse, "nsfeat": id.nsfeat,
        "nlbaf": id.nlbaf, "flbas": id.flbas, "block_size": id.block_size(), "lbafs": lbaf,
    });
    match out {
        Format::Json => json(&v),
        Format::Normal => {
            println!("NVME Identify Namespace {nsid}:");
            fields(&[
                ("nsze", format!("{:#x}", id.nsze)),
                ("ncap", format!("{:#x}", id.ncap)),
                ("nuse", format!("{:#x}", id.nuse)),
                ("nsfeat", format!("{:#x}", id.nsfeat)),
                ("nlbaf", id.nlbaf.to_string()),
                ("flbas", format!("{:#x}", id.flbas)),
            ]);
            for (i, f) in id.lbaf.iter().enumerate() {
                let used = if i == usize::from(id.flbas & 0xf) { " (in use)" } else { "" };
                println!("lbaf {i:>2} : ms:{:<3} lbads:{:<2} rp:{:#x}{used}", f.ms, f.lbads, f.rp);
            }
        }
    }
}
