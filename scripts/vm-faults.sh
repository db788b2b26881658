#!/bin/bash
# Faults from QEMU's own block layer, in the guest, on both drivers: QEMU's blkdebug fails reads
# and writes of chosen sectors of NVMe namespace 1 and of the virtio-blk device (always, and once),
# and NVMe namespace 2 (QEMU's null-co) delays every request past the driver's I/O timeout. The
# guest program `faults` (vm-tests/src/bin/faults.rs) checks that exactly the segments on the bad
# sectors fail, with the device's status, that the rest of each request and batch completes with
# the right data, and that the timeout, abort and reset path ends in bounded time with the
# controller working again. One boot per mode.
#
# Usage: scripts/vm-faults.sh [--modes iommu,noiommu] [--release] [--no-build]
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
    *) echo "vm-faults: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"
REL=()
[ "$PROFILE" = release ] && REL=(--release)
if [ "$BUILD" = 1 ]; then
  cargo build -q -p vm-tests --bin faults ${REL[@]+"${REL[@]}"} || exit 2
fi
DIR=$(mktemp -d "${TMPDIR:-/tmp}/mfio-vm-faults.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
# The sectors (of 512 bytes) hold the bytes faults.rs names: READ_BAD 1 MiB, WRITE_BAD 2 MiB,
# READ_ONCE 3 MiB. errno 5 is EIO.
cat >"$DIR/blkdebug.conf" <<'CONF'
[inject-error]
event = "read_aio"
errno = "5"
sector = "2048"

[inject-error]
event = "write_aio"
errno = "5"
sector = "4096"

[inject-error]
event = "read_aio"
errno = "5"
sector = "6144"
once = "on"
CONF
RC=0
IFS=, read -r -a MODE_LIST <<<"$MODES"
for mode in "${MODE_LIST[@]}"; do
  echo "vm-faults: [$mode] blkdebug under nvme ns1 and virtio-blk; nvme ns2 delays requests 2 s"
  set +e
  "$HERE/vm-run.sh" --no-setup --mode "$mode" --timeout 300 --blkdebug "$DIR/blkdebug.conf" \
    --nvme2-latency 2000000000 ${REL[@]+"${REL[@]}"} -- faults
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then echo "vm-faults: [$mode] PASS"; else echo "vm-faults: [$mode] FAIL (exit $rc)"; RC=1; fi
done
exit $RC
