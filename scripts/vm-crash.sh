#!/bin/bash
# The engines' crash test across boots: a guest appends to the write-ahead log and commits to
# redb on QEMU's NVMe and virtio-blk through VFIO (guest-wal write, one writer per device), and
# QEMU is killed with SIGKILL mid-run (no shutdown, no flush). A second boot on the same images
# recovers both (guest-wal verify): every record whose append had returned, in order with no
# gap, redb's integrity check and every committed key. The acknowledgements go to the host
# through the guest's 9p results directory as they happen.
#
# Usage: scripts/vm-crash.sh [--mode iommu|noiommu] [--run SECONDS] [--release] [--no-build]
#   --run SECONDS   how long after the guest is ready to kill QEMU (default 8)
# Exit: 0 recovered, 1 a check failed, 2 the harness failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
MODE=iommu RUN=8 PROFILE=debug BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=$2; shift ;;
    --run) RUN=$2; shift ;;
    --release) PROFILE=release ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "vm-crash: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  PFLAG=()
  [ "$PROFILE" = release ] && PFLAG=(--release)
  cargo build -q -p vm-tests --bin guest-wal ${PFLAG[@]+"${PFLAG[@]}"} || exit 2
fi
REL=()
[ "$PROFILE" = release ] && REL=(--release)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/mfio-vm-crash.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
mkdir -p "$DIR/out"
IMGS=(--nvme-img "$DIR/nvme.img" --vblk-img "$DIR/vblk.img")

echo "vm-crash: [$MODE] boot 1: writers on nvme and virtio, QEMU killed ${RUN}s after the guest is ready"
"$HERE/vm-run.sh" --no-setup --mode "$MODE" --timeout 300 --out "$DIR/out" "${IMGS[@]}" ${REL[@]+"${REL[@]}"} \
  -- /bin/sh -c 'guest-wal write nvme "$MFIO_VM_OUT/nvme.acks" & guest-wal write virtio "$MFIO_VM_OUT/virtio.acks" & wait' \
  >"$DIR/boot1.log" 2>&1 &
VM=$!
# The guest is ready when the writers say so.
for _ in $(seq 1 1200); do
  grep -q '^ready' "$DIR/out/nvme.acks" 2>/dev/null && grep -q '^ready' "$DIR/out/virtio.acks" 2>/dev/null && break
  kill -0 "$VM" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^ready' "$DIR/out/nvme.acks" 2>/dev/null || ! grep -q '^ready' "$DIR/out/virtio.acks" 2>/dev/null; then
  echo "vm-crash: the writers never started:" >&2
  cat "$DIR/boot1.log" "$DIR"/out/*.acks >&2 2>/dev/null || true
  exit 2
fi
sleep "$RUN"
QEMU=$(pgrep -f "qemu-system-x86_64.*$DIR/nvme.img" || true)
[ -n "$QEMU" ] || { echo "vm-crash: QEMU ended before the kill:" >&2; cat "$DIR/boot1.log" >&2; exit 2; }
kill -9 $QEMU
wait "$VM" || true
echo "vm-crash: killed QEMU; acknowledged: nvme $(grep -c '^wal' "$DIR/out/nvme.acks") records, $(grep -c '^redb' "$DIR/out/nvme.acks") commits; virtio $(grep -c '^wal' "$DIR/out/virtio.acks") records, $(grep -c '^redb' "$DIR/out/virtio.acks") commits"

echo "vm-crash: [$MODE] boot 2: recovery on the same images"
set +e
"$HERE/vm-run.sh" --no-setup --mode "$MODE" --timeout 300 --out "$DIR/out" "${IMGS[@]}" ${REL[@]+"${REL[@]}"} \
  -- /bin/sh -c 'guest-wal verify nvme "$MFIO_VM_OUT/nvme.acks" && guest-wal verify virtio "$MFIO_VM_OUT/virtio.acks"'
RC=$?
set -e
[ "$RC" = 0 ] && echo "vm-crash: PASS" || echo "vm-crash: FAIL (exit $RC)"
[ "$RC" = 0 ] || exit 1
