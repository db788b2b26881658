#!/bin/bash
# Hot removal mid-I/O, in the guest, on both drivers: two threads keep 32 reads each in flight
# (one queue polled, one interrupt-driven) while the device is taken away; every read must
# resolve, the in-flight ones with Gone, the kernel must get the device back without waiting,
# and the device brought back must work under a new controller with its data intact. The guest
# program is `removal` (vm-tests/src/bin/removal.rs). Two ways, one boot each per mode (about
# 10 s a boot):
# - sysfs: the guest writes 1 to the device's `remove`, then rescans the bus;
# - qmp: the devices sit behind pcie-root-ports and QEMU's monitor unplugs them (QMP device_del,
#   answered by the guest's hotplug driver) and plugs them back (device_add), driven from the
#   host by scripts/qmp-hotplug.py as the guest signals through the shared results directory.
# A device is removed once per boot, since a second rescan of the same function in one boot
# hangs the guest kernel's BAR reassignment (seen on 6.1).
#
# Usage: scripts/vm-removal.sh [--modes iommu,noiommu] [--via sysfs,qmp] [--release] [--no-build]
# Exit: 0 every mode passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MODES=iommu,noiommu VIA=sysfs,qmp PROFILE=debug BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --modes) MODES=$2; shift ;;
    --via) VIA=$2; shift ;;
    --release) PROFILE=release ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "vm-removal: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"
REL=()
[ "$PROFILE" = release ] && REL=(--release)
if [ "$BUILD" = 1 ]; then
  cargo build -q -p vm-tests --bin removal ${REL[@]+"${REL[@]}"} || exit 2
fi
# run_qmp MODE: one boot with a hot-pluggable NVMe and virtio-blk behind their own root ports.
# The secondary buses are numbered in slot order, so the functions sit at 01:00.0 and 02:00.0.
run_qmp() {
  local mode=$1 dir out sock img_n img_v plat="" rc prc nvme vblk
  dir=$(mktemp -d "${TMPDIR:-/tmp}/mfio-removal.XXXXXX")
  out=$dir/out sock=$dir/qmp.sock img_n=$dir/hp-nvme.img img_v=$dir/hp-vblk.img
  mkdir -p "$out"
  truncate -s 128M "$img_n" "$img_v"
  [ "$mode" = iommu ] && plat=,iommu_platform=on
  nvme="nvme,id=hpnvme,serial=mfiohp01,drive=hpn,bus=rp1"
  vblk="virtio-blk-pci,id=hpvblk,drive=hpv,bus=rp2,disable-legacy=on$plat"
  python3 "$HERE/qmp-hotplug.py" "$sock" "$out" "nvme=hpnvme=$nvme" "virtio-blk=hpvblk=$vblk" &
  prc=$!
  set +e
  "$HERE/vm-run.sh" --no-setup --mode "$mode" --timeout 180 --out "$out" ${REL[@]+"${REL[@]}"} \
    --qemu-arg -qmp --qemu-arg "unix:$sock,server=on,wait=off" \
    --device pcie-root-port,id=rp1,chassis=1,slot=1,addr=08.0 \
    --device pcie-root-port,id=rp2,chassis=2,slot=2,addr=09.0 \
    --qemu-arg -blockdev --qemu-arg "driver=raw,node-name=hpn,file.driver=file,file.filename=$img_n" \
    --qemu-arg -blockdev --qemu-arg "driver=raw,node-name=hpv,file.driver=file,file.filename=$img_v" \
    --device "$nvme" --device "$vblk" \
    --env MFIO_HOTPLUG_NVME_PCI=0000:01:00.0 --env MFIO_HOTPLUG_VIRTIO_PCI=0000:02:00.0 \
    -- removal qmp
  rc=$?
  # The driver ends by itself once both devices are back; if the guest failed first, stop it.
  kill "$prc" 2>/dev/null
  wait "$prc"
  prc=$?
  set -e
  rm -rf "$dir"
  [ "$rc" = 0 ] || return "$rc"
  [ "$prc" = 0 ] || return 1
}

RC=0
IFS=, read -r -a MODE_LIST <<<"$MODES"
IFS=, read -r -a VIA_LIST <<<"$VIA"
for mode in "${MODE_LIST[@]}"; do
  for via in "${VIA_LIST[@]}"; do
    echo "vm-removal: [$mode/$via] removal of nvme and virtio-blk under QD32 x 2 threads"
    set +e
    case "$via" in
      sysfs) "$HERE/vm-run.sh" --no-setup --mode "$mode" --timeout 180 ${REL[@]+"${REL[@]}"} -- removal sysfs ;;
      qmp) run_qmp "$mode" ;;
      *) echo "vm-removal: --via is sysfs or qmp, not '$via'" >&2; exit 2 ;;
    esac
    rc=$?
    set -e
    if [ "$rc" = 0 ]; then echo "vm-removal: [$mode/$via] PASS"; else echo "vm-removal: [$mode/$via] FAIL (exit $rc)"; RC=1; fi
  done
done
exit $RC
