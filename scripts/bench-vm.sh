#!/bin/bash
# Guest benchmark: this project's NVMe and virtio-blk drivers against the kernel's drivers (fio:
# io_uring, io_uring polled, libaio) and QEMU's userspace NVMe driver (qemu-img bench on
# nvme://), on the same emulated devices, in the same boots. Prints one markdown table per
# device and workload: medians across boots, and each peer's ratio to our figure.
#
# Usage: scripts/bench-vm.sh [options]
#   --boots N            guest boots (default 3); every boot measures every contender, and the
#                        tables show medians across boots (guest figures vary 15-20 % per boot)
#   --time SECONDS       duration of each run (default 5)
#   --contenders LIST    comma-separated (default all): mfio, fio-io_uring, fio-io_uring-poll,
#                        fio-libaio, qemu-nvme
#   --workloads LIST     comma-separated (default rand4k-qd1,rand4k-qd32,rand4k-qd128,
#                        seq128k-qd8,seq4k-qd1,seq4k-qd32); also seq4k-qd128. seq4k-* run on
#                        NVMe only, for ours and QEMU's driver (qemu-img bench reads
#                        sequentially only)
#   --mode iommu|noiommu the guest's VFIO mode (default iommu; QEMU's nvme:// driver needs it)
#   --out DIR            raw JSON, logs and the tables (default /tmp/mfio-bench-vm.DATE)
#   --boot-timeout SECS  wall-clock limit of one boot (default: from the number of runs)
#   --no-build           do not build nvme-cat (release) first
# Needs fio, qemu-img (Debian's qemu-utils, with the nvme block driver) and jq on the host: the
# guest runs the host's binaries through its 9p root. A run that fails or hangs shows as "fail:
# reason" or "hang" in its table; it never stops the others, and a boot that dies does not stop
# the next one. Exit code: 0 once the tables are printed, 2 on a usage or setup error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

BOOTS=3 TIME=5 MODE=iommu BUILD=1 BOOT_TIMEOUT=""
CONTENDERS=mfio,fio-io_uring,fio-io_uring-poll,fio-libaio,qemu-nvme
WORKLOADS=rand4k-qd1,rand4k-qd32,rand4k-qd128,seq128k-qd8,seq4k-qd1,seq4k-qd32
OUT=/tmp/mfio-bench-vm.$(date +%Y%m%d-%H%M%S)

die() { echo "bench-vm: ERROR: $*" >&2; exit 2; }
msg() { echo "bench-vm: $*" >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --boots) BOOTS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --mode) MODE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --boot-timeout) BOOT_TIMEOUT=$2; shift ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ "$BOOTS" =~ ^[1-9][0-9]*$ ]] || die "--boots wants a positive number"
[[ "$TIME" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--time wants seconds"
case "$MODE" in iommu | noiommu) ;; *) die "--mode is iommu or noiommu" ;; esac
for t in fio qemu-img jq; do
  command -v "$t" >/dev/null || msg "warning: $t not found on the host: its contender will fail (apt-get install -y fio qemu-utils jq)"
done

cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  msg "building nvme-cat (release)"
  cargo build --release -q -p nvme-cat || die "building nvme-cat failed"
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# A boot's limit: every run's duration plus its start-up (fio and nvme-cat start over 9p, the
# controller comes up) plus the qemu-img hang allowance, and the boot itself.
if [ -z "$BOOT_TIMEOUT" ]; then
  runs=$(($(tr ',' '\n' <<<"$CONTENDERS" | wc -l) * $(tr ',' '\n' <<<"$WORKLOADS" | wc -l) * 2))
  BOOT_TIMEOUT=$(awk -v r="$runs" -v t="$TIME" 'BEGIN { printf "%d", r * (t + 6) + 120 }')
fi

