#!/bin/bash
# Guest benchmark: this project's NVMe and virtio-blk drivers against the kernel's drivers (fio:
# io_uring, io_uring polled, libaio) and QEMU's userspace NVMe driver (qemu-img bench on
# nvme://), on the same emulated devices, in the same boots. Prints one markdown table per
# device and workload: medians across boots, and each peer's ratio to our figure.
#
# Usage: scripts/bench-vm.sh [options]
#   --boots N            guest boots (default 3); every boot measures every contender, and the
#                        tables show medians across boots (guest figures vary 15-20 % per boot)
#   --time SECONDS       duration of each run (default 4). A boot runs 37, each with about
#                        1.5 s of start-up, plus qemu-img's hangs (10 s each): 3 boots took
#                        14.2 min at 4 s and 14.9 min at 5 s; --time 3 or fewer --contenders
#                        for a quicker look
#   --contenders LIST    comma-separated (default all): mfio (polled queues), mfio-adaptive,
#                        mfio-interrupt (nvme-cat bench --completion; each also measures the
#                        CPU of holding a queue 5 s with nothing issued), mfio-tokio (nvme-cat
#                        bench --tokio: a tokio task per I/O in flight, adaptive), fio-io_uring,
#                        fio-io_uring-poll, fio-libaio, qemu-nvme
#   --workloads LIST     comma-separated (default rand4k-qd1,rand4k-qd32,rand4k-qd128,
#                        seq128k-qd8,seq4k-qd1,seq4k-qd32); also seq4k-qd128. seq4k-* run on
#                        NVMe only, for ours and QEMU's driver (qemu-img bench reads
#                        sequentially only)
#   --mode iommu|noiommu the guest's VFIO mode (default iommu; QEMU's nvme:// driver needs it)
#   --out DIR            raw JSON, logs and the tables (default /tmp/mfio-bench-vm.DATE)
#   --boot-timeout SECS  wall-clock limit of one boot (default: from the number of runs)
#   --no-build           do not build nvme-cat (release) first
#   --append ARGS        extra guest kernel arguments (e.g. "clocksource=tsc tsc=reliable": the
#                        guest otherwise falls back to hpet under TCG, see docs/benchmarks.md)
#   --report DIR         no boots: print the tables again from an earlier run's DIR
#   --diag               instead of the tables: one boot with QEMU tracing doorbells, notifies,
#                        interrupts and commands, a few framed runs per contender
#                        (vm-tests/guest/bench-diag.sh), QEMU's threads' CPU sampled; prints
#                        device events per I/O and where QEMU's CPU time went, per run, and
#                        the steps of a QD1 NVMe I/O (scripts/qd1-timeline.py). Tracing
#                        slows QEMU: its IOPS are not comparable with the tables'
# Needs fio, qemu-img (Debian's qemu-utils, with the nvme block driver) and jq on the host: the
# guest runs the host's binaries through its 9p root. A run that fails or hangs shows as "fail:
# reason" or "hang" in its table; it never stops the others, and a boot that dies does not stop
# the next one. Exit code: 0 once the tables are printed, 2 on a usage or setup error.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

BOOTS=3 TIME=4 MODE=iommu BUILD=1 BOOT_TIMEOUT="" DIAG=0 REPORT="" APPEND=""
CONTENDERS=mfio,mfio-adaptive,mfio-interrupt,mfio-tokio,fio-io_uring,fio-io_uring-poll,fio-libaio,qemu-nvme
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
    --diag) DIAG=1 ;;
    --report) REPORT=$2; shift ;;
    --append) APPEND="$APPEND $2"; shift ;;
    -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
[[ "$BOOTS" =~ ^[1-9][0-9]*$ ]] || die "--boots wants a positive number"
[[ "$TIME" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--time wants seconds"
case "$MODE" in iommu | noiommu) ;; *) die "--mode is iommu or noiommu" ;; esac
[ -z "$REPORT" ] || [ -d "$REPORT" ] || die "--report: no directory $REPORT"
for t in fio qemu-img jq; do
  command -v "$t" >/dev/null || msg "warning: $t not found on the host: its contender will fail (apt-get install -y fio qemu-utils jq)"
done

