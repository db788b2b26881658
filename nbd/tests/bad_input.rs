//! Bad input, byte by byte: a raw client that breaks the protocol in every way the issue
//! names, against a server that must answer with the protocol's error or close that one
//! connection, and go on serving everyone else. Also the promises a raw client can check
//! best: replies out of order, a write acknowledged only once the device has done it, and
//! everything in flight answered before a disconnect closes.

use mfio_nbd::proto::{self, cmd, cmd_flag, errno, opt, rep, Request};
use mfio_nbd::{devices, Config, Listener, Server};
use mfio_nvme::model::{Injection, ModelConfig, NamespaceConfig, NvmeModel, Target};
use mfio_nvme::{spec, Controller, ControllerOptions};
use mfio_pci::CompletionMode;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

const SIZE: u64 = 16 << 20;

struct Fixture {
    server: Server,
    model: NvmeModel,
    sock: PathBuf,
}

fn fixture() -> Fixture {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let sock = std::env::temp_dir().join(format!(
        "mfio-nbd-bad-{}-{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    ));
    let cfg = ModelConfig {
        namespaces: vec![NamespaceConfig::new(SIZE / 512, 512)],
        ..ModelConfig::default()
    };
    let model = NvmeModel::new(cfg);
    let ctrl =
        Controller::new(model.clone(), ControllerOptions { io_queues: 2, ..Default::default() })
            .unwrap();
    let dev = devices::Nvme::new(ctrl, 1, CompletionMode::ADAPTIVE);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let cfg = Config {
        name: "disk".into(),
        workers: 2,
        handshake_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let server = Server::start(Arc::new(dev), cfg, vec![Listener::Unix(listener)]).unwrap();
    Fixture { server, model, sock }
}

/// A client that speaks the protocol by hand.
struct Raw(UnixStream);

impl Raw {
    /// Connects and reads the greeting.
    fn connect(f: &Fixture) -> Raw {
        let s = UnixStream::connect(&f.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = Raw(s);
        let hello = r.read(18);
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([hello[16], hello[17]]), 3, "FIXED_NEWSTYLE | NO_ZEROES");
        r
    }
    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }
    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.0.read_exact(&mut b).unwrap();
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.read(8).try_into().unwrap())
    }
    /// The server closed the connection (EOF, or a reset) within the read timeout.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.0.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue, // a last reply, say
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }
    /// One option reply: (option, type, data).
    fn reply(&mut self) -> (u32, u32, Vec<u8>) {
        assert_eq!(self.u64(), proto::REPLY_MAGIC);
        let (option, kind, len) = (self.u32(), self.u32(), self.u32());
        (option, kind, self.read(len as usize))
    }
    /// Flags, then `NBD_OPT_GO` for `name`: the transmission flags.
    fn go(&mut self, name: &str, structured: bool) -> u16 {
        self.send(&3u32.to_be_bytes());
        if structured {
            self.option(opt::STRUCTURED_REPLY, &[]);
            assert_eq!(self.reply().1, rep::ACK);
        }
        self.option(opt::GO, &info_data(name, &[]));
        let mut flags = None;
        loop {
            let (o, kind, data) = self.reply();
            assert_eq!(o, opt::GO);
            match kind {
                rep::INFO if data[..2] == [0, 0] => {
                    assert_eq!(u64::from_be_bytes(data[2..10].try_into().unwrap()), SIZE);
                    flags = Some(u16::from_be_bytes([data[10], data[11]]));
                }
                rep::INFO => {}
                rep::ACK => return flags.expect("NBD_INFO_EXPORT before the ACK"),
                other => panic!("GO answered {other:#x}"),
            }
        }
    }
    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32) {
        self.send(&Request { flags, kind, cookie, offset, length }.encode());
    }
    /// A simple reply: (error, cookie).
    fn simple(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), proto::SIMPLE_REPLY_MAGIC);
        (self.u32(), self.u64())
    }
}

