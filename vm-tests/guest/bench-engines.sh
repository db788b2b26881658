#!/bin/bash
# Runs in the guest (through scripts/vm-run.sh --no-bind), started by
# scripts/bench-engines-vm.sh: the write-ahead log and redb on QEMU's NVMe, through this
# project's driver (VFIO) and through the kernel's, alternating, ROUNDS times in one boot.
#   WAL: durable appends of 4 KiB records from 1, 8 and 64 tasks on one thread; the kernel side
#        is the same WAL code on /dev/nvme0n1 through the file backend (O_DIRECT writes,
#        fdatasync).
#   redb: one key per transaction and 1000 per transaction; the kernel side is redb's own file
#        backend on a file in ext4 on /dev/nvme0n1.
# Writes one JSON line per run to $MFIO_VM_OUT/results.jsonl (bench-engines' output, with the
# round added).
#   bench-engines.sh --time SECONDS --rounds N
set -uo pipefail
TIME=3 ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    *) echo "bench-engines: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
log() { echo "bench-engines: $*" >&2; }
# shellcheck source=bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
NVME=${MFIO_NVME_PCI:?}
OUT=${MFIO_VM_OUT:?}
MNT=/run/mfio-engines
mkdir -p "$MNT"
: >"$OUT/results.jsonl"

run() { # ROUND ARGS...: one run, its JSON line recorded
  local round=$1 line
  shift
  if line=$(timeout 120 bench-engines "$@"); then
    echo "${line%\}},\"round\":$round}" | tee -a "$OUT/results.jsonl"
  else
    log "failed: bench-engines $*"
  fi
}

for round in $(seq "$ROUNDS"); do
  bind "$NVME" nvme || exit 1
  bdev=$(blockdev "$NVME") || { log "no kernel disk on $NVME"; exit 1; }
  for n in 1 8 64; do run "$round" wal "kernel:$bdev" --appenders "$n" --time "$TIME"; done
  mkfs.ext4 -q -F "$bdev" && mount "$bdev" "$MNT" || { log "mkfs/mount $bdev failed"; exit 1; }
  for k in 1 1000; do run "$round" redb "file:$MNT/db.redb" --keys-per-txn "$k" --time "$TIME"; done
  umount "$MNT"
  bind "$NVME" vfio-pci || exit 1
  for n in 1 8 64; do
    run "$round" wal "vfio:$NVME" --appenders "$n" --time "$TIME"
    # The same durability as the kernel path's fdatasync: write, then flush.
    run "$round" wal "vfio:$NVME" --appenders "$n" --time "$TIME" --fua 0
  done
  for k in 1 1000; do run "$round" redb "vfio:$NVME" --keys-per-txn "$k" --time "$TIME"; done
done
