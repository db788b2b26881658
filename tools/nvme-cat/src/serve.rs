//! `serve`: DEVICE over NBD (mfio-nbd), on TCP and Unix sockets, until killed.

use crate::target::{open_nvme, open_virtio, parse, Nvme, Spec, Virtio};
use clap::Args;
use mfio::backends::FileOptions;
use mfio_nbd::{devices, Config, Device, Listener, Server};
use mfio_nvme::ControllerOptions;
use mfio_pci::CompletionMode;
use std::io::Write as _;
use std::sync::Arc;

/// Serve DEVICE to NBD clients (nbd-client, qemu-img, nbdinfo, nbdsh, fio).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// What to export: a PCI address (NVMe or virtio-blk), `model[:...]`, `virtio-model`, or
    /// `file:PATH`.
    device: String,
    /// Listen on TCP HOST:PORT (port 0: any free port). Repeatable.
    #[arg(long)]
    listen: Vec<String>,
    /// Listen on a Unix socket at PATH (removed first if it is a stale socket). Repeatable.
    #[arg(long)]
    unix: Vec<std::path::PathBuf>,
    /// The export's name (clients asking for the empty name get it too).
    #[arg(long, default_value = "")]
    name: String,
    /// A description for `nbdinfo` and `NBD_OPT_LIST`.
    #[arg(long, default_value = "")]
    description: String,
    /// Refuse writes, trims and zeroing.
    #[arg(long)]
    read_only: bool,
    /// Worker threads, each with a device queue of its own.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// NVMe namespace to export.
    #[arg(short = 'n', long, default_value_t = 1)]
    nsid: u32,
    /// How NVMe and virtio-blk queues wait for completions (adaptive lets an idle server
    /// sleep; a file's io_uring is always slept on). It sets the sockets' polling too:
    /// adaptive[:us] polls them that long after each request and reply (longer while requests
    /// keep coming, up to 1 ms), interrupt sleeps at once.
    #[arg(long, default_value = "adaptive", value_parser = crate::bench::parse_completion)]
    completion: CompletionMode,
    /// Polling of the sockets between requests: `auto` (from --completion: adaptive polls them
    /// for its spin, interrupt not at all), `off`, or microseconds (the window's floor; it
    /// grows with the gap between requests, up to 1 ms, and only while no request is at the
    /// device).
    #[arg(long, default_value = "auto")]
    socket_spin: String,
    /// Block size clients must align to, for a file.
    #[arg(long, default_value_t = 512)]
    block_size: u32,
}

/// Runs the server until the process is killed.
pub fn run(a: &ServeArgs) -> Result<(), String> {
    if a.listen.is_empty() && a.unix.is_empty() {
        return Err("nothing to listen on: give --listen HOST:PORT and/or --unix PATH".into());
    }
    if a.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for l in &a.listen {
        let t = std::net::TcpListener::bind(l).map_err(|e| format!("--listen {l}: {e}"))?;
        addrs.push(t.local_addr().map_err(|e| e.to_string())?.to_string());
        listeners.push(Listener::Tcp(t));
    }
    for p in &a.unix {
        // A socket file left by an earlier run; anything else is not ours to remove.
        if std::fs::metadata(p)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(p);
        }
        let u = std::os::unix::net::UnixListener::bind(p)
            .map_err(|e| format!("--unix {}: {e}", p.display()))?;
        addrs.push(format!("unix:{}", p.display()));
        listeners.push(Listener::Unix(u));
    }
    let cfg = Config {
        name: a.name.clone(),
        description: a.description.clone(),
        read_only: a.read_only,
        workers: a.workers,
        spin: socket_spin(&a.socket_spin, a.completion)?,
        ..Config::default()
    };
    let started = match parse(&a.device)? {
        Spec::File(path) => {
            let opts = FileOptions {
                block_size: a.block_size,
                writable: !a.read_only,
                ..Default::default()
            };
            start(devices::File::new(path, opts), cfg, listeners)
        }
        Spec::VirtioModel(m) => {
            let v = open_virtio(Spec::VirtioModel(m), a.workers as u16, None, a.completion)?;
            start_virtio(v, a.completion, cfg, listeners)
        }
        Spec::Pci(addr) if crate::target::is_virtio(addr) => {
            let v = open_virtio(Spec::Pci(addr), a.workers as u16, None, a.completion)?;
            start_virtio(v, a.completion, cfg, listeners)
        }
        _ => {
            let opts = ControllerOptions { io_queues: a.workers as u16, ..Default::default() };
            match open_nvme(&a.device, opts)? {
                Nvme::Vfio(c) => start(devices::Nvme::new(c, a.nsid, a.completion), cfg, listeners),
                Nvme::Model(c) => {
                    start(devices::Nvme::new(c, a.nsid, a.completion), cfg, listeners)
                }
            }
        }
    };
    let server = started.map_err(|e| format!("serve: {e}"))?;
    let i = server.info();
    // One line a script can wait for (port 0 shows the port it got).
    println!(
        "nbd: serving {:?} ({} bytes, block {}) on {}",
        i.name,
        i.size,
        i.min_block,
        addrs.join(", ")
    );
    let _ = std::io::stdout().flush();
    server.wait();
    Ok(())
}

/// `--socket-spin`.
fn socket_spin(s: &str, mode: CompletionMode) -> Result<Option<std::time::Duration>, String> {
    Ok(match s {
        "auto" => match mode {
            CompletionMode::Adaptive { spin } => Some(spin),
            CompletionMode::Interrupt => None,
            CompletionMode::Poll => Some(mfio_nbd::MAX_SPIN_WINDOW),
        },
        "off" => None,
        us => {
            let n: u64 = us
                .parse()
                .map_err(|_| format!("--socket-spin {us}: auto, off, or microseconds"))?;
            Some(std::time::Duration::from_micros(n))
        }
    })
}

fn start<D: Device>(d: D, cfg: Config, l: Vec<Listener>) -> Result<Server, mfio_nbd::ServeError> {
    Server::start(Arc::new(d), cfg, l)
}

fn start_virtio(
    v: Virtio,
    mode: CompletionMode,
    cfg: Config,
    l: Vec<Listener>,
) -> Result<Server, mfio_nbd::ServeError> {
    match v {
        Virtio::Vfio(d) => start(devices::Virtio::new(Arc::new(d), mode), cfg, l),
        Virtio::Model(d) => start(devices::Virtio::new(Arc::new(d), mode), cfg, l),
    }
}
