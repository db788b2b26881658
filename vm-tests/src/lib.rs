//! Guest-side test programs, run inside a QEMU guest against QEMU's NVMe and virtio-blk devices
//! bound to vfio-pci. Each binary in `src/bin/guest-*.rs` is one guest test; `scripts/vm-tests.sh`
//! builds them on the host and runs every one of them in the guest, in IOMMU and no-IOMMU mode.
