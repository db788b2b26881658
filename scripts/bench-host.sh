#!/bin/bash
# Host benchmarks of the drivers, behind one command, and one summary table:
#   - mfio packet round trip (cargo bench -p mfio --bench roundtrip);
#   - the NVMe driver against its controller model in null mode (cargo bench -p mfio-nvme
#     --bench null) and the virtio-blk driver against its null model (cargo bench -p
#     mfio-virtio --bench null): 4 KiB random reads, one queue, QD 1/32/128: ns and heap
#     allocations per I/O, doorbells (notifies) per I/O;
#   - instructions per I/O under valgrind --tool=callgrind, which counts instructions and so
#     is stable on a noisy 2-core machine where ns are not: nvme-cat bench on `model:null=1`
#     and `virtio-model:null` run twice with different --ios, and (Ir2 - Ir1) / (ios2 - ios1) cancels
#     start-up and bring-up. The figure covers the driver, the model (in the same thread) and
#     the load generator; the top functions of each run are kept to split it.
#
# Usage: scripts/bench-host.sh [--quick] [--no-callgrind] [--out DIR]
#   --quick         short bench runs (--quick) and fewer I/Os under callgrind: a smoke test
#   --no-callgrind  skip the callgrind part
#   --out DIR       raw outputs (default /tmp/mfio-bench-host.DATE)
# Exit code: 0 once the summary is printed (a missing or failing bench shows in it), 2 on a
# usage or build error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QUICK=0 CALLGRIND=1
OUT=/tmp/mfio-bench-host.$(date +%Y%m%d-%H%M%S)
die() { echo "bench-host: ERROR: $*" >&2; exit 2; }
msg() { echo "bench-host: $*" >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-callgrind) CALLGRIND=0 ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
QARG=()
[ "$QUICK" = 1 ] && QARG=(--quick)
T0=$(date +%s)

# ---- the cargo benches -----------------------------------------------------------------------
# bench NAME PACKAGE BENCH: runs one bench binary, output in $OUT/NAME.md; "missing" if the
# package has no such bench (yet), "failed" if it fails.
declare -A STATUS
bench() {
  local name=$1 pkg=$2 b=$3
  if ! cargo metadata --no-deps --format-version 1 |
    jq -e --arg p "$pkg" --arg b "$b" '.packages[] | select(.name == $p) | .targets[] | select(.name == $b and (.kind | index("bench")))' >/dev/null; then
    STATUS[$name]=missing
    msg "$pkg has no bench '$b': skipped"
    return
  fi
  msg "cargo bench -p $pkg --bench $b ${QARG[*]}"
  if cargo bench -q -p "$pkg" --bench "$b" -- ${QARG[@]+"${QARG[@]}"} >"$OUT/$name.md" 2>"$OUT/$name.err"; then
    STATUS[$name]=ok
  else
    STATUS[$name]=failed
    msg "$name failed: $(tail -n 1 "$OUT/$name.err")"
  fi
}
# Build all first, so that compiling one does not disturb another's timing.
cargo bench --no-run -q -p mfio -p mfio-virtio -p mfio-nvme 2>"$OUT/build.err" || die "building the benches failed (see $OUT/build.err)"
bench roundtrip mfio roundtrip
bench nvme mfio-nvme null
bench virtio mfio-virtio null