fn info_data(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// A good client still gets its data through (the server kept serving).
fn still_serves(f: &Fixture) {
    let mut c = Raw::connect(f);
    c.go("disk", false);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    c.request(cmd::WRITE, 0, 1, 8192, 4096);
    c.send(&data);
    assert_eq!(c.simple(), (0, 1));
    c.request(cmd::READ, 0, 2, 8192, 4096);
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(c.read(4096), data);
    c.request(cmd::DISC, 0, 3, 0, 0);
    assert!(c.closed());
}

#[test]
fn a_broken_handshake_closes_that_connection_only() {
    let f = fixture();
    // Unknown client flags.
    let mut c = Raw::connect(&f);
    c.send(&0x80u32.to_be_bytes());
    assert!(c.closed(), "unknown client flags");
    // An option without its magic.
    let mut c = Raw::connect(&f);
    c.send(&3u32.to_be_bytes());
    c.send(&[0xde; 16]);
    assert!(c.closed(), "an option without IHAVEOPT");
    // An option claiming more data than any honest one.
    let mut c = Raw::connect(&f);
    c.send(&3u32.to_be_bytes());
    let mut b = proto::IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&opt::GO.to_be_bytes());
    b.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.send(&b);
    assert!(c.closed(), "a 1 GiB option");
    // Truncated: half the client flags, then gone; and one that never finishes (timeout).
    let mut c = Raw::connect(&f);
    c.send(&[0, 0]);
    drop(c);
    let mut slow = Raw::connect(&f);
    slow.send(&3u32.to_be_bytes());
    // EXPORT_NAME of a name that does not exist: the protocol's only answer is to close.
    let mut c = Raw::connect(&f);
    c.send(&3u32.to_be_bytes());
    c.option(opt::EXPORT_NAME, b"nope");
    assert!(c.closed(), "EXPORT_NAME of an unknown export");
    still_serves(&f);
    assert!(slow.closed(), "a client that never finished its handshake is let go");
    assert!(f.server.stats().failed_handshakes.load(Relaxed) >= 5);
}

#[test]
fn options_get_their_replies_and_haggling_goes_on() {
    let f = fixture();
    let mut c = Raw::connect(&f);
    c.send(&3u32.to_be_bytes());
    c.option(0x1234, b"whatever");
    let (o, kind, msg) = c.reply();
    assert_eq!((o, kind), (0x1234, rep::ERR_UNSUP));
    assert!(!msg.is_empty(), "an error says why");
    c.option(opt::STARTTLS, &[]);
    assert_eq!(c.reply().1, rep::ERR_POLICY);
    c.option(opt::LIST, b"x");
    assert_eq!(c.reply().1, rep::ERR_INVALID);
    c.option(opt::LIST, &[]);
    let (_, kind, data) = c.reply();
    assert_eq!(kind, rep::SERVER);
    assert_eq!(&data[4..8], b"disk");
    assert_eq!(c.reply().1, rep::ACK);
    c.option(opt::INFO, &[0, 0, 0, 9, b'd']);
    assert_eq!(c.reply().1, rep::ERR_INVALID, "a name longer than its data");
    c.option(opt::GO, &info_data("other", &[]));
    assert_eq!(c.reply().1, rep::ERR_UNKNOWN);
    c.option(opt::STRUCTURED_REPLY, &[1]);
    assert_eq!(c.reply().1, rep::ERR_INVALID);
    // INFO with NAME and BLOCK_SIZE asked for, then ABORT.
    c.option(opt::INFO, &info_data("", &[proto::info::NAME, proto::info::BLOCK_SIZE]));
    let mut seen = Vec::new();
    loop {
        let (_, kind, data) = c.reply();
        if kind == rep::ACK {
            break;
        }
        assert_eq!(kind, rep::INFO);
        seen.push(u16::from_be_bytes([data[0], data[1]]));
        if data[..2] == [0, 3] {
            let v = |o: usize| u32::from_be_bytes(data[o..o + 4].try_into().unwrap());
            assert_eq!((v(2), v(6), v(10)), (512, 4096, 32 << 20));
        }
        if data[..2] == [0, 1] {
            assert_eq!(&data[2..], b"disk", "the canonical name for the default export");
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 3]);
    c.option(opt::ABORT, &[]);
    assert_eq!(c.reply().1, rep::ACK);
    assert!(c.closed());
    // EXPORT_NAME of the default export, without NO_ZEROES: size, flags, 124 zeroes.
    let mut c = Raw::connect(&f);
    c.send(&1u32.to_be_bytes());
    c.option(opt::EXPORT_NAME, &[]);
    assert_eq!(c.u64(), SIZE);
    let flags = u16::from_be_bytes(c.read(2).try_into().unwrap());
    assert_eq!(flags & proto::flag::SEND_DF, 0, "DF without structured replies");
    assert_eq!(c.read(124), vec![0u8; 124]);
    c.request(cmd::FLUSH, 0, 5, 0, 0);
    assert_eq!(c.simple(), (0, 5));
}

