#!/bin/bash
# NBD servers side by side, through one client (fio's nbd engine, libnbd): mfio-nbd
# (`nvme-cat serve`), qemu-nbd and nbdkit's file plugin, each serving the same image over a
# Unix socket, 4 KiB random reads and writes at each queue depth. Rounds alternate the order
# of the servers; the table gives each one's median IOPS and latency percentiles and its ratio
# to qemu-nbd.
#
# Usage: scripts/bench-nbd.sh [options]
#   --qds LIST       queue depths (default 1,32)
#   --rounds N       rounds (default 3); --time SECONDS per run (default 3)
#   --size SIZE      image size (default 1G); --image PATH: serve this file or block device
#                    (its contents are overwritten by the write runs)
#   --servers LIST   of mfio, qemu-nbd, nbdkit (default all three); mfio-poll, mfio-interrupt:
#                    ours with that completion mode (mfio: adaptive, the default);
#                    mfio-interrupt+spin: interrupts, the sockets polled 50 us after a reply
#   --mfio-device D  what `nvme-cat serve` exports instead of the image (a PCI address, to
#                    compare with qemu-nbd serving the kernel's device in a guest)
#   --qemu-nbd-cache writeback|none   qemu-nbd's --cache (default writeback: the page cache,
#                    as the others use on a file; none for a block device, as ours bypasses it)
#   --first-round N  number this invocation's rounds from N (to add rounds to an --out DIR)
#   --no-fill        do not write the image before the rounds
#   --tcp            TCP on loopback (127.0.0.1, a free port) instead of a Unix socket
#   --report         no runs: print the table of what --out DIR holds
#   --out DIR        raw fio JSON and the table (default /tmp/mfio-bench-nbd.DATE)
# Needs fio (with its nbd engine), qemu-utils, nbdkit; a release nvme-cat (built if missing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QDS=1,32 ROUNDS=3 TIME=3 SIZE=1G IMAGE="" SERVERS=mfio,qemu-nbd,nbdkit MFIO_DEVICE=""
QCACHE=writeback FIRST=1 FILL=1 REPORT=0 TCP=0
OUT=/tmp/mfio-bench-nbd.$(date +%Y%m%d-%H%M%S)
die() { echo "bench-nbd: ERROR: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --qds) QDS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --image) IMAGE=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    --mfio-device) MFIO_DEVICE=$2; shift ;;
    --qemu-nbd-cache) QCACHE=$2; shift ;;
    --first-round) FIRST=$2; shift ;;
    --no-fill) FILL=0 ;;
    --report) REPORT=1 ;;
    --tcp) TCP=1 ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
IFS=, read -r -a SV <<<"$SERVERS"
IFS=, read -r -a QL <<<"$QDS"
median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
field() { # field FILE JQ
  jq -r "$2" "$1"
}
report() {
  local n
  n=$(find "$OUT" -name '*-qd*-r*.json' | sed 's/.*-r\([0-9]*\)\.json/\1/' | sort -u | wc -l)
  echo "| server | rw | QD | IOPS (median of $n) | p50 us | p99 us | vs qemu-nbd |"
  echo "|---|---|---|---|---|---|---|"
  for qd in "${QL[@]}"; do for rw in randread randwrite; do
    dir=read; [ "$rw" = randwrite ] && dir=write
    base=""
    for s in qemu-nbd "${SV[@]}"; do
      ls "$OUT/$s-$rw-qd$qd"-r*.json >/dev/null 2>&1 || continue
      iops=$(for f in "$OUT/$s-$rw-qd$qd"-r*.json; do field "$f" ".jobs[0].$dir.iops"; done | median)
      p50=$(for f in "$OUT/$s-$rw-qd$qd"-r*.json; do field "$f" ".jobs[0].$dir.clat_ns.percentile.\"50.000000\" / 1000"; done | median)
      p99=$(for f in "$OUT/$s-$rw-qd$qd"-r*.json; do field "$f" ".jobs[0].$dir.clat_ns.percentile.\"99.000000\" / 1000"; done | median)
      [ "$s" = qemu-nbd ] && base=$iops
      ratio=-; [ -n "$base" ] && ratio=$(awk -v a="$iops" -v b="$base" 'BEGIN {printf "%.2fx", a / b}')
      echo "$s $rw $qd $iops $p50 $p99 $ratio"
    done | awk '!seen[$1]++' | while read -r s rw_ qd_ iops p50 p99 ratio; do
      printf '| %s | %s | %s | %.0f | %.1f | %.1f | %s |\n' "$s" "$rw_" "$qd_" "$iops" "$p50" "$p99" "$ratio"
    done
  done; done
}
if [ "$REPORT" = 1 ]; then report; exit 0; fi
for t in fio jq; do command -v $t >/dev/null || die "$t is needed"; done
fio --enghelp 2>/dev/null | grep -qw nbd || die "this fio has no nbd engine"
mkdir -p "$OUT"
NVME_CAT=${NVME_CAT:-$ROOT/target/release/nvme-cat}
[ -x "$NVME_CAT" ] || (cd "$ROOT" && cargo build -q --release -p nvme-cat) || die "building nvme-cat failed"
if [ -z "$IMAGE" ]; then
  IMAGE=$OUT/disk.img
  truncate -s "$SIZE" "$IMAGE"