# ---- callgrind: instructions per I/O ---------------------------------------------------------
# ir_total FILE: the total instruction count of a callgrind output file.
ir_total() { sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$1" | head -n 1; }
declare -A IR
if [ "$CALLGRIND" = 1 ]; then
  command -v valgrind >/dev/null || die "valgrind not found (apt-get install -y valgrind)"
  cargo build --release -q -p nvme-cat || die "building nvme-cat failed"
  NC=${CARGO_TARGET_DIR:-$ROOT/target}/release/nvme-cat
  if [ "$QUICK" = 1 ]; then N1=1000 N2=3000; else N1=5000 N2=25000; fi
  for dev in nvme virtio; do
    if [ "$dev" = nvme ]; then spec=model:null=1; else spec=virtio-model:null; fi
    for qd in 1 32 128; do
      ok=1
      for n in "$N1" "$N2"; do
        f="$OUT/callgrind.$dev.qd$qd.n$n"
        # --time far beyond the run: --ios ends it, so both runs do exactly n I/Os.
        if ! valgrind --tool=callgrind --callgrind-out-file="$f.out" "$NC" bench "$spec" \
          --rw randread --bs 4K --qd "$qd" --ios "$n" --time 100000 -o json >"$f.json" 2>"$f.err"; then
          ok=0
          msg "callgrind $dev qd$qd n$n failed: $(tail -n 1 "$f.err")"
        fi
      done
      if [ "$ok" = 1 ]; then
        i1=$(ir_total "$OUT/callgrind.$dev.qd$qd.n$N1.out")
        i2=$(ir_total "$OUT/callgrind.$dev.qd$qd.n$N2.out")
        IR[$dev.$qd]=$(awk -v a="$i1" -v b="$i2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.0f", (b - a) / (n2 - n1) }')
        # Where the instructions go, by function (self cost), for the optimization notes.
        callgrind_annotate --inclusive=no "$OUT/callgrind.$dev.qd$qd.n$N2.out" 2>/dev/null |
          head -n 60 >"$OUT/callgrind.$dev.qd$qd.top.txt" || true
      else
        IR[$dev.$qd]=failed
      fi
      msg "callgrind $dev qd$qd: ${IR[$dev.$qd]} instructions/IO"
    done
  done
fi
T1=$(date +%s)

# ---- summary ---------------------------------------------------------------------------------
# cell FILE COL KEY...: the trimmed cell COL of the first markdown row whose leading cells are
# the KEYs (cells counted from 1).
cell() {
  local f=$1 c=$2
  shift 2
  [ -f "$f" ] || { echo -; return; }
  awk -F'|' -v c="$c" -v keys="$(IFS='|'; echo "$*")" '
    function trim(s) { gsub(/^ +| +$/, "", s); return s }
    BEGIN { n = split(keys, k, "|") }
    NF > 2 { ok = 1; for (i = 1; i <= n; i++) if (trim($(i + 1)) != k[i]) ok = 0
             if (ok) { print trim($(c + 1)); found = 1; exit } }
    END { if (!found) print "-" }' "$f"
}
{
  echo "Host benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(rustc --version | cut -d' ' -f1-2), total $((T1 - T0))s"
  [ "$QUICK" = 1 ] && echo "(--quick: short runs, figures are rough)"
  echo "Benches: roundtrip ${STATUS[roundtrip]}, nvme ${STATUS[nvme]}, virtio ${STATUS[virtio]}; callgrind: nvme-cat bench on model:null=1 / virtio-model:null (both null models), ${N1:-?} and ${N2:-?} I/Os."
  echo
  echo "| what | QD | ns / IO | allocs / IO | doorbells / IO | instructions / IO |"
  echo "|---|---:|---:|---:|---:|---:|"
  for mode in registers shadow; do
    for qd in 1 32 128; do
      # callgrind runs nvme-cat on the model with the driver's defaults: register doorbells.
      ir=-
      [ "$mode" = registers ] && ir=${IR[nvme.$qd]:--}
      n=("$OUT/nvme.md")
      echo "| NVMe, null model, $mode doorbells | $qd | $(cell "${n[@]}" 4 "$mode" "$qd") | $(cell "${n[@]}" 5 "$mode" "$qd") | $(cell "${n[@]}" 6 "$mode" "$qd") | $ir |"
    done
  done
  for ring in packed split; do
    for qd in 1 32 128; do
      # callgrind runs nvme-cat on the virtio model with its defaults: packed rings.
      ir=-
      [ "$ring" = packed ] && ir=${IR[virtio.$qd]:--}
      v=("$OUT/virtio.md")
      z="DMA (zero copy)"
      echo "| virtio-blk, null model, $ring ring, zero copy | $qd | $(cell "${v[@]}" 5 "$ring" "$z" "$qd") | $(cell "${v[@]}" 6 "$ring" "$z" "$qd") | $(cell "${v[@]}" 7 "$ring" "$z" "$qd") | $ir |"
    done
  done
  for op in "pinned stack packet, reused (io + wait)" "batch of 32 packets, one poll (per packet)"; do
    echo "| mfio round trip: $op | - | $(cell "$OUT/roundtrip.md" 2 "$op") | $(cell "$OUT/roundtrip.md" 3 "$op") | - | - |"
  done
  echo
  echo "Targets: at QD 128, <= 80 ns and 0 heap allocations per I/O."
} | tee "$OUT/summary.md"
msg "raw outputs in $OUT (NAME.md per bench, callgrind.* files)"
