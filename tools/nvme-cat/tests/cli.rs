//! nvme-cat's subcommands on the in-process models and an image file.

use std::process::{Command, Output};

fn nvme_cat(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nvme-cat"));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run nvme-cat");
    {
        let mut si = child.stdin.take().unwrap();
        if let Some(data) = stdin {
            si.write_all(data).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = nvme_cat(args, None);
    assert!(o.status.success(), "nvme-cat {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nvme-cat {args:?}: not JSON ({e}): {out}"))
}

fn err(args: &[&str]) -> String {
    let o = nvme_cat(args, None);
    assert!(!o.status.success(), "nvme-cat {args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

#[test]
fn id_ctrl_and_id_ns_on_the_model() {
    let v = json(&["id-ctrl", "model", "-o", "json"]);
    assert_eq!(v["mn"], "mfio NVMe model");
    assert_eq!(v["mdts"], 7);
    assert!(v["nn"].as_u64().unwrap() >= 2);
    let text = ok(&["id-ctrl", "model"]);
    assert!(text.contains("mn") && text.contains("mfio NVMe model"), "{text}");
    let raw = ok(&["id-ctrl", "model", "--raw"]);
    assert!(raw.starts_with("0000: 36 1b"), "vendor 1b36 little endian: {}", &raw[..40]);
    assert_eq!(raw.lines().count(), 256);
    let ns = json(&["id-ns", "model", "-n", "2", "-o", "json"]);
    assert_eq!(ns["block_size"], 4096);
    assert_eq!(ns["nsze"], (16u64 << 20) / 4096);
    let custom = json(&["id-ns", "model:ns=1M/512", "-o", "json"]);
    assert_eq!(custom["nsze"], 2048);
    assert!(err(&["id-ns", "model", "-n", "7"]).contains("not active"));
}

#[test]
fn logs_on_the_model() {
    let s = json(&["smart-log", "model", "-o", "json"]);
    assert!(s["temperature"].as_u64().unwrap() > 250);
    assert_eq!(s["critical_warning"], 0);
    let e = json(&["error-log", "model", "-o", "json"]);
    assert!(e["errors"].is_array());
}

#[test]
fn write_verify_and_read_on_the_models() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    for dev in ["model", "virtio-model"] {
        let o = nvme_cat(&["write", dev, "--lba", "8", "--pad", "--verify"], Some(&data));
        assert!(o.status.success(), "{dev}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("verified 10240 bytes"));
    }
    // Not padded: refused with the fix.
    let o = nvme_cat(&["write", "model", "--lba", "0"], Some(&data));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--pad"));
}

#[test]
fn read_and_write_round_trip_on_an_image_file() {
    let img = std::env::temp_dir().join(format!("nvme-cat-test-{}.img", std::process::id()));
    std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let dev = format!("file:{}", img.display());
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let o = nvme_cat(&["write", &dev, "--offset", "4096"], Some(&data));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = nvme_cat(&["read", &dev, "--offset", "4096", "--length", "5000"], None);
    assert!(o.status.success());
    assert_eq!(o.stdout, data);
    let out = img.with_extension("out");
    ok(&["read", &dev, "--offset", "4K", "--length", "5000", "-O", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let msg = err(&["read", &dev, "--offset", "1M", "--length", "512"]);
    assert!(msg.contains("out of range"), "{msg}");
    let msg = err(&["read", "model", "--offset", "0", "--length", "100"]);
    assert!(msg.contains("not a multiple of the block size 512"), "{msg}");
    std::fs::remove_file(&img).unwrap();
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn bench_reports_fio_style_figures() {
    for dev in ["model", "virtio-model", "model:null=1", "virtio-model:null"] {
        let v = json(&[
            "bench", dev, "--rw", "randread", "--qd", "8", "--ios", "2000", "--time", "10", "-o",
            "json",
        ]);
        assert_eq!(v["ios"], 2000, "{dev}: {v}");
        assert_eq!(v["errors"], 0);
        let lat = &v["lat_ns"];
        let p50 = lat["p50"].as_u64().unwrap();
        let p99 = lat["p99"].as_u64().unwrap();
        assert!(p50 > 0 && p50 <= p99 && p99 <= lat["max"].as_u64().unwrap(), "{v}");
        assert!(v["iops"].as_f64().unwrap() > 0.0);
    }
    let v = json(&[
        "bench", "model", "--rw", "write", "--bs", "64K", "--qd", "4", "--queues", "2", "--ios",
        "100", "-o", "json",
    ]);
    assert_eq!(v["ios"], 200, "two queues, 100 each: {v}");
    assert_eq!(v["bs"], 65536);
}

#[test]
fn errors_name_the_fix() {
    assert!(err(&["id-ctrl", "not-a-device"]).contains("PCI address"));
    let img = std::env::temp_dir().join(format!("nvme-cat-err-{}.img", std::process::id()));
    std::fs::File::create(&img).unwrap().set_len(4096).unwrap();
    assert!(
        err(&["id-ctrl", &format!("file:{}", img.display())]).contains("not an NVMe controller")
    );
    std::fs::remove_file(&img).unwrap();
    assert!(err(&["read", "model", "--lba", "999999999", "--count", "1"]).contains("out of range"));
    // Past the end by a length too large to allocate: refused before any buffer is made.
    assert!(err(&["read", "model", "--offset", "0", "--length", "100G"]).contains("out of range"));
    assert!(err(&["read", "model", "-n", "0", "--length", "512"]).contains("namespace 0"));
    // A model namespace smaller than one LBA.
    assert!(err(&["id-ns", "model:ns=0/512"]).contains("less than one 512-byte LBA"));
    assert!(err(&["id-ns", "model:ns=100/512"]).contains("give at least 512"));
}

#[test]
fn list_prints_json() {
    let v = json(&["list", "-o", "json"]);
    assert!(v["devices"].is_array());
}

#[test]
fn verbose_logs_bring_up_and_admin_commands_to_stderr() {
    let out = nvme_cat(&["-vv", "id-ctrl", "model"], None);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("nvme_bringup") && log.contains("nvme_admin"), "{log}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mfio NVMe model"));
    let quiet = nvme_cat(&["id-ctrl", "model"], None);
    assert!(quiet.stderr.is_empty(), "no log without -v");
}

#[test]
fn bench_refuses_impossible_options_with_what_to_give() {
    // (options, what the message must say); each on both models, never a panic, never
    // figures for a run that cannot exist.
    let cases: &[(&[&str], &str)] = &[
        (&["--bs", "0"], "--bs 0"),
        (&["--bs", "3"], "block size"),
        (&["--qd", "0"], "give 1 to 4096"),
        (&["--qd", "100000"], "give 1 to 4096"),
        (&["--queues", "0"], "at least one queue"),
        (&["--bs", "1G"], "MiB of buffers"),
        (&["--ios", "0"], "at least one I/O"),
        (&["--span", "512"], "smaller than one I/O"),
        (&["--completion", "spin"], "poll, interrupt, adaptive"),
        (&["--time", "0"], "positive number of seconds"),
        (&["--time", "1e300"], "at most 31536000 seconds"),
    ];
    for dev in ["model", "virtio-model"] {
        for (opts, want) in cases {
            let mut args = vec!["bench", dev];
            args.extend_from_slice(opts);
            if !opts.contains(&"--time") {
                args.extend_from_slice(&["--time", "0.1"]);
            }
            let e = err(&args);
            assert!(e.contains(want), "nvme-cat {args:?}: {e}");
            assert!(!e.contains("panicked"), "nvme-cat {args:?} panicked: {e}");
        }
    }
}
