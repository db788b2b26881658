#!/bin/bash
# Hot removal mid-I/O, in the guest, on both drivers: two threads keep 32 reads each in flight
# (one queue polled, one interrupt-driven) while the guest program `removal`
# (vm-tests/src/bin/removal.rs) removes the device through sysfs; every read must resolve, the
# in-flight ones with Gone, the kernel must get the device back without waiting, and the device
# brought back by a rescan must work under a new controller with its data intact. One boot per
# mode (about 10 s each): a device is removed once per boot, since a second rescan of the same
# function in one boot hangs the guest kernel's BAR reassignment (seen on 6.1).
#
# Usage: scripts/vm-removal.sh [--modes iommu,noiommu] [--release] [--no-build]
# Exit: 0 every mode passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MODES=iommu,noiommu PROFILE=debug BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --modes) MODES=$2; shift ;;
    --release) PROFILE=release ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
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
RC=0
IFS=, read -r -a MODE_LIST <<<"$MODES"
for mode in "${MODE_LIST[@]}"; do
  echo "vm-removal: [$mode] sysfs remove of nvme and virtio-blk under QD32 x 2 threads"
  set +e
  "$HERE/vm-run.sh" --no-setup --mode "$mode" --timeout 180 ${REL[@]+"${REL[@]}"} -- removal sysfs
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then echo "vm-removal: [$mode] PASS"; else echo "vm-removal: [$mode] FAIL (exit $rc)"; RC=1; fi
done
exit $RC
