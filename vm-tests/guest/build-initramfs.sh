#!/bin/bash
# Build the guest's initramfs: busybox-static and its applet links, the kernel modules the guest
# needs (closed over their dependencies with the host's kmod against the unpacked kernel), the
# no-IOMMU VFIO modules, and vm-tests/guest/init.
# Called by scripts/vm-setup.sh: KV=... KDIR=... build-initramfs.sh OUTPUT.cpio.gz
set -euo pipefail
: "${KV:?}" "${KDIR:?}"
OUT=${1:?output path}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KROOT="$KDIR/kernel"
R=$(mktemp -d "${TMPDIR:-/tmp}/mfio-initramfs.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,host,out,etc,"lib/modules/$KV"}

cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done

# nvme/virtio_blk: only loaded with --no-bind (tests that bind devices themselves).
# virtio_pci + 9p: the host shares. qemu_fw_cfg: the command to run comes through fw_cfg.
WANT="nvme virtio_blk virtio_pci vfio_pci vfio_iommu_type1 9pnet_virtio 9p qemu_fw_cfg"
WANT="$WANT crc64_rocksoft_generic crct10dif_pclmul" # nvme's t10-pi wants a crc64 implementation
WANT="$WANT nbd ext4 crc32c_generic" # guest-nbd: the kernel's NBD client, and ext4 (which wants crc32c)
for m in $WANT; do modprobe -d "$KROOT" -S "$KV" --show-depends "$m"; done |
  awk '$1=="insmod"{print $2}' | awk '!s[$0]++' | while read -r ko; do
  rel=${ko#"$KROOT/lib/modules/$KV/"}
  mkdir -p "$R/lib/modules/$KV/$(dirname "$rel")"
  cp "$ko" "$R/lib/modules/$KV/$rel"
done
cp "$KROOT/lib/modules/$KV"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KV/"
depmod -b "$R" "$KV"

# The VFIO modules rebuilt with CONFIG_VFIO_NOIOMMU=1, loaded by /init in no-IOMMU mode only.
N="$KDIR/vfio-noiommu"
mkdir -p "$R/lib/vfio-noiommu"
cp "$N"/{vfio,vfio_iommu_type1,vfio_virqfd}.ko "$N"/pci/vfio-pci{,-core}.ko "$R/lib/vfio-noiommu/"

cp "$HERE/init" "$R/init"
chmod +x "$R/init"
(cd "$R" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$OUT"
echo "initramfs: $(du -h "$OUT" | cut -f1), $(find "$R/lib" -name '*.ko' | wc -l) modules"