#[test]
fn bad_requests_get_errors_and_the_connection_goes_on() {
    let f = fixture();
    let mut c = Raw::connect(&f);
    let flags = c.go("disk", false);
    assert_ne!(flags & proto::flag::SEND_TRIM, 0);
    let cases: [(u16, u16, u64, u32, u32); 8] = [
        (42, 0, 0, 0, errno::EINVAL), // an unknown command
        (cmd::READ, cmd_flag::FAST_ZERO, 0, 512, errno::EINVAL), // a flag the command lacks
        (cmd::READ, cmd_flag::DF, 0, 512, errno::EINVAL), // DF without structured replies
        (cmd::READ, 0, SIZE, 512, errno::EINVAL), // past the end
        (cmd::READ, 0, u64::MAX - 100, 512, errno::EINVAL), // offset + length overflows
        (cmd::READ, 0, 100, 512, errno::EINVAL), // misaligned offset
        (cmd::TRIM, 0, 0, 100, errno::EINVAL), // misaligned length
        (cmd::WRITE_ZEROES, 0, SIZE - 512, 1024, errno::ENOSPC), // zeroes past the end
    ];
    for (i, &(kind, fl, off, len, want)) in cases.iter().enumerate() {
        c.request(kind, fl, i as u64, off, len);
        assert_eq!(c.simple(), (want, i as u64), "case {i}: {kind} {fl:#x} {off} {len}");
    }
    // Writes that fail still have their payload skipped: the next request is read right.
    c.request(cmd::WRITE, 0, 100, SIZE, 4096);
    c.send(&[1u8; 4096]);
    assert_eq!(c.simple(), (errno::ENOSPC, 100));
    c.request(cmd::WRITE, 0, 101, 7, 512);
    c.send(&[2u8; 512]);
    assert_eq!(c.simple(), (errno::EINVAL, 101));
    c.request(cmd::WRITE, 0x8000, 102, 0, 512);
    c.send(&[3u8; 512]);
    assert_eq!(c.simple(), (errno::EINVAL, 102), "an unknown flag on a write");
    // A read larger than the maximum payload, refused without a payload.
    c.request(cmd::READ, 0, 103, 0, (32 << 20) + 512);
    assert_eq!(c.simple(), (errno::EINVAL, 103));
    // Zero-length requests do nothing and succeed.
    c.request(cmd::READ, 0, 104, 0, 0);
    assert_eq!(c.simple(), (0, 104));
    c.request(cmd::WRITE, 0, 105, 0, 0);
    assert_eq!(c.simple(), (0, 105));
    // None of it reached the device as a data command.
    assert_eq!(f.model.io_commands(spec::io::WRITE), 0);
    // A write larger than the maximum payload is not skipped: the client is let go.
    c.request(cmd::WRITE, 0, 106, 0, 64 << 20);
    assert!(c.closed(), "a 64 MiB write payload");
    // Garbage where a request should be, and a client gone in the middle of a payload.
    let mut c = Raw::connect(&f);
    c.go("disk", false);
    c.send(&[0x55; 28]);
    assert!(c.closed(), "a request without its magic");
    let mut c = Raw::connect(&f);
    c.go("disk", false);
    c.request(cmd::WRITE, 0, 1, 0, 65536);
    c.send(&[9u8; 1000]);
    drop(c);
    still_serves(&f);
    assert!(f.server.stats().violations.load(Relaxed) >= 2);
    assert!(f.model.violations().is_empty(), "{:?}", f.model.violations());
}