T0=$(date +%s)
ACCEL=""
for b in $(seq "$BOOTS"); do
  msg "boot $b of $BOOTS (limit ${BOOT_TIMEOUT}s)"
  # One QEMU at a time on this machine: other engineers' guests wait on the same lock.
  # --no-bind: the devices start on the kernel's drivers; bench-guest.sh rebinds them.
  rc=0
  flock /tmp/mfio-qemu.lock "$HERE/vm-run.sh" --no-bind --release --mode "$MODE" --out "$OUT" \
    --timeout "$BOOT_TIMEOUT" -- bash "$ROOT/vm-tests/guest/bench-guest.sh" --time "$TIME" \
    --contenders "$CONTENDERS" --workloads "$WORKLOADS" --boot "$b" \
    >"$OUT/boot-$b.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || msg "boot $b ended with exit code $rc (see $OUT/boot-$b.log); its finished runs still count"
  a=$(sed -n 's/.*accel=\([a-z]*\).*/\1/p' "$OUT/boot-$b.log" | tail -n 1)
  [ -n "$a" ] && ACCEL=$a
done
T1=$(date +%s)

# ---- tables ----------------------------------------------------------------------------------
cat "$OUT"/boot-*/results.tsv 2>/dev/null >"$OUT/all.tsv" || true
# median: the middle of the numbers on stdin (the mean of the two middle ones for an even count).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.*f", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'; }

{
  echo "Guest benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'): accel=${ACCEL:-unknown}, mode=$MODE, $BOOTS boot(s), ${TIME}s per run, total $((T1 - T0))s"
  echo "Host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(uname -r); guest: kernel $(sed -n 2p "$OUT"/boot-1/versions.txt 2>/dev/null), $(sed -n 3p "$OUT"/boot-1/versions.txt 2>/dev/null) vCPUs, TCG or KVM as above"
  echo "Figures: medians across boots of the runs that completed; p50/p99 in µs (fio: clat; qemu-img reports none)."
  echo "peer/mfio: the contender's IOPS over ours; mfio/peer: ours over the contender's (the targets' form)."
  for dev in nvme virtio; do
    for wl in ${WORKLOADS//,/ }; do
      rows=$(awk -F'\t' -v d="$dev" -v w="$wl" '$1 == d && $2 == w' "$OUT/all.tsv")
      [ -n "$rows" ] || continue
      echo
      echo "### $dev $wl"
      echo
      echo "| contender | IOPS | p50 µs | p99 µs | peer/mfio | mfio/peer | runs |"
      echo "|---|---:|---:|---:|---:|---:|---|"
      ours=$(awk -F'\t' '$3 == "mfio" && $4 ~ /^ok/ { print $5 }' <<<"$rows" | median)
      for c in ${CONTENDERS//,/ }; do
        mine=$(awk -F'\t' -v c="$c" '$3 == c' <<<"$rows")
        [ -n "$mine" ] || continue
        ok=$(awk -F'\t' '$4 ~ /^ok/' <<<"$mine")
        n_ok=$(grep -c . <<<"$ok" || true)
        n_hang=$(awk -F'\t' '$4 == "hang" { n++ } $4 ~ /^ok, [0-9]+ hang/ { split($4, x, " "); n += x[2] } END { print n + 0 }' <<<"$mine")
        n_fail=$(awk -F'\t' '$4 ~ /^fail/' <<<"$mine" | grep -c . || true)
        runs="$n_ok ok"
        [ "$n_hang" = 0 ] || runs="$runs, $n_hang hang"
        [ "$n_fail" = 0 ] || runs="$runs, $n_fail fail"
        if [ -z "$ok" ]; then
          # Nothing completed: say why (the first failure's reason, or that it hung).
          why=$(awk -F'\t' '{ print $4; exit }' <<<"$mine")
          echo "| $c | $why | - | - | - | - | $runs |"
          continue
        fi
        iops=$(cut -f5 <<<"$ok" | median)
        p50=$(cut -f6 <<<"$ok" | grep -v '^-$' | median || true)
        p99=$(cut -f7 <<<"$ok" | grep -v '^-$' | median || true)
        if [ "$c" = mfio ]; then pr="1.00x" mr="1.00x"; else pr=$(ratio "$iops" "$ours") mr=$(ratio "$ours" "$iops"); fi
        echo "| $c | $(fmt "$iops" 0) | $(fmt "$p50" 1) | $(fmt "$p99" 1) | $pr | $mr | $runs |"
      done
    done
  done
} | tee "$OUT/tables.md"
msg "raw results in $OUT (boot-N/ per boot: JSON, logs; all.tsv; tables.md)"