# ---- --diag ----------------------------------------------------------------------------------
# diag: one traced boot. Each guest run is framed by config reads of the host bridge at 0xf0
# and 0xf4 (pci_cfg_read in the trace); events between them belong to that run.
diag() {
  local tr="$OUT/diag-trace.log" cpu="$OUT/diag-cpu.log" sampler rc=0 qpid=""
  local events=(pci_cfg_read pci_nvme_admin_cmd pci_nvme_mmio_start_success pci_nvme_mmio_stopped pci_nvme_mmio_doorbell_sq pci_nvme_mmio_doorbell_cq pci_nvme_irq_msix
    pci_nvme_io_cmd pci_nvme_dbbuf_config pci_nvme_shadow_doorbell_sq pci_nvme_shadow_doorbell_cq
    blk_co_preadv pci_nvme_rw_cb pci_nvme_enqueue_req_completion
    virtio_queue_notify virtio_notify virtio_notify_irqfd virtio_blk_handle_read)
  local qargs=() e
  for e in "${events[@]}"; do qargs+=(--qemu-arg -trace --qemu-arg "enable=$e"); done
  # -msg timestamp=on: the log backend then prefixes each event with PID@SECONDS (host clock).
  # debug-threads=on names QEMU's threads ("CPU 0/TCG", "worker"), for the CPU split.
  qargs+=(--qemu-arg -D --qemu-arg "$tr" --qemu-arg -msg --qemu-arg timestamp=on
    --qemu-arg -name --qemu-arg debug-threads=on)
  # QEMU's threads' CPU ticks every 0.5 s (host clock, as the trace's): which thread is busy
  # (the vCPU spinning, the main loop emulating the device, the block layer's workers).
  (
    for _ in $(seq 120); do
      # QEMU itself, not the timeout wrapper whose command line holds the same path.
      qpid=$(pgrep -f "^qemu-system-x86_64 .*path=$OUT,security_model" | head -n 1 || true)
      [ -n "$qpid" ] && break
      sleep 0.5
    done
    [ -n "$qpid" ] || exit 0
    while [ -d "/proc/$qpid" ]; do
      now=$(date +%s.%N)
      for t in /proc/"$qpid"/task/*; do
        # comm may hold spaces: take the fields after the closing parenthesis.
        awk -v ts="$now" -v tid="${t##*/}" -v comm="$(tr ' ' '_' <"$t/comm")" \
          '{ sub(/.*\) /, ""); print ts, tid, comm, $12 + $13 }' "$t/stat" 2>/dev/null
      done
      sleep 0.5
    done
  ) >"$cpu" &
  sampler=$!
  flock /tmp/mfio-qemu.lock "$HERE/vm-run.sh" --no-bind --release --mode "$MODE" --out "$OUT" \
    ${APPEND:+--append "$APPEND"} --timeout 900 --env "MFIO_BENCH_NVME_CAT=$OUT/bin/nvme-cat" "${qargs[@]}" -- bash "$ROOT/vm-tests/guest/bench-diag.sh" --time "$TIME" \
    >"$OUT/diag.log" 2>&1 || rc=$?
  wait "$sampler" || true
  [ "$rc" = 0 ] || msg "the diag boot ended with exit code $rc (see $OUT/diag.log)"
  # Segments from the trace: counts per run, and each run's host time span.
  awk '
    { ts = 0; if (split($1, a, "@") == 2) { sub(/:.*/, "", a[2]); ts = a[2] + 0 } }
    /pci_cfg_read mch / { if ($0 ~ /@0xf0 /) { seg++; on = 1; t0[seg] = ts } else if ($0 ~ /@0xf4 /) { on = 0; t1[seg] = ts }; next }
    !on { next }
    /pci_nvme_mmio_doorbell_sq/ { if ($0 !~ /sqid 0 /) c[seg, "sqdb"]++; next }
    /pci_nvme_mmio_doorbell_cq/ { if ($0 !~ /cqid 0 /) c[seg, "cqdb"]++; next }
    /pci_nvme_shadow_doorbell/ { c[seg, "shadow"]++; next }
    /pci_nvme_irq_msix/ { c[seg, "irq"]++; next }
    /pci_nvme_io_cmd/ { c[seg, "cmds"]++; next }
    /virtio_blk_handle_read/ { match($0, /vdev 0x[0-9a-f]+/); blk = substr($0, RSTART + 5, RLENGTH - 5); c[seg, "cmds"]++; next }
    /virtio_queue_notify/ { match($0, /vdev 0x[0-9a-f]+/); c[seg, "notify " substr($0, RSTART + 5, RLENGTH - 5)]++; next }
    /virtio_notify(_irqfd)? vdev / { match($0, /vdev 0x[0-9a-f]+/); c[seg, "virq " substr($0, RSTART + 5, RLENGTH - 5)]++; next }
    END {
      for (s = 1; s <= seg; s++)
        printf "%d\t%.3f\t%.3f\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s, t0[s], t1[s], c[s, "cmds"], c[s, "sqdb"], c[s, "cqdb"],
          c[s, "shadow"], c[s, "irq"], c[s, "notify " blk], c[s, "virq " blk]
    }' "$tr" >"$OUT/diag-segments.tsv" || true
  {
    echo "Diagnostic boot (QEMU tracing on: IOPS here are slowed by the tracing), $(date -u '+%Y-%m-%d %H:%M UTC'), mode=$MODE, ${TIME}s per run"
    echo "Events per I/O (I/Os: QEMU's pci_nvme_io_cmd or virtio_blk_handle_read count in the run's window);"
    echo "QEMU host threads' CPU in the window, in cores (1.00 = one host core busy)."
    echo
    echo "| run | IOPS (run's own) | I/Os seen | SQ db / IO | CQ db / IO | shadow db / IO | NVMe MSI-X / IO | virtio notify / IO | virtio irq / IO | vCPU threads | main loop | other threads |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    local i=0 label f frc iops seg
    while IFS=$'\t' read -r label f frc; do
      i=$((i + 1))
      iops=-
      case "$f" in
        *.json) iops=$(jq -r '(.iops // .jobs[0].read.iops) | floor' "$f" 2>/dev/null || echo -) ;;
        *.txt) iops=$(awk '/^Sending/ { n = $2 } /^Run completed in/ { printf "%d", n / $4 }' "$f" 2>/dev/null) ;;
      esac
      [ "$frc" = 0 ] || iops="rc $frc"
      seg=$(awk -F'\t' -v i="$i" '$1 == i' "$OUT/diag-segments.tsv")
      [ -n "$seg" ] || { echo "| $label | ${iops:--} | no trace window | | | | | | | | | |"; continue; }
      IFS=$'\t' read -r _ t0 t1 n sq cq sh irq vn vi <<<"$seg"
      # CPU: ticks (1/100 s) per thread between the samples nearest the window's ends.
      cpus=$(awk -v a="$t0" -v b="$t1" '
        { if ($1 >= a && !(($2) in first)) { first[$2] = $4; ft[$2] = $1 }
          if ($1 <= b) { last[$2] = $4; lt[$2] = $1; name[$2] = $3 } }
        END {
          for (t in first) { if (lt[t] <= ft[t]) continue; u = (last[t] - first[t]) / 100 / (lt[t] - ft[t])
            if (name[t] ~ /^CPU_[0-9]+\/TCG/) v += u; else if (name[t] ~ /^qemu-system/) m += u; else w += u }
          printf "%.2f %.2f %.2f", v, m, w }' "$cpu")
      read -r cv cm cw <<<"$cpus"
      per() { awk -v x="$1" -v n="$n" 'BEGIN { if (n > 0) printf "%.2f", x / n; else print "-" }'; }
      echo "| $label | $iops | $n | $(per "$sq") | $(per "$cq") | $(per "$sh") | $(per "$irq") | $(per "$vn") | $(per "$vi") | $cv | $cm | $cw |"
    done <"$OUT/diag/order.tsv"
    echo
    echo "Where a QD1 I/O's time goes (scripts/qd1-timeline.py: each I/O from its SQ doorbell to the next):"
    echo
    python3 "$HERE/qd1-timeline.py" "$tr" "$OUT/diag-segments.tsv" "$OUT/diag/order.tsv" ||
      echo "(qd1-timeline.py failed)"
    echo
    echo "Guest clock:"
    sed 's/^/    /' "$OUT/diag/clock.txt" 2>/dev/null
  } | tee "$OUT/diag.md"
}

