#!/bin/bash
# Soak in the guest: random mixed reads and writes of random sizes with verification (each block
# carries its LBA, a write generation and its writer) on QEMU's NVMe and virtio-blk through VFIO,
# two threads with a queue each per device, up to 16 I/Os in flight per queue, for a set time.
# Prints the counts; fails on any mismatch or I/O error, or resident memory growing by more than
# 8 MiB after the first tenth of the run (vm-tests/src/bin/soak.rs).
#
# Usage: scripts/soak.sh [--time SECONDS] [--mode iommu|noiommu] [--release] [--no-build]
#   --time SECONDS   how long the load runs (default 600; test.sh runs 60)
# Exit: 0 passed, 1 a check failed, 2 the harness failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TIME=600 MODE=iommu PROFILE=debug BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift ;;
    --mode) MODE=$2; shift ;;
    --release) PROFILE=release ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "soak: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "$TIME" =~ ^[1-9][0-9]*$ ]] || { echo "soak: --time wants whole seconds, at least 1" >&2; exit 2; }
cd "$ROOT"
REL=()
[ "$PROFILE" = release ] && REL=(--release)
if [ "$BUILD" = 1 ]; then
  cargo build -q -p vm-tests --bin soak ${REL[@]+"${REL[@]}"} || exit 2
fi
echo "soak: [$MODE] ${TIME}s on nvme and virtio-blk"
set +e
"$HERE/vm-run.sh" --no-setup --mode "$MODE" --timeout $((TIME + 180)) ${REL[@]+"${REL[@]}"} -- soak "$TIME"
RC=$?
set -e
[ "$RC" = 0 ] && echo "soak: PASS" || echo "soak: FAIL (exit $RC)"
[ "$RC" = 0 ] || exit 1
