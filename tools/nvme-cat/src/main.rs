//! nvme-cat: the diagnostic tool users reach for first, in the spirit of nvme-cli and dd.
//!
//! Works on a VFIO-bound NVMe controller named by PCI address (`0000:00:04.0`), on the
//! in-process controller model (`model`, `model:ns=64M/512,16M/4096`), and for read, write
//! and bench on an image file (`file:disk.img`), so anyone can try it without hardware.
#![forbid(unsafe_code)]

mod bench;
mod identify;
mod list;
mod logs;
mod output;
mod rw;
mod serve;
mod target;
mod tokio_load;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// Userspace NVMe diagnostics over VFIO (and on the model or an image file).
#[derive(Parser, Debug)]
#[command(name = "nvme-cat", version, about, long_about = None)]
struct Cli {
    /// Log to stderr: -v bring-up and recovery, -vv admin commands too, -vvv everything.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Output format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Normal,
    /// JSON.
    Json,
}

#[derive(Args, Debug, Clone)]
struct DeviceArg {
    /// PCI address of a VFIO-bound controller (0000:00:04.0), `model[:ns=SIZE/LBA,...]`, or
    /// `file:PATH` (read, write and bench only).
    device: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List PCI NVMe and virtio-blk functions; identify the VFIO-bound NVMe ones.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Identify Controller, decoded with nvme-cli's field names.
    IdCtrl {
        #[command(flatten)]
        dev: DeviceArg,
        /// Hex dump of the 4096-byte structure.
        #[arg(long)]
        raw: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Identify Namespace, decoded.
    IdNs {
        #[command(flatten)]
        dev: DeviceArg,
        /// Namespace ID.
        #[arg(short = 'n', long, default_value_t = 1)]
        nsid: u32,
        /// Hex dump of the 4096-byte structure.
        #[arg(long)]
        raw: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// SMART / Health Information log.
    SmartLog {
        #[command(flatten)]
        dev: DeviceArg,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Error Information log.
    ErrorLog {
        #[command(flatten)]
        dev: DeviceArg,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Read a byte or LBA range to stdout or a file.
    Read(rw::ReadArgs),
    /// Write stdin or a file to a byte or LBA range.
    Write(rw::WriteArgs),
    /// Measure IOPS, bandwidth and latency percentiles.
    Bench(bench::BenchArgs),
    /// Serve DEVICE over NBD to real clients (nbd-client, qemu-img, nbdinfo), on TCP and Unix
    /// sockets.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose > 0 {
        let level = match cli.verbose {
            1 => tracing::Level::INFO,
            2 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).init();
    }
    let r = match cli.cmd {
        Cmd::List { output } => list::run(output),
        Cmd::IdCtrl { dev, raw, output } => identify::id_ctrl(&dev.device, raw, output),
        Cmd::IdNs { dev, nsid, raw, output } => identify::id_ns(&dev.device, nsid, raw, output),
        Cmd::SmartLog { dev, output } => logs::smart(&dev.device, output),
        Cmd::ErrorLog { dev, output } => logs::errors(&dev.device, output),
        Cmd::Read(a) => rw::read(&a),
        Cmd::Write(a) => rw::write(&a),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Serve(a) => serve::run(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nvme-cat: {e}");
            ExitCode::FAILURE
        }
    }
}
