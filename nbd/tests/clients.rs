//! The server against real NBD clients: libnbd's `nbdinfo` and `nbdsh`, and `qemu-img`, on
//! an image file, the NVMe model and the virtio-blk model (each through the real driver).
//!
//! The tools come from Debian's libnbd-bin, python3-libnbd and qemu-utils (`.ci/run`
//! installs them); a missing one fails the test with what to install.

use mfio::backends::FileOptions;
use mfio_nbd::{devices, Config, Device, Listener, Server};
use mfio_nvme::model::{Injection, ModelConfig, NamespaceConfig, NvmeModel};
use mfio_nvme::{Controller, ControllerOptions};
use mfio_pci::CompletionMode;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A server on a Unix socket and a TCP port of its own.
struct Running {
    server: Server,
    sock: PathBuf,
    tcp: std::net::SocketAddr,
}

impl Running {
    fn unix_uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.sock.display())
    }
    fn tcp_uri(&self, name: &str) -> String {
        format!("nbd://{}/{name}", self.tcp)
    }
}

fn temp(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mfio-nbd-{}-{tag}-{n}", std::process::id()))
}

fn serve<D: Device>(dev: D, cfg: Config) -> Running {
    let sock = temp("sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let server =
        Server::start(Arc::new(dev), cfg, vec![Listener::Unix(unix), Listener::Tcp(tcp)]).unwrap();
    Running { server, sock, tcp: addr }
}

fn config(name: &str) -> Config {
    Config {
        name: name.into(),
        description: format!("{name} for the tests"),
        workers: 2,
        ..Config::default()
    }
}

/// A client tool, or a failure that says what to install.
fn tool(name: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is not installed: apt-get install {package}");
    let mut c = Command::new(name);
    // nbdsh runs `python3 -m nbd`: Debian's python3, which has the libnbd module (a pyenv
    // python3 earlier in PATH does not).
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/bin:/bin:{path}"));
    c
}

fn check(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `script` (a file in tests/nbdsh) in nbdsh connected to `uri`, with `expect` (a Python
/// dict) as `EXPECT`.
fn nbdsh(uri: &str, script: &str, expect: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nbdsh").join(script);
    let code = format!("EXPECT = {expect}\nexec(open({:?}).read())", path.display().to_string());
    let out =
        tool("nbdsh", "libnbd-bin python3-libnbd").args(["-u", uri, "-c", &code]).output().unwrap();
    check(out, &format!("nbdsh {script} on {uri}"))
}

fn image(len: u64) -> PathBuf {
    let p = temp("img");
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

fn file_export(len: u64, read_only: bool) -> (devices::File, PathBuf) {
    let p = image(len);
    let opts = FileOptions { block_size: 512, writable: !read_only, ..Default::default() };
    (devices::File::new(&p, opts), p)
}

fn nvme_model(lba: u32, len: u64) -> (NvmeModel, Arc<Controller<NvmeModel>>) {
    let cfg = ModelConfig {
        namespaces: vec![NamespaceConfig::new(len / u64::from(lba), lba)],
        ..ModelConfig::default()
    };
    let model = NvmeModel::new(cfg);
    let opts = ControllerOptions { io_queues: 2, ..ControllerOptions::default() };
    let ctrl = Controller::new(model.clone(), opts).unwrap();
    (model, ctrl)
}

fn expect(block: u32, size: u64, trim: bool, trim_zeroes: bool, fast_zero: Option<bool>) -> String {
    let py = |b: bool| if b { "True" } else { "False" };
    let fast = fast_zero.map_or("None", py);
    format!(
        "{{'block': {block}, 'size': {size}, 'trim': {}, 'trim_zeroes': {}, 'fast_zero': {fast}}}",
        py(trim),
        py(trim_zeroes)
    )
}

#[test]
fn nbdinfo_sees_the_export_as_served() {
    let (model, ctrl) = nvme_model(512, 64 << 20);
    let r = serve(devices::Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE), config("nvme"));
    for uri in [r.unix_uri("nvme"), r.tcp_uri("nvme"), r.unix_uri("")] {
        let out = check(
            tool("nbdinfo", "libnbd-bin").args(["--json", &uri]).output().unwrap(),
            "nbdinfo",
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let e = &v["exports"][0];
        assert_eq!(e["export-name"], "nvme", "{out}");
        assert_eq!(e["description"], "nvme for the tests", "{out}");
        assert_eq!(e["export-size"], 64 << 20, "{out}");
        assert_eq!(e["block_size_minimum"], 512, "{out}");
        assert_eq!(e["block_size_preferred"], 4096, "{out}");
        assert_eq!(e["block_size_maximum"], 32 << 20, "{out}");
        for cap in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_fast_zero",
            "can_multi_conn",
            "can_df",
        ] {
            assert_eq!(e[cap], true, "{cap}: {out}");
        }
        assert_eq!(e["is_read_only"], false, "{out}");
    }
    // An unknown name is refused with NBD_REP_ERR_UNKNOWN (nbdinfo fails), not served.
    let out = tool("nbdinfo", "libnbd-bin").arg(r.unix_uri("nope")).output().unwrap();
    assert!(!out.status.success(), "an unknown export was served");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{out:?}");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
    assert!(r.server.stats().connections.load(Ordering::Relaxed) >= 4);
}

#[test]
fn nbdsh_commands_on_the_nvme_model() {
    let (model, ctrl) = nvme_model(512, 64 << 20);
    let r = serve(devices::Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE), config("nvme"));
    let out =
        nbdsh(&r.unix_uri("nvme"), "commands.py", &expect(512, 64 << 20, true, false, Some(true)));
    assert!(out.contains("nbdsh: ok"), "{out}");
    // FUA reached the controller as the FUA bit, and zeroing without NO_HOLE as DEAC.
    let st = model.stats();
    assert!(st.fua_writes >= 1 && st.deac_zeroes >= 1, "{st:?}");
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}

#[test]
fn nbdsh_commands_on_a_4k_nvme_namespace_over_tcp() {
    let (_model, ctrl) = nvme_model(4096, 64 << 20);
    let r = serve(devices::Nvme::new(ctrl, 1, CompletionMode::Interrupt), config("nvme4k"));
    let out = nbdsh(
        &r.tcp_uri("nvme4k"),
        "commands.py",
        &expect(4096, 64 << 20, true, false, Some(true)),
    );
    assert!(out.contains("nbdsh: ok"), "{out}");
}

#[test]
fn nbdsh_commands_on_the_virtio_model() {
    use mfio_virtio::model::{ModelOptions, VirtioBlkModel};
    let model = VirtioBlkModel::new(ModelOptions {
        capacity_sectors: (64 << 20) / 512,
        num_queues: 2,
        ..Default::default()
    });
    let opts = mfio_virtio::Options {
        queues: 2,
        completion: CompletionMode::ADAPTIVE,
        ..Default::default()
    };
    let dev = Arc::new(mfio_virtio::VirtioBlk::new(model, &opts).unwrap());
    let r = serve(devices::Virtio::new(dev, CompletionMode::ADAPTIVE), config("vblk"));
    // virtio-blk does not promise what discarded sectors read.
    let out =
        nbdsh(&r.unix_uri("vblk"), "commands.py", &expect(512, 64 << 20, true, false, Some(true)));
    assert!(out.contains("nbdsh: ok"), "{out}");
}

#[test]
fn nbdsh_commands_on_an_image_file() {
    let (dev, path) = file_export(64 << 20, false);
    let r = serve(dev, config("img"));
    let out = nbdsh(&r.unix_uri("img"), "commands.py", &expect(512, 64 << 20, true, true, None));
    assert!(out.contains("nbdsh: ok"), "{out}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_read_only_export_refuses_every_write() {
    let (dev, path) = file_export(1 << 20, true);
    let r = serve(dev, Config { read_only: true, ..config("ro") });
    let out = nbdsh(&r.unix_uri("ro"), "read_only.py", "None");
    assert!(out.contains("read-only: ok"), "{out}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn qemu_img_converts_into_the_export_and_compares_equal() {
    // A source image with data and holes.
    let src = image(32 << 20);
    let mut seed = 0x1234_5678u64;
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    for i in 0..40u64 {
        let block: Vec<u8> = (0..65536)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &block, i * 786_432).unwrap();
    }
    drop(f);
    let (_model, ctrl) = nvme_model(512, 32 << 20);
    let r = serve(devices::Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE), config("nvme"));
    let dst = r.unix_uri("nvme");
    let qemu = |args: &[&str]| {
        check(
            tool("qemu-img", "qemu-utils").args(args).output().unwrap(),
            &format!("qemu-img {args:?}"),
        )
    };
    qemu(&["convert", "-n", "-f", "raw", "-O", "raw", src.to_str().unwrap(), &dst]);
    qemu(&["compare", "-f", "raw", "-F", "raw", src.to_str().unwrap(), &dst]);
    // And the other way: what compares equal must also differ when it does.
    let tcp = r.tcp_uri("nvme");
    let out = tool("nbdsh", "python3-libnbd")
        .args(["-u", &tcp, "-c", "h.pwrite(b'\\xff' * 512, 1 << 20)"])
        .output()
        .unwrap();
    check(out, "nbdsh pwrite");
    let out = tool("qemu-img", "qemu-utils")
        .args(["compare", "-f", "raw", "-F", "raw", src.to_str().unwrap(), &dst])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "qemu-img compare missed a difference: {out:?}");
    std::fs::remove_file(src).unwrap();
}

#[test]
fn a_media_error_is_the_clients_eio_and_the_server_goes_on() {
    let (model, ctrl) = nvme_model(512, 16 << 20);
    let r = serve(devices::Nvme::new(ctrl.clone(), 1, CompletionMode::ADAPTIVE), config("nvme"));
    model.inject(Injection::MediaError { nsid: 1, lba: 2048 });
    let script = "
import errno
for f, args in ((h.pwrite, (b'z' * 4096, 2048 * 512)), (h.pread, (8192, 2044 * 512))):
    try:
        f(*args)
        raise AssertionError(f.__name__ + ' past a media error succeeded')
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
h.pwrite(b'a' * 4096, 0)
assert h.pread(4096, 0) == b'a' * 4096
print('eio: ok')
";
    let out = check(
        tool("nbdsh", "python3-libnbd")
            .args(["-u", &r.unix_uri("nvme"), "-c", script])
            .output()
            .unwrap(),
        "nbdsh",
    );
    assert!(out.contains("eio: ok"), "{out}");
    // The errors were the device's: it counted them.
    assert_eq!(ctrl.smart_log().unwrap().media_errors, 2);
}

#[test]
fn many_clients_at_once_each_see_their_own_data() {
    let (model, ctrl) = nvme_model(512, 64 << 20);
    let r = serve(devices::Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE), config("nvme"));
    let children: Vec<_> = (0..6u64)
        .map(|i| {
            let uri = if i % 2 == 0 { r.unix_uri("nvme") } else { r.tcp_uri("nvme") };
            let script = format!(
                "import os\nfor k in range(50):\n    d = os.urandom(65536)\n    h.pwrite(d, {base} + k * 65536)\n    assert h.pread(65536, {base} + k * 65536) == d\nprint('client ok')",
                base = i * (8 << 20)
            );
            tool("nbdsh", "python3-libnbd").args(["-u", &uri, "-c", &script]).spawn().unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(r.server.stats().connections.load(Ordering::Relaxed), 6);
    assert!(model.violations().is_empty(), "{:?}", model.violations());
}
