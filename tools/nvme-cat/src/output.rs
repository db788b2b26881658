//! Output helpers: JSON, key/value tables, hex dumps.

use serde_json::Value;

/// Prints a JSON value, pretty.
pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Prints `key : value` lines, aligned like nvme-cli.
pub fn fields(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<w$} : {v}");
    }
}

/// A hex dump, 16 bytes a line, with offsets and ASCII.
pub fn hexdump(data: &[u8]) {
    for (i, line) in data.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String =
            line.iter().map(|&b| if (32..127).contains(&b) { b as char } else { '.' }).collect();
        println!("{:04x}: {:<47}  \"{ascii}\"", i * 16, hex.join(" "));
    }
}

/// Runs `$body` with `$c` bound to the controller, whatever backs it.
#[macro_export]
macro_rules! with_ctrl {
    ($nvme:expr, |$c:ident| $body:expr) => {
        match $nvme {
            $crate::target::Nvme::Vfio($c) => $body,
            $crate::target::Nvme::Model($c) => $body,
        }
    };
}

/// Runs `$body` with `$v` bound to the virtio-blk device, whatever backs it.
#[macro_export]
macro_rules! with_virtio {
    ($virtio:expr, |$v:ident| $body:expr) => {
        match $virtio {
            $crate::target::Virtio::Vfio($v) => $body,
            $crate::target::Virtio::Model($v) => $body,
        }
    };
}