#[test]
fn structured_reads_of_bad_requests_are_structured_errors() {
    let f = fixture();
    let mut c = Raw::connect(&f);
    let flags = c.go("disk", true);
    assert_ne!(flags & proto::flag::SEND_DF, 0);
    c.request(cmd::READ, 0, 7, SIZE, 512);
    // NBD_REPLY_TYPE_ERROR, done, EINVAL, no message.
    assert_eq!(c.u32(), proto::STRUCTURED_REPLY_MAGIC);
    assert_eq!(c.read(4), [0, 1, 0x80, 1]);
    assert_eq!(c.u64(), 7);
    assert_eq!(c.u32(), 6);
    assert_eq!(c.u32(), errno::EINVAL);
    assert_eq!(c.read(2), [0, 0]);
    // A read that fails part way: the good prefix as data, then the error at its offset.
    f.model.inject(Injection::MediaError { nsid: 1, lba: 300 });
    c.request(cmd::READ, 0, 8, 0, 256 << 10); // 512 blocks: block 300 fails in the second piece
    assert_eq!(c.u32(), proto::STRUCTURED_REPLY_MAGIC);
    assert_eq!(c.read(4), [0, 0, 0, 1], "OFFSET_DATA, not done");
    assert_eq!(c.u64(), 8);
    let len = c.u32() as usize;
    assert_eq!(c.u64(), 0);
    // Everything before the 128 KiB piece holding block 300 is good (the pieces fail whole
    // or by the device's partial completion; this device fails the command whole).
    assert_eq!(len - 8, 128 << 10);
    c.read(len - 8);
    assert_eq!(c.u32(), proto::STRUCTURED_REPLY_MAGIC);
    assert_eq!(c.read(4), [0, 1, 0x80, 2], "ERROR_OFFSET, done");
    assert_eq!(c.u64(), 8);
    assert_eq!(c.u32(), 14);
    assert_eq!(c.u32(), errno::EIO);
    assert_eq!(c.read(2), [0, 0]);
    assert_eq!(c.u64(), 128 << 10);
}

#[test]
fn replies_come_out_of_order_and_all_come() {
    let f = fixture();
    let mut c = Raw::connect(&f);
    c.go("disk", false);
    // Hold the reads of one range: the later requests must not wait behind them.
    f.model.inject(Injection::Hold(Target::io_opcode(spec::io::READ)));
    c.request(cmd::READ, 0, 1, 0, 4096);
    std::thread::sleep(Duration::from_millis(50));
    f.model.clear_injections();
    c.request(cmd::FLUSH, 0, 2, 0, 0);
    assert_eq!(c.simple(), (0, 2), "the flush came back first");
    assert_eq!(f.model.release_held(), 1);
    assert_eq!(c.simple(), (0, 1));
    c.read(4096);
    // 64 reads at once: every cookie answered once.
    for i in 0..64u64 {
        c.request(cmd::READ, 0, 1000 + i, i * 4096, 4096);
    }
    let mut cookies: Vec<u64> = (0..64)
        .map(|_| {
            let (e, cookie) = c.simple();
            assert_eq!(e, 0);
            c.read(4096);
            cookie
        })
        .collect();
    cookies.sort();
    assert_eq!(cookies, (1000..1064).collect::<Vec<_>>());
}

