//! scripts/setup.sh on a fake sysfs tree (SYSFS_ROOT): what it binds, what it refuses, what it
//! prints. The fake kernel does not react to writes, so a bind is seen as the writes it makes.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn write(&self, rel: &str, s: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }
    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.p(rel)).unwrap()
    }
    fn dev(&self, a: &str, ven: &str, dev: &str, class: &str, drv: &str, group: u32) {
        let d = format!("sys/bus/pci/devices/{a}");
        self.write(&format!("{d}/vendor"), &format!("{ven}\n"));
        self.write(&format!("{d}/device"), &format!("{dev}\n"));
        self.write(&format!("{d}/class"), &format!("{class}\n"));
        self.write(&format!("{d}/numa_node"), "0\n");
        self.write(&format!("{d}/driver_override"), "(null)\n");
        self.write(&format!("sys/bus/pci/drivers/{drv}/unbind"), "");
        symlink(self.p(&format!("sys/bus/pci/drivers/{drv}")), self.p(&format!("{d}/driver")))
            .unwrap();
        let gd = format!("sys/kernel/iommu_groups/{group}");
        fs::create_dir_all(self.p(&format!("{gd}/devices"))).unwrap();
        symlink(self.p(&d), self.p(&format!("{gd}/devices/{a}"))).unwrap();
        symlink(self.p(&gd), self.p(&format!("{d}/iommu_group"))).unwrap();
    }
    fn new() -> Tree {
        let t = Tree { dir: tempfile::tempdir().unwrap() };
        t.write("sys/bus/pci/drivers/vfio-pci/unbind", "");
        t.write("sys/bus/pci/drivers_probe", "");
        t.write("sys/class/iommu/dmar0/x", "");
        t.write("proc/sys/vm/nr_hugepages", "0\n");
        t.write("proc/meminfo", "HugePages_Total:       0\nHugePages_Free:        0\n");
        // NVMe with an unmounted namespace; virtio-blk whose vda1 is mounted; a NIC.
        t.dev("0000:00:04.0", "0x1b36", "0x0010", "0x010802", "nvme", 3);
        t.write("sys/bus/pci/devices/0000:00:04.0/nvme/nvme0/nvme0n1/size", "0\n");
        t.dev("0000:00:05.0", "0x1af4", "0x1042", "0x010000", "virtio-pci", 4);
        t.write("sys/bus/pci/devices/0000:00:05.0/virtio1/block/vda/vda1/size", "0\n");
        t.dev("0000:00:06.0", "0x8086", "0x10d3", "0x020000", "e1000e", 5);
        t.write("proc/mounts", "/dev/vda1 / ext4 rw 0 0\n");
        t
    }
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup.sh");
        let mut c = Command::new("bash");
        c.arg(script).args(args).env("SYSFS_ROOT", self.dir.path()).env_remove("PCI_ALLOWED");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn status_lists_storage_functions_groups_and_hugepages() {
    let t = Tree::new();
    let o = t.run(&["status"], &[]);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("0000:00:04.0") && s.contains("nvme") && s.contains("nvme0n1"), "{s}");
    assert!(s.contains("0000:00:05.0") && s.contains("virtio-blk") && s.contains("vda"), "{s}");
    assert!(!s.contains("0000:00:06.0"), "NICs are not listed: {s}");
    assert!(s.contains("huge pages (2 MiB): total 0"), "{s}");
    assert!(s.contains("IOMMU: active"), "{s}");
}

#[test]
fn config_refuses_mounted_device_and_binds_the_rest() {
    let t = Tree::new();
    let o = t.run(&["config"], &[("HUGEMEM", "512")]);
    let s = text(&o);
    // Fails overall: vda is refused, and the fake kernel never moves 04.0 to vfio-pci.
    assert!(!o.status.success(), "{s}");
    assert!(
        s.contains("0000:00:05.0 (virtio-blk): refusing, it is in use: /dev/vda1 is mounted"),
        "{s}"
    );
    assert!(t.read("sys/bus/pci/devices/0000:00:05.0/driver_override").starts_with("(null)"));
    assert_eq!(t.read("sys/bus/pci/drivers/virtio-pci/unbind"), "");
    // 04.0 got the full bind sequence.
    assert_eq!(t.read("sys/bus/pci/devices/0000:00:04.0/driver_override"), "vfio-pci");
    assert_eq!(t.read("sys/bus/pci/drivers/nvme/unbind"), "0000:00:04.0");
    assert_eq!(t.read("sys/bus/pci/drivers_probe"), "0000:00:04.0");
    assert!(s.contains("did not bind to vfio-pci"), "{s}");
    // The NIC was never touched.
    assert_eq!(t.read("sys/bus/pci/drivers/e1000e/unbind"), "");
    assert_eq!(t.read("proc/sys/vm/nr_hugepages"), "256");
}

#[test]
fn config_honours_pci_allowed_and_swap() {
    let t = Tree::new();
    t.write("proc/mounts", "");
    t.write("proc/swaps", "Filename Type Size Used Priority\n/dev/nvme0n1 partition 1 0 -2\n");
    let o = t.run(&["config"], &[("PCI_ALLOWED", "0000:00:04.0"), ("HUGEMEM", "0")]);
    let s = text(&o);
    assert!(!o.status.success(), "{s}");
    assert!(s.contains("/dev/nvme0n1 is active swap"), "{s}");
    assert_eq!(t.read("sys/bus/pci/drivers/nvme/unbind"), "");
    assert_eq!(t.read("sys/bus/pci/drivers/virtio-pci/unbind"), "", "not in PCI_ALLOWED");
    assert_eq!(t.read("proc/sys/vm/nr_hugepages"), "0\n", "HUGEMEM=0 leaves huge pages alone");
}

#[test]
fn reset_gives_vfio_functions_back() {
    let t = Tree::new();
    fs::remove_file(t.p("sys/bus/pci/devices/0000:00:04.0/driver")).unwrap();
    symlink(t.p("sys/bus/pci/drivers/vfio-pci"), t.p("sys/bus/pci/devices/0000:00:04.0/driver"))
        .unwrap();
    let o = t.run(&["reset"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(t.read("sys/bus/pci/drivers/vfio-pci/unbind"), "0000:00:04.0");
    assert!(t.read("sys/bus/pci/devices/0000:00:04.0/driver_override").starts_with('\n'));
    assert_eq!(t.read("sys/bus/pci/drivers/virtio-pci/unbind"), "", "not on vfio-pci: untouched");
}

#[test]
fn dry_run_changes_nothing() {
    let t = Tree::new();
    let o = t.run(&["config"], &[("DRY_RUN", "yes"), ("PCI_ALLOWED", "0000:00:04.0")]);
    let s = text(&o);
    assert!(o.status.success(), "{s}");
    assert!(s.contains("would write 'vfio-pci'"), "{s}");
    assert!(t.read("sys/bus/pci/devices/0000:00:04.0/driver_override").starts_with("(null)"));
    assert_eq!(t.read("proc/sys/vm/nr_hugepages"), "0\n");
}

#[test]
fn bad_arguments_print_usage_and_fail() {
    let t = Tree::new();
    for args in [&["bogus"][..], &[][..]] {
        let o = t.run(args, &[]);
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).contains("Usage: scripts/setup.sh"), "{}", text(&o));
    }
    let o = t.run(&["config"], &[("HUGEMEM", "lots"), ("PCI_ALLOWED", "none")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("HUGEMEM=lots"), "{}", text(&o));
}
