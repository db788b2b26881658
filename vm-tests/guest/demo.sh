#!/bin/bash
# The demo, inside the guest: nvme-cat against QEMU's NVMe and virtio-blk through VFIO.
# Run by scripts/demo.sh (MFIO_NVME_PCI and MFIO_VIRTIO_PCI come from scripts/vm-run.sh).
set -euo pipefail
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
N=$MFIO_NVME_PCI
V=$MFIO_VIRTIO_PCI

say nvme-cat list
say nvme-cat id-ctrl "$N"
say nvme-cat id-ns "$N" -n 1

# A write/read round trip: 1 MiB of random bytes at LBA 2048, read back and compared.
head -c 1048576 /dev/urandom > "$MFIO_VM_OUT/data"
say nvme-cat write "$N" --lba 2048 -I "$MFIO_VM_OUT/data"
say nvme-cat read "$N" --lba 2048 --count 2048 -O "$MFIO_VM_OUT/back"
cmp "$MFIO_VM_OUT/data" "$MFIO_VM_OUT/back" && echo "round trip: the 1 MiB read back is identical"

say nvme-cat smart-log "$N"
say nvme-cat bench "$N" --rw randread --bs 4K --qd 1 --time 3
say nvme-cat bench "$N" --rw randread --bs 4K --qd 32 --time 3
say nvme-cat bench "$V" --rw randread --bs 4K --qd 32 --time 3
echo
echo "Under TCG the guest CPU is emulated: compare ratios (scripts/bench-vm.sh), not absolutes."