#[test]
fn a_write_is_acknowledged_only_once_the_device_completed_it() {
    let f = fixture();
    let mut c = Raw::connect(&f);
    c.go("disk", false);
    f.model.inject(Injection::Hold(Target::io_opcode(spec::io::WRITE)));
    c.request(cmd::WRITE, cmd_flag::FUA, 9, 1 << 20, 4096);
    c.send(&[0xabu8; 4096]);
    c.0.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    let early = c.0.read(&mut b);
    assert!(early.is_err(), "a reply before the device completed the write: {early:?}");
    assert_eq!(f.model.release_held(), 1);
    c.0.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.simple(), (0, 9));
    assert!(f.model.read_blocks(1, 2048, 8).iter().all(|&b| b == 0xab));
    assert!(f.model.stats().fua_writes >= 1);
}

#[test]
fn a_disconnect_answers_everything_in_flight_first() {
    let f = fixture();
    let mut c = Raw::connect(&f);
    c.go("disk", false);
    for i in 0..32u64 {
        c.request(cmd::WRITE, 0, i, i * 8192, 8192);
        c.send(&vec![i as u8 + 1; 8192]);
    }
    c.request(cmd::DISC, 0, 99, 0, 0);
    let mut got: Vec<u64> = (0..32)
        .map(|_| c.simple())
        .map(|(e, k)| {
            assert_eq!(e, 0);
            k
        })
        .collect();
    got.sort();
    assert_eq!(got, (0..32).collect::<Vec<_>>());
    assert!(c.closed());
    for i in 0..32u64 {
        assert!(f.model.read_blocks(1, i * 16, 16).iter().all(|&b| b == i as u8 + 1), "write {i}");
    }
}

/// CPU time of the whole process (every thread: the server's workers and acceptor too).
fn process_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

#[test]
fn a_server_whose_clients_are_quiet_sleeps() {
    let f = fixture();
    let mut clients: Vec<Raw> = (0..3).map(|_| Raw::connect(&f)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.go("disk", i % 2 == 0);
        c.request(cmd::FLUSH, 0, 1, 0, 0);
        assert_eq!(c.simple(), (0, 1));
    }
    // Connected, nothing sent: the workers' adaptive windows close within a millisecond and
    // every thread sleeps (in epoll, and on the queues' interrupts).
    std::thread::sleep(Duration::from_millis(50));
    let (cpu0, t0) = (process_cpu(), std::time::Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    let (cpu, wall) = (process_cpu() - cpu0, t0.elapsed());
    assert!(cpu < Duration::from_millis(50), "{cpu:?} of CPU in {wall:?} with quiet clients");
    // And they still answer.
    for c in &mut clients {
        c.request(cmd::FLUSH, 0, 2, 0, 0);
        assert_eq!(c.simple(), (0, 2));
    }
}

#[test]
fn clients_that_stall_mid_write_or_never_read_their_replies_do_not_starve_the_others() {
    let f = fixture();
    // Four clients (two per worker) each start a 32 MiB write and stop sending: each holds
    // one buffer (its pieces go to the device as they arrive), not the 256 it would need.
    let mut stalled: Vec<Raw> = (0..4).map(|_| Raw::connect(&f)).collect();
    for c in &mut stalled {
        c.go("disk", false);
        c.request(cmd::WRITE, 0, 1, 0, 32 << 20);
        c.send(&vec![0x11u8; 200 << 10]);
    }
    // Four more send 300 reads of 128 KiB and never read a reply: each holds at most its
    // quarter of its worker's buffers, and at most MAX_IN_FLIGHT replies.
    let mut deaf: Vec<Raw> = (0..4).map(|_| Raw::connect(&f)).collect();
    for c in &mut deaf {
        c.go("disk", true);
        for i in 0..300u64 {
            c.request(cmd::READ, 0, i, (i % 64) * (128 << 10), 128 << 10);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // Everyone else is served, on both workers, at once.
    still_serves(&f);
    still_serves(&f);
    drop((stalled, deaf));
}