# ---- tables ----------------------------------------------------------------------------------
# median: the middle of the numbers on stdin (the mean of the two middle ones for an even count).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "-" || v == "") print "-"; else printf "%.*f", d, v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
# paired DEV WORKLOAD CONTENDER: the median over boots of our IOPS over the contender's in the
# same boot (boots where both completed), as "N.NNx"; "-" if there is no such boot.
paired() {
  local f
  for f in "$OUT"/boot-*/results.tsv; do
    awk -F'\t' -v d="$1" -v w="$2" -v c="$3" '$1 == d && $2 == w && $4 ~ /^ok/ {
        if ($3 == "mfio") m = $5; else if ($3 == c) p = $5 }
      END { if (m != "" && p != "" && p > 0) print m / p }' "$f"
  done | median | awk '{ if ($1 == "-") print "-"; else printf "%.2fx", $1 }'
}
# report: the tables from $OUT/boot-*/results.tsv, into $OUT/tables.md and stdout.
report() {
  local nb dev wl rows ours c mine ok n_ok n_hang n_fail runs why iops p50 p99 cpu pr mr pb v
  cat "$OUT"/boot-*/results.tsv 2>/dev/null >"$OUT/all.tsv" || true
  nb=$(find "$OUT" -maxdepth 2 -name results.tsv | wc -l)
  [ -n "$ACCEL" ] || ACCEL=$(sed -n 's/^accel \([a-z]*\).*/\1/p' "$OUT"/boot-*/versions.txt 2>/dev/null | head -n 1)
  {
    echo "Guest benchmark, $(date -u -r "$(ls -t "$OUT"/boot-*/results.tsv | sed -n 1p)" '+%Y-%m-%d %H:%M UTC'): accel=${ACCEL:-unknown}, mode=$MODE${APPEND:+, kernel args:$APPEND}, $nb boot(s), ${TIME}s per run${TOTAL:+, total ${TOTAL}s}"
    echo "Host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1), $(uname -r); guest: kernel $(sed -n 2p "$OUT"/boot-1/versions.txt 2>/dev/null), $(sed -n 3p "$OUT"/boot-1/versions.txt 2>/dev/null) vCPUs"
    echo "Figures: medians across boots of the runs that completed; p50/p99 in µs (fio: clat; qemu-img reports none); CPU µs/IO: the process's user + system time per I/O (getrusage; fio: usr_cpu + sys_cpu)."
    echo "peer/mfio: the contender's IOPS over ours; mfio/peer: ours over the contender's (the targets' form)."
    echo "per boot: the median over boots of mfio/peer within each boot (both measured under the same host conditions)."
    for dev in nvme virtio; do
      for wl in ${WORKLOADS//,/ }; do
        rows=$(awk -F'\t' -v d="$dev" -v w="$wl" '$1 == d && $2 == w' "$OUT/all.tsv")
        [ -n "$rows" ] || continue
        echo
        echo "### $dev $wl"
        echo
        echo "| contender | IOPS | p50 µs | p99 µs | CPU µs/IO | peer/mfio | mfio/peer | per boot | runs |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
        ours=$(awk -F'\t' '$3 == "mfio" && $4 ~ /^ok/ { print $5 }' <<<"$rows" | median)
        for c in ${CONTENDERS//,/ }; do
          mine=$(awk -F'\t' -v c="$c" '$3 == c' <<<"$rows")
          [ -n "$mine" ] || continue
          ok=$(awk -F'\t' '$4 ~ /^ok/' <<<"$mine")
          n_ok=$(grep -c . <<<"$ok" || true)
          n_hang=$(awk -F'\t' '$4 == "hang" { n += ($3 == "qemu-nvme") ? 2 : 1 } $4 ~ /^ok, [0-9]+ hang/ { split($4, x, " "); n += x[2] } END { print n + 0 }' <<<"$mine")
          n_fail=$(awk -F'\t' '$4 ~ /^fail/' <<<"$mine" | grep -c . || true)
          runs="$n_ok ok"
          [ "$n_hang" = 0 ] || runs="$runs, $n_hang hung"
          [ "$n_fail" = 0 ] || runs="$runs, $n_fail fail"
          if [ -z "$ok" ]; then
            # Nothing completed: say why (the first failure's reason, or that it hung).
            why=$(awk -F'\t' '{ print $4; exit }' <<<"$mine")
            echo "| $c | $why | - | - | - | - | - | - | $runs |"
            continue
          fi
          iops=$(cut -f5 <<<"$ok" | median)
          p50=$(cut -f6 <<<"$ok" | grep -v '^-$' | median || true)
          p99=$(cut -f7 <<<"$ok" | grep -v '^-$' | median || true)
          cpu=$(cut -f8 <<<"$ok" | grep -v '^-$' | grep . | median || true)
          if [ "$c" = mfio ]; then
            pr="1.00x" mr="1.00x" pb="1.00x"
          else
            pr=$(ratio "$iops" "$ours") mr=$(ratio "$ours" "$iops")
            pb=$(paired "$dev" "$wl" "$c")
          fi
          echo "| $c | $(fmt "$iops" 0) | $(fmt "$p50" 1) | $(fmt "$p99" 1) | $(fmt "${cpu:--}" 1) | $pr | $mr | $pb | $runs |"
        done
      done
    done
    if cat "$OUT"/boot-*/idle.tsv >"$OUT/idle-all.tsv" 2>/dev/null && [ -s "$OUT/idle-all.tsv" ]; then
      echo
      echo "### Idle: one queue held 5 s, nothing issued (nvme-cat bench --idle 5), % of a core"
      echo
      echo "| device | contender | CPU % (median) | boots |"
      echo "|---|---|---:|---:|"
      for dev in nvme virtio; do
        for c in mfio mfio-adaptive mfio-interrupt; do
          v=$(awk -F'\t' -v d="$dev" -v c="$c" '$1 == d && $2 == c && $3 != "fail" { print $3 }' "$OUT/idle-all.tsv")
          [ -n "$v" ] || continue
          echo "| $dev | $c | $(fmt "$(median <<<"$v")" 2) | $(grep -c . <<<"$v") |"
        done
      done
    fi
    echo
    echo "runs: completed runs (one per boot), and attempts that hung (a hung qemu-img run is retried once; \"hang\" alone: both attempts hung)."
  } | tee "$OUT/tables.md"
}
ACCEL="" TOTAL=""
if [ -n "$REPORT" ]; then
  OUT=$(cd "$REPORT" && pwd)
  # The settings of that run (written below when it started).
  # shellcheck source=/dev/null
  [ -f "$OUT/params.sh" ] && . "$OUT/params.sh"
  report
  exit 0
fi

cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  msg "building nvme-cat (release)"
  cargo build --release -q -p nvme-cat || die "building nvme-cat failed"
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
printf 'TIME=%q MODE=%q CONTENDERS=%q WORKLOADS=%q APPEND=%q\n' "$TIME" "$MODE" "$CONTENDERS" "$WORKLOADS" "$APPEND" >"$OUT/params.sh"
# Every boot runs this copy of nvme-cat: others rebuild target/release in the same checkout, and
# a run's boots must measure one build. The source state goes with it.
mkdir -p "$OUT/bin"
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/nvme-cat" "$OUT/bin/nvme-cat" || die "no target/release/nvme-cat (drop --no-build)"
{
  git -C "$ROOT" rev-parse HEAD
  git -C "$ROOT" status --short --untracked-files=no
} >"$OUT/source.txt" 2>&1 || true
[ "$DIAG" = 0 ] || { diag; exit 0; }


# A boot's limit: every run's duration plus its start-up (fio and nvme-cat start over 9p, the
# controller comes up) plus the qemu-img hang allowance, and the boot itself.
if [ -z "$BOOT_TIMEOUT" ]; then
  runs=$(($(tr ',' '\n' <<<"$CONTENDERS" | wc -l) * $(tr ',' '\n' <<<"$WORKLOADS" | wc -l) * 2))
  BOOT_TIMEOUT=$(awk -v r="$runs" -v t="$TIME" 'BEGIN { printf "%d", r * (t + 6) + 120 }')
fi

T0=$(date +%s)
for b in $(seq "$BOOTS"); do
  msg "boot $b of $BOOTS (limit ${BOOT_TIMEOUT}s)"
  # One QEMU at a time on this machine: other engineers' guests wait on the same lock.
  # --no-bind: the devices start on the kernel's drivers; bench-guest.sh rebinds them.
  rc=0
  flock /tmp/mfio-qemu.lock "$HERE/vm-run.sh" --no-bind --release --mode "$MODE" --out "$OUT" \
    ${APPEND:+--append "$APPEND"} --timeout "$BOOT_TIMEOUT" --env "MFIO_BENCH_NVME_CAT=$OUT/bin/nvme-cat" \
    -- bash "$ROOT/vm-tests/guest/bench-guest.sh" --time "$TIME" \
    --contenders "$CONTENDERS" --workloads "$WORKLOADS" --boot "$b" \
    >"$OUT/boot-$b.log" 2>&1 || rc=$?
  [ "$rc" = 0 ] || msg "boot $b ended with exit code $rc (see $OUT/boot-$b.log); its finished runs still count"
  a=$(sed -n 's/.*accel=\([a-z]*\).*/\1/p' "$OUT/boot-$b.log" | tail -n 1)
  [ -n "$a" ] && ACCEL=$a
done
T1=$(date +%s)

TOTAL=$((T1 - T0))
report
msg "raw results in $OUT (boot-N/ per boot: JSON, logs; all.tsv; tables.md)"
