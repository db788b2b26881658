//! PCI functions as sysfs shows them: enumerate, inspect IOMMU groups, bind to vfio-pci and
//! give back to the kernel driver.
//!
//! Everything takes a root directory (`/` on a real system) so tests run on a fake tree.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::address::PciAddress;
use crate::error::PciError;

/// PCI class code of an NVMe controller (mass storage, NVM, NVMe programming interface).
pub const CLASS_NVME: u32 = 0x010802;
/// Red Hat / virtio PCI vendor ID.
pub const VENDOR_VIRTIO: u16 = 0x1af4;
/// virtio-blk device IDs: transitional and modern (0x1040 + 2).
pub const DEVICE_VIRTIO_BLK: [u16; 2] = [0x1001, 0x1042];

/// The driver name vfio-pci registers.
pub const VFIO_PCI: &str = "vfio-pci";

/// One PCI function as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Its address.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (class, subclass, programming interface).
    pub class: u32,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// `driver_override`, if set.
    pub driver_override: Option<String>,
    /// IOMMU group number (present with an IOMMU, or in no-IOMMU mode once bound to vfio-pci).
    pub iommu_group: Option<u32>,
    /// The other functions in the same IOMMU group.
    pub group_peers: Vec<PciAddress>,
    /// NUMA node, if the platform says.
    pub numa_node: Option<i32>,
}

impl PciFunction {
    /// Whether this is an NVMe controller.
    pub fn is_nvme(&self) -> bool {
        self.class == CLASS_NVME
    }

    /// Whether this is a virtio-blk device.
    pub fn is_virtio_blk(&self) -> bool {
        self.vendor == VENDOR_VIRTIO && DEVICE_VIRTIO_BLK.contains(&self.device)
    }

    /// Whether it is bound to vfio-pci.
    pub fn on_vfio(&self) -> bool {
        self.driver.as_deref() == Some(VFIO_PCI)
    }
}

/// The sysfs view of PCI, rooted at a directory.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::system()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PciError + '_ {
    move |source| PciError::Io { path: path.to_path_buf(), source }
}

impl Sysfs {
    /// The running system (`/`).
    pub fn system() -> Sysfs {
        Sysfs::new("/")
    }

    /// A tree rooted at `root` (holding `sys/bus/pci/...`, `sys/kernel/iommu_groups/...`,
    /// `sys/module/vfio/...`, `dev/vfio/...`).
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `sys/bus/pci/devices/ADDR` under the root.
    pub fn device_dir(&self, addr: PciAddress) -> PathBuf {
        self.root.join("sys/bus/pci/devices").join(addr.to_string())
    }

    fn drivers_dir(&self) -> PathBuf {
        self.root.join("sys/bus/pci/drivers")
    }

    /// `/dev/vfio/N` (or `/dev/vfio/noiommu-N`) under the root, for group `group`.
    pub fn group_dev(&self, group: u32, noiommu: bool) -> PathBuf {
        let name = if noiommu { format!("noiommu-{group}") } else { group.to_string() };
        self.root.join("dev/vfio").join(name)
    }

    /// Whether VFIO's no-IOMMU mode is on.
    pub fn noiommu_enabled(&self) -> bool {
        fs::read_to_string(self.root.join("sys/module/vfio/parameters/enable_unsafe_noiommu_mode"))
            .map(|s| s.trim() == "Y" || s.trim() == "1")
            .unwrap_or(false)
    }