fi
SOCK=${MFIO_NBD_SOCK:-$OUT/nbd.sock} # a 9p directory cannot hold a socket: the guest sets this
PID=""
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  PID=""; rm -f "$SOCK"
}
trap stop EXIT

PORT=$((20000 + RANDOM % 20000))
URI="nbd+unix:///?socket=$SOCK"
[ "$TCP" = 1 ] && URI="nbd://127.0.0.1:$PORT/"
# Where each server listens: --unix/-k/-U PATH, or --listen/-b -p/-i -p on loopback.
listen_mfio() { if [ "$TCP" = 1 ]; then echo "--listen 127.0.0.1:$PORT"; else echo "--unix $SOCK"; fi; }
listen_qemu() { if [ "$TCP" = 1 ]; then echo "-b 127.0.0.1 -p $PORT"; else echo "-k $SOCK"; fi; }
listen_nbdkit() { if [ "$TCP" = 1 ]; then echo "-i 127.0.0.1 -p $PORT"; else echo "-U $SOCK"; fi; }
ready() { # the server answers (a socket file, or the port accepts)
  if [ "$TCP" = 1 ]; then (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; else [ -S "$SOCK" ]; fi
}

start() { # start SERVER: serve IMAGE on SOCK or PORT, wait until it answers
  rm -f "$SOCK"
  case "$1" in
    mfio | mfio-poll | mfio-interrupt | mfio-interrupt+spin)
      # mfio: the default (adaptive) completion; the others name theirs; +spin: the sockets
      # polled for 50 us after each reply all the same.
      local dev="file:$IMAGE" mode=adaptive name=${1%+spin} spin=auto
      [ -n "$MFIO_DEVICE" ] && dev=$MFIO_DEVICE
      [ "$name" != mfio ] && mode=${name#mfio-}
      [ "$name" != "$1" ] && spin=50
      "$NVME_CAT" serve "$dev" $(listen_mfio) --workers 1 --completion "$mode" --socket-spin "$spin" \
        >"$OUT/$1.log" 2>&1 &
      PID=$! ;;
    qemu-nbd)
      command -v qemu-nbd >/dev/null || die "qemu-nbd is needed (qemu-utils)"
      qemu-nbd -f raw $(listen_qemu) -t -e 64 --cache="$QCACHE" --aio=io_uring "$IMAGE" \
        >"$OUT/qemu-nbd.log" 2>&1 & PID=$! ;;
    nbdkit)
      command -v nbdkit >/dev/null || die "nbdkit is needed"
      nbdkit -f $(listen_nbdkit) file "$IMAGE" >"$OUT/nbdkit.log" 2>&1 & PID=$! ;;
    *) die "unknown server $1" ;;
  esac
  for _ in $(seq 100); do ready && return 0; sleep 0.05; done
  die "$1 did not start (see $OUT/$1.log)"
}

run() { # run SERVER RW QD ROUND: one fio run, its JSON kept
  fio --name=b --ioengine=nbd --uri="$URI" --rw="$2" --bs=4k \
    --iodepth="$3" --time_based --runtime="$TIME" --ramp_time=0.5 --size=256M \
    --randrepeat=0 --output-format=json --output="$OUT/$1-$2-qd$3-r$4.json" >"$OUT/fio.err" 2>&1 ||
    die "fio against $1 failed: $(cat "$OUT/fio.err")"
}

# Fill what the reads will touch (reads of a hole are cheaper on some servers).
if [ "$FILL" = 1 ]; then
  start "${SV[0]}"
  fio --name=fill --ioengine=nbd --uri="$URI" --rw=write --bs=1M --size=256M \
    --output-format=terse >/dev/null || die "filling the image failed"
  stop
fi
for r in $(seq "$FIRST" $((FIRST + ROUNDS - 1))); do
  # Alternate the order: a server that runs first after the fill is not always the same one.
  order=("${SV[@]}")
  if [ $((r % 2)) = 0 ]; then # reversed (no process substitution: the guest has no /dev/fd)
    order=()
    for ((i = ${#SV[@]} - 1; i >= 0; i--)); do order+=("${SV[i]}"); done
  fi
  for s in "${order[@]}"; do
    start "$s"
    for qd in "${QL[@]}"; do for rw in randread randwrite; do run "$s" "$rw" "$qd" "$r"; done; done
    stop
  done
done

report | tee "$OUT/table.md"
echo "bench-nbd: raw results in $OUT"
