#!/bin/bash
# Guest benchmark of the engines (issue: WAL and redb): the write-ahead log's durable appends
# (4 KiB records, 1, 8 and 64 appenders) and redb's inserts (1 and 1000 keys per transaction) on
# QEMU's NVMe through this project's VFIO driver and through the kernel's (the same WAL on
# /dev/nvme0n1 with O_DIRECT and fdatasync; redb on a file in ext4), alternating in one boot.
# Prints a markdown table: medians over the rounds, and ours / kernel.
#   scripts/bench-engines-vm.sh [--time SECONDS] [--rounds N] [--mode iommu|noiommu] [--out DIR]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
TIME=3 ROUNDS=3 MODE=iommu OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --mode) MODE=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "bench-engines-vm: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"
[ -n "$OUT" ] || OUT=/tmp/mfio-bench-engines.$(date -u +%Y%m%dT%H%M%S)
mkdir -p "$OUT"
cargo build -q --release -p vm-tests --bin bench-engines
"$HERE/vm-run.sh" --no-bind --release --mode "$MODE" --out "$OUT" --timeout 900 \
  -- /bin/bash "$ROOT/vm-tests/guest/bench-engines.sh" --time "$TIME" --rounds "$ROUNDS" >"$OUT/guest.log" 2>&1 || {
  echo "bench-engines-vm: the guest run failed:" >&2; cat "$OUT/guest.log" >&2; exit 1; }
echo "Engines in the guest, $(date -u '+%Y-%m-%d %H:%M UTC'): mode=$MODE, $ROUNDS rounds of ${TIME}s per run, medians (raw: $OUT/results.jsonl)"
echo
echo "| engine | load | ours (VFIO) | kernel | ours / kernel | ours p50 / p99 us | kernel p50 / p99 us | ours / kernel CPU us per op |"
echo "|---|---|---|---|---|---|---|---|"
jq -rs '
  def median: sort | if length == 0 then null else .[(length / 2 | floor)] end;
  def load: if .engine == "wal" then "\(.appenders) appenders, 4 KiB\(if .fua == false then ", write + flush" else "" end)" else "\(.keys_per_txn) keys/txn" end;
  (map(select(.target != "vfio"))) as $kernel |
  map(select(.target == "vfio")) | group_by([.engine, .appenders, .keys_per_txn, .fua]) | .[] |
  . as $o | ($kernel | map(select(.engine == $o[0].engine and .appenders == $o[0].appenders and .keys_per_txn == $o[0].keys_per_txn))) as $k |
  ($o | map(.ops_per_s) | median) as $oo | ($k | map(.ops_per_s) | median) as $ko |
  "| \($o[0].engine) | \($o[0] | load) | \($oo | floor) /s | \($ko | floor) /s | \(if $ko then ($oo / $ko * 100 | floor) / 100 else "-" end)x | \($o | map(.p50_us) | median) / \($o | map(.p99_us) | median) | \($k | map(.p50_us) | median) / \($k | map(.p99_us) | median) | \($o | map(.cpu_us_per_op) | median) / \($k | map(.cpu_us_per_op) | median) |"
' "$OUT/results.jsonl"