    /// Whether any IOMMU is active (some IOMMU group exists that is not a no-IOMMU one).
    pub fn iommu_present(&self) -> bool {
        fs::read_dir(self.root.join("sys/class/iommu"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Whether group `group` is a VFIO no-IOMMU group (`/dev/vfio/noiommu-N` exists).
    pub fn group_is_noiommu(&self, group: u32) -> bool {
        self.group_dev(group, true).exists()
    }

    /// Every PCI function, sorted by address.
    pub fn list(&self) -> Result<Vec<PciFunction>, PciError> {
        let dir = self.root.join("sys/bus/pci/devices");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let Some(addr) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            out.push(self.function(addr)?);
        }
        out.sort_by_key(|f| f.address);
        Ok(out)
    }

    /// NVMe and virtio-blk functions.
    pub fn storage_functions(&self) -> Result<Vec<PciFunction>, PciError> {
        Ok(self.list()?.into_iter().filter(|f| f.is_nvme() || f.is_virtio_blk()).collect())
    }

    /// One function.
    pub fn function(&self, addr: PciAddress) -> Result<PciFunction, PciError> {
        let dir = self.device_dir(addr);
        if !dir.exists() {
            return Err(PciError::NotFound(addr));
        }
        let hex = |name: &str| -> Result<u32, PciError> {
            let p = dir.join(name);
            let s = fs::read_to_string(&p).map_err(io_err(&p))?;
            let t = s.trim();
            u32::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| PciError::Parse { path: p.clone(), content: t.to_string() })
        };
        let iommu_group = link_name(&dir.join("iommu_group")).and_then(|n| n.parse().ok());
        let group_peers = match iommu_group {
            Some(g) => self.group_members(g)?.into_iter().filter(|a| *a != addr).collect(),
            None => Vec::new(),
        };
        Ok(PciFunction {
            address: addr,
            vendor: hex("vendor")? as u16,
            device: hex("device")? as u16,
            class: hex("class")?,
            driver: link_name(&dir.join("driver")),
            driver_override: fs::read_to_string(dir.join("driver_override"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s != "(null)"),
            iommu_group,
            group_peers,
            numa_node: fs::read_to_string(dir.join("numa_node"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        })
    }

    /// The functions in IOMMU group `group`.
    pub fn group_members(&self, group: u32) -> Result<Vec<PciAddress>, PciError> {
        let dir = self.root.join("sys/kernel/iommu_groups").join(group.to_string()).join("devices");
        let mut v: Vec<PciAddress> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Check that `addr` can be opened through VFIO: bound to vfio-pci, in an IOMMU group (or a
    /// no-IOMMU one), and every other member of the group bound to vfio-pci or no driver.
    /// Returns the function.
    pub fn check_vfio_ready(&self, addr: PciAddress) -> Result<PciFunction, PciError> {
        let f = self.function(addr)?;
        if !f.on_vfio() {
            return Err(PciError::NotBoundToVfio { addr, driver: f.driver });
        }
        let group = f.iommu_group.ok_or(PciError::NoIommu(addr))?;
        let mut others = Vec::new();
        for peer in &f.group_peers {
            let p = self.function(*peer)?;
            match p.driver.as_deref() {
                // The kernel counts these as harmless in a group (vfio_dev_driver_allowed), and
                // bridges (pcieport) are not DMA masters of their own.
                None | Some(VFIO_PCI) | Some("pci-stub") | Some("pcieport") => {}
                Some(d) => others.push((*peer, d.to_string())),
            }
        }
        if !others.is_empty() {
            return Err(PciError::GroupNotViable { addr, group, others });
        }
        Ok(f)
    }

    /// Bind `addr` to vfio-pci through `driver_override`: unbind it from its driver, probe.
    /// Returns the driver it had (to give it back later). A no-op when already on vfio-pci.
    pub fn bind_vfio(&self, addr: PciAddress) -> Result<Option<String>, PciError> {
        let f = self.function(addr)?;
        if f.on_vfio() {
            return Ok(None);
        }
        if !self.drivers_dir().join(VFIO_PCI).exists() {
            return Err(PciError::VfioPciMissing);
        }
        let dir = self.device_dir(addr);
        write_sysfs(&dir.join("driver_override"), VFIO_PCI)?;
        if let Some(d) = &f.driver {
            write_sysfs(&self.drivers_dir().join(d).join("unbind"), &addr.to_string())?;
        }
        write_sysfs(&self.root.join("sys/bus/pci/drivers_probe"), &addr.to_string())?;
        let now = self.function(addr)?;
        if !now.on_vfio() {
            return Err(PciError::BindFailed { addr, driver: now.driver });
        }
        Ok(f.driver)
    }

    /// Give `addr` back to its kernel driver: clear `driver_override`, unbind from vfio-pci,
    /// probe. Returns the driver it ends up with.
    pub fn unbind_vfio(&self, addr: PciAddress) -> Result<Option<String>, PciError> {
        let f = self.function(addr)?;
        let dir = self.device_dir(addr);
        // A lone newline clears the override.
        write_sysfs(&dir.join("driver_override"), "\n")?;
        if f.on_vfio() {
            write_sysfs(&self.drivers_dir().join(VFIO_PCI).join("unbind"), &addr.to_string())?;
        }
        write_sysfs(&self.root.join("sys/bus/pci/drivers_probe"), &addr.to_string())?;
        Ok(self.function(addr)?.driver)
    }
}

/// The last component of a symlink's target (a driver or group name).
fn link_name(p: &Path) -> Option<String> {
    let t = fs::read_link(p).ok()?;
    Some(t.file_name()?.to_str()?.to_string())
}

/// Write a sysfs attribute (no create, no truncate: sysfs files take one write).
fn write_sysfs(path: &Path, value: &str) -> Result<(), PciError> {
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.write_all(value.as_bytes()).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake tree: an NVMe controller on `nvme` in group 3 with a peer, a virtio-blk on
    /// vfio-pci alone in group 4, a NIC with no group.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let f = Fake { dir };
            for d in ["nvme", "vfio-pci", "e1000e", "virtio-pci"] {
                f.mkdir(&format!("sys/bus/pci/drivers/{d}"));
                f.write(&format!("sys/bus/pci/drivers/{d}/unbind"), "");
            }
            f.write("sys/bus/pci/drivers_probe", "");
            f.dev("0000:00:04.0", "0x1b36", "0x0010", "0x010802", Some("nvme"), Some(3));
            f.dev("0000:00:04.1", "0x8086", "0x10d3", "0x020000", Some("e1000e"), Some(3));
            f.dev("0000:00:05.0", "0x1af4", "0x1042", "0x010000", Some("vfio-pci"), Some(4));
            f.dev("0000:00:06.0", "0x8086", "0x10d3", "0x020000", None, None);
            f.mkdir("sys/class/iommu/dmar0");
            f
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
        fn mkdir(&self, rel: &str) {
            fs::create_dir_all(self.p(rel)).unwrap();
        }
        fn write(&self, rel: &str, s: &str) {
            fs::write(self.p(rel), s).unwrap();
        }
        fn read(&self, rel: &str) -> String {
            fs::read_to_string(self.p(rel)).unwrap()
        }
        fn dev(
            &self,
            a: &str,
            ven: &str,
            dev: &str,
            class: &str,
            drv: Option<&str>,
            group: Option<u32>,
        ) {
            let d = format!("sys/bus/pci/devices/{a}");
            self.mkdir(&d);
            self.write(&format!("{d}/vendor"), &format!("{ven}\n"));
            self.write(&format!("{d}/device"), &format!("{dev}\n"));
            self.write(&format!("{d}/class"), &format!("{class}\n"));
            self.write(&format!("{d}/numa_node"), "-1\n");
            self.write(&format!("{d}/driver_override"), "(null)\n");
            if let Some(drv) = drv {
                symlink(
                    self.p(&format!("sys/bus/pci/drivers/{drv}")),
                    self.p(&format!("{d}/driver")),
                )
                .unwrap();
            }
            if let Some(g) = group {
                let gd = format!("sys/kernel/iommu_groups/{g}");
                self.mkdir(&format!("{gd}/devices"));
                symlink(self.p(&d), self.p(&format!("{gd}/devices/{a}"))).unwrap();
                symlink(self.p(&gd), self.p(&format!("{d}/iommu_group"))).unwrap();
            }
        }
        fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.dir.path())
        }
    }

    fn a(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn enumerates_functions() {
        let f = Fake::new();
        let s = f.sysfs();
        let all = s.list().unwrap();
        assert_eq!(all.len(), 4);
        let nvme = &all[0];
        assert_eq!(nvme.address, a("0000:00:04.0"));
        assert_eq!((nvme.vendor, nvme.device, nvme.class), (0x1b36, 0x0010, 0x010802));
        assert!(nvme.is_nvme() && !nvme.is_virtio_blk());
        assert_eq!(nvme.driver.as_deref(), Some("nvme"));
        assert_eq!(nvme.driver_override, None);
        assert_eq!(nvme.iommu_group, Some(3));
        assert_eq!(nvme.group_peers, vec![a("0000:00:04.1")]);
        assert_eq!(nvme.numa_node, Some(-1));
        assert!(all[2].is_virtio_blk() && all[2].on_vfio());
        assert_eq!(all[3].iommu_group, None);
        let st = s.storage_functions().unwrap();
        assert_eq!(
            st.iter().map(|f| f.address).collect::<Vec<_>>(),
            vec![a("0000:00:04.0"), a("0000:00:05.0")]
        );
        assert!(s.iommu_present());
        assert!(!s.noiommu_enabled());
        f.mkdir("sys/module/vfio/parameters");
        f.write("sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "Y\n");
        assert!(s.noiommu_enabled());
    }

    #[test]
    fn readiness_errors_name_the_fix() {
        let f = Fake::new();
        let s = f.sysfs();
        let e = s.check_vfio_ready(a("0000:00:09.0")).unwrap_err();
        assert!(matches!(e, PciError::NotFound(_)), "{e}");
        let e = s.check_vfio_ready(a("0000:00:04.0")).unwrap_err().to_string();
        assert!(e.contains("bound to nvme, not vfio-pci") && e.contains("setup.sh config"), "{e}");
        // Bound to vfio-pci but its group peer is on e1000e.
        fs::remove_file(f.p("sys/bus/pci/devices/0000:00:04.0/driver")).unwrap();
        symlink(
            f.p("sys/bus/pci/drivers/vfio-pci"),
            f.p("sys/bus/pci/devices/0000:00:04.0/driver"),
        )
        .unwrap();
        let e = s.check_vfio_ready(a("0000:00:04.0")).unwrap_err();
        match &e {
            PciError::GroupNotViable { group, others, .. } => {
                assert_eq!(*group, 3);
                assert_eq!(others, &vec![(a("0000:00:04.1"), "e1000e".to_string())]);
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("0000:00:04.1 is on e1000e"), "{e}");
        // No group at all: no IOMMU and no no-IOMMU mode.
        fs::remove_file(f.p("sys/bus/pci/devices/0000:00:06.0/iommu_group")).ok();
        symlink(
            f.p("sys/bus/pci/drivers/vfio-pci"),
            f.p("sys/bus/pci/devices/0000:00:06.0/driver"),
        )
        .unwrap();
        let e = s.check_vfio_ready(a("0000:00:06.0")).unwrap_err().to_string();
        assert!(e.contains("intel_iommu=on") && e.contains("enable_unsafe_noiommu_mode"), "{e}");
        // The lone virtio device is ready.
        assert!(s.check_vfio_ready(a("0000:00:05.0")).is_ok());
    }

    #[test]
    fn bind_writes_override_unbind_and_probe() {
        let f = Fake::new();
        let s = f.sysfs();
        // The fake kernel does not react to the writes, so the check afterwards fails; the
        // writes themselves are what is tested here.
        let e = s.bind_vfio(a("0000:00:04.0")).unwrap_err();
        assert!(
            matches!(e, PciError::BindFailed { ref driver, .. } if driver.as_deref() == Some("nvme")),
            "{e}"
        );
        assert_eq!(f.read("sys/bus/pci/devices/0000:00:04.0/driver_override"), "vfio-pci");
        assert_eq!(f.read("sys/bus/pci/drivers/nvme/unbind"), "0000:00:04.0");
        assert_eq!(f.read("sys/bus/pci/drivers_probe"), "0000:00:04.0");
        // Already on vfio-pci: nothing to do, nothing written.
        assert_eq!(s.bind_vfio(a("0000:00:05.0")).unwrap(), None);
        assert_eq!(f.read("sys/bus/pci/drivers/vfio-pci/unbind"), "");
    }

    #[test]
    fn bind_needs_vfio_pci_loaded() {
        let f = Fake::new();
        fs::remove_dir_all(f.p("sys/bus/pci/drivers/vfio-pci")).unwrap();
        let e = f.sysfs().bind_vfio(a("0000:00:04.0")).unwrap_err().to_string();
        assert!(e.contains("modprobe vfio-pci"), "{e}");
        assert_eq!(f.read("sys/bus/pci/drivers/nvme/unbind"), "", "nothing unbound");
    }

    #[test]
    fn unbind_clears_override_and_reprobes() {
        let f = Fake::new();
        let s = f.sysfs();
        let d = s.unbind_vfio(a("0000:00:05.0")).unwrap();
        // Sysfs takes one write; the fake file keeps the old tail past it.
        assert!(f.read("sys/bus/pci/devices/0000:00:05.0/driver_override").starts_with('\n'));
        assert_eq!(f.read("sys/bus/pci/drivers/vfio-pci/unbind"), "0000:00:05.0");
        assert_eq!(f.read("sys/bus/pci/drivers_probe"), "0000:00:05.0");
        // The fake kernel left the link in place.
        assert_eq!(d.as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn garbage_in_sysfs_is_an_error_not_a_panic() {
        let f = Fake::new();
        f.write("sys/bus/pci/devices/0000:00:04.0/vendor", "zz\n");
        let e = f.sysfs().function(a("0000:00:04.0")).unwrap_err();
        assert!(matches!(e, PciError::Parse { .. }), "{e}");
        // Entries that are not PCI addresses are skipped by list(), not fatal.
        f.mkdir("sys/bus/pci/devices/junk");
        f.write("sys/bus/pci/devices/0000:00:04.0/vendor", "0x1b36\n");
        assert_eq!(f.sysfs().list().unwrap().len(), 4);
        assert!(Sysfs::new(f.p("nonexistent")).list().is_err());
    }

    #[test]
    fn group_device_paths() {
        let s = Sysfs::new("/r");
        assert_eq!(s.group_dev(7, false), PathBuf::from("/r/dev/vfio/7"));
        assert_eq!(s.group_dev(7, true), PathBuf::from("/r/dev/vfio/noiommu-7"));
    }
}
