#!/bin/bash
# Runs in the guest (in the host root, through scripts/vm-run.sh --no-bind), started by
# scripts/bench-vm.sh: one boot's worth of measurements, every contender on the same emulated
# devices, one after the other.
#
#   bench-guest.sh --time SECONDS --contenders LIST --workloads LIST --boot N
#
# Contenders (comma-separated): mfio (polled queues), mfio-adaptive, mfio-interrupt (nvme-cat
# bench --completion), mfio-tokio (nvme-cat bench --tokio: a tokio task per I/O in flight,
# adaptive), fio-io_uring, fio-io_uring-poll, fio-libaio, qemu-nvme.
# Workloads (comma-separated): rand4k-qd1, rand4k-qd32, rand4k-qd128, seq128k-qd8 (every
# contender), seq4k-qd1, seq4k-qd32, seq4k-qd128 (NVMe only: ours against QEMU's driver, which
# reads sequentially only).
# Writes into $MFIO_VM_OUT/boot-N/: one raw output file per run (JSON or text) with its stderr,
# and results.tsv, one line per run:
#   device  workload  contender  status  iops  p50_us  p99_us  cpu_us_per_io
# and idle.tsv, one line per mfio contender and device: the CPU share of a process that holds a
# queue and issues nothing for 5 s (nvme-cat bench --idle):
#   device  contender  cpu_percent
# status is "ok", "hang" (the run outlived its timeout and was killed) or "fail: reason".
# A failing or hanging run never stops the others: each one has its own timeout.
#
# The devices start on the kernel's drivers (vm-run.sh --no-bind); this script moves each one
# between nvme/virtio_blk and vfio-pci as the contenders need.
set -uo pipefail # not -e: a failed run is a result to record, not a reason to stop

TIME=5
CONTENDERS=mfio,fio-io_uring,fio-io_uring-poll,fio-libaio,qemu-nvme
WANT_WL=rand4k-qd1,rand4k-qd32,rand4k-qd128,seq128k-qd8,seq4k-qd1,seq4k-qd32
BOOT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    --workloads) WANT_WL=$2; shift ;;
    --boot) BOOT=$2; shift ;;
    *) echo "bench-guest: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
NVME=${MFIO_NVME_PCI:?not in the bench guest}
VIRTIO=${MFIO_VIRTIO_PCI:?not in the bench guest}
# bench-vm.sh's snapshot of nvme-cat (one build for every boot), else the workspace's.
NVME_CAT=${MFIO_BENCH_NVME_CAT:-nvme-cat}
OUT=$MFIO_VM_OUT/boot-$BOOT
mkdir -p "$OUT"
RES=$OUT/results.tsv
: >"$RES"
# Generous: a run that takes three times its duration plus start-up over 9p is stuck.
RUN_TIMEOUT=$(awk -v t="$TIME" 'BEGIN { printf "%d", t * 3 + 20 }')

log() { echo "bench-guest[boot $BOOT]: $*" >&2; }
want() { [[ ",$CONTENDERS," == *",$1,"* ]]; }

# The workloads: name, pattern, block size, queue depth. seq4k-* exist for QEMU's nvme://
# driver, whose `qemu-img bench` only reads sequentially.
WORKLOADS=""
for w in rand4k-qd1:randread:4096:1 rand4k-qd32:randread:4096:32 rand4k-qd128:randread:4096:128 \
  seq128k-qd8:read:131072:8 seq4k-qd1:read:4096:1 seq4k-qd32:read:4096:32 seq4k-qd128:read:4096:128; do
  [[ ",$WANT_WL," == *",${w%%:*},"* ]] && WORKLOADS="$WORKLOADS $w"
done

record() { # record DEVICE WORKLOAD CONTENDER STATUS IOPS P50_US P99_US [CPU_US_PER_IO]
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "${8:--}" >>"$RES"
  log "$1 $2 $3: $4 iops=$5 p50=$6us p99=$7us cpu=${8:--}us/io"
}

# run_limited SECS FILE CMD...: runs CMD with stdout to FILE, stderr to FILE.err, for at most
# SECS seconds. Returns CMD's exit code; 124 or 137 mean it hung and was killed.
run_limited() {
  local t=$1 f=$2
  shift 2
  echo "+ $*" >"$f.cmd"
  timeout -k 3 "$t" "$@" >"$f" 2>"$f.err" </dev/null
}

# why FILE: one line saying why a run failed (its last stderr line, tab-free, short).
why() { tail -n 1 "$1.err" 2>/dev/null | tr '\t\r' '  ' | cut -c1-80; }

# ---- binding: bind, rebind, blockdev -----------------------------------------------------------
# shellcheck source=bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"

# ---- contenders ------------------------------------------------------------------------------
# The completion mode of an mfio contender: mfio polls, mfio-adaptive, mfio-interrupt;
# mfio-tokio is the load as a tokio program issues it (a task per I/O in flight, mfio-rt's
# driver), on an adaptive queue.
mfio_mode() { case "$1" in mfio) echo poll ;; mfio-tokio) echo adaptive ;; *) echo "${1#mfio-}" ;; esac; }
mfio_extra() { [ "$1" = mfio-tokio ] && echo --tokio; }

# mfio CONTENDER DEVICE ADDR WL RW BS QD: nvme-cat bench on the VFIO-bound function (DMA
# buffers), in the contender's completion mode.
run_mfio() {
  local c=$1 dev=$2 addr=$3 wl=$4 rw=$5 bs=$6 qd=$7 f="$OUT/$2.$4.$1.json" rc
  # shellcheck disable=SC2046 # no flag, or one
  run_limited "$RUN_TIMEOUT" "$f" "$NVME_CAT" bench "$addr" --rw "$rw" --bs "$bs" --qd "$qd" --queues 1 \
    --time "$TIME" --completion "$(mfio_mode "$c")" $(mfio_extra "$c") -o json
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record "$dev" "$wl" "$c" hang - - -; return; fi
  if [ "$rc" != 0 ] || ! jq -e '.errors == 0' "$f" >/dev/null 2>&1; then
    record "$dev" "$wl" "$c" "fail: rc $rc $(why "$f")" - - -
    return
  fi
  # shellcheck disable=SC2046 # four numbers, split on purpose
  record "$dev" "$wl" "$c" ok $(jq -r '[(.iops|floor), (.lat_ns.p50/1000), (.lat_ns.p99/1000), (.cpu_ns_per_io/1000)] | map(tostring) | join(" ")' "$f")
}

# idle CONTENDER DEVICE ADDR: the CPU share of holding one queue 5 s with nothing issued.
run_idle() {
  local c=$1 dev=$2 addr=$3 f="$OUT/$2.idle.$1.json"
  if run_limited 30 "$f" "$NVME_CAT" bench "$addr" --idle 5 --completion "$(mfio_mode "$c")" -o json; then
    printf '%s\t%s\t%s\n' "$dev" "$c" "$(jq -r '.cpu_cores * 100' "$f")" >>"$OUT/idle.tsv"
  else
    printf '%s\t%s\t%s\n' "$dev" "$c" "fail" >>"$OUT/idle.tsv"
  fi
  log "$dev idle $c: $(tail -n 1 "$OUT/idle.tsv" | cut -f3)% of a core"
}

# fio NAME DEVICE BLOCKDEV WL RW BS QD EXTRA...: one fio job, one thread, O_DIRECT, time based.
# Latency: fio's clat (submission to completion), the closest to nvme-cat's per-I/O latency.
run_fio() {
  local name=$1 dev=$2 bdev=$3 wl=$4 rw=$5 bs=$6 qd=$7 f rc
  shift 7
  f="$OUT/$dev.$wl.$name.json"
  run_limited "$RUN_TIMEOUT" "$f" fio --name="$wl" --filename="$bdev" --direct=1 --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --numjobs=1 --time_based --runtime="$TIME" --ramp_time=0 \
    --norandommap --randrepeat=0 --output-format=json "$@"
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record "$dev" "$wl" "$name" hang - - -; return; fi
  if [ "$rc" != 0 ] || ! jq -e '.jobs[0].error == 0' "$f" >/dev/null 2>&1; then
    record "$dev" "$wl" "$name" "fail: rc $rc $(why "$f")" - - -
    return
  fi
  # CPU per I/O: fio's usr_cpu and sys_cpu are percentages of one CPU over the job's runtime.
  # shellcheck disable=SC2046 # four numbers, split on purpose
  record "$dev" "$wl" "$name" ok $(jq -r '.jobs[0] | [(.read.iops|floor), (.read.clat_ns.percentile["50.000000"]/1000), (.read.clat_ns.percentile["99.000000"]/1000), ((.usr_cpu + .sys_cpu) / 100 * (.job_runtime / 1000) / ([.read.total_ios, 1] | max) * 1e6)] | map(tostring) | join(" ")' "$f")
}

# qemu WL BS QD: QEMU's userspace NVMe driver (block/nvme.c) through `qemu-img bench`, which
# reads sequentially only and reports a total time, no latencies. -t none fails here ("Failed
# to configure NVMe write cache"); -t writeback works. It has been seen hanging about one run in
# qemu_once FILE COUNT QD BS: one qemu-img bench run. The hangs seen so far came before its
# first request (no "Sending ..." line: opening the controller never finished), so a run that
# has not started after 10 s counts as hung at once instead of waiting out the whole timeout.
qemu_once() {
  local f=$1 pid _ started=0
  echo "+ qemu-img bench -f raw -t writeback -c $2 -d $3 -s $4 nvme://$NVME/1" >"$f.cmd"
  timeout -k 3 "$(awk -v t="$TIME" 'BEGIN { printf "%d", t * 3 + 15 }')" \
    stdbuf -oL qemu-img bench -f raw -t writeback -c "$2" -d "$3" -s "$4" "nvme://$NVME/1" \
    >"$f" 2>"$f.err" </dev/null &
  pid=$!
  for _ in $(seq 100); do
    if grep -q '^Sending' "$f" 2>/dev/null || ! kill -0 "$pid" 2>/dev/null; then started=1; break; fi
    sleep 0.1
  done
  if [ "$started" = 0 ]; then
    echo "no request sent after 10 s: killed" >>"$f.err"
    # qemu-img is the child of the timeout process started above: end it by its parent's PID,
    # then the wrapper.
    pkill -KILL -P "$pid" 2>/dev/null
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 124
  fi
  wait "$pid"
}

# three: the timeout turns that into a "hang"; one hang is retried once, and the entry then says
# "ok, 1 hang". stdbuf -oL: a hung run's file shows whether it hung before its first request
# ("Sending ..." missing) or during the run.
run_qemu() {
  local wl=$1 bs=$2 qd=$3 f="$OUT/nvme.$1.qemu-nvme.txt" count rc secs iops try hangs=0
  # qemu-img bench takes a request count, not a time: aim at about $TIME seconds from a third
  # of our own rate on the same workload (measured just before; QEMU's driver has been slower),
  # at least 2000 requests. Its "Run completed in" time excludes opening the controller.
  count=$(awk -F'\t' -v w="$wl" -v t="$TIME" '$1 == "nvme" && $2 == w && $3 == "mfio" && $5 != "-" { c = int($5 * t / 3) } END { if (c < 2000) c = 2000; print c }' "$RES")
  for try in 1 2; do
    qemu_once "$f" "$count" "$qd" "$bs"
    rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] || break
    hangs=$((hangs + 1))
    cp "$f" "$f.hang$try"
    cp "$f.err" "$f.hang$try.err"
  done
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then record nvme "$wl" qemu-nvme "hang" - - -; return; fi
  secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' "$f")
  if [ "$rc" != 0 ] || [ -z "$secs" ]; then
    record nvme "$wl" qemu-nvme "fail: rc $rc $(why "$f")" - - -
    return
  fi
  iops=$(awk -v c="$count" -v s="$secs" 'BEGIN { printf "%d", c / s }')
  if [ "$hangs" = 0 ]; then
    record nvme "$wl" qemu-nvme ok "$iops" - -
  else
    record nvme "$wl" qemu-nvme "ok, $hangs hang" "$iops" - -
  fi
}

# ---- one device ------------------------------------------------------------------------------
# bench_device DEVICE ADDR KERNEL_DRIVER POLL_PARAM
bench_device() {
  local dev=$1 addr=$2 kdrv=$3 pollp=$4 bdev w wl rw bs qd poll=0
  # Kernel contenders first. One poll queue for io_uring's polled mode (--hipri): the module
  # parameter is writable at run time and applies at the next probe, hence the rebind.
  if want fio-io_uring || want fio-io_uring-poll || want fio-libaio; then
    [ -w "$pollp" ] && echo 1 >"$pollp"
    if rebind "$addr" "$kdrv" && bdev=$(blockdev "$addr"); then
      [ "$(cat "/sys/block/${bdev#/dev/}/queue/io_poll" 2>/dev/null)" = 1 ] && poll=1
      log "$dev: kernel $kdrv, $bdev, io_poll=$poll"
      for w in $WORKLOADS; do
        IFS=: read -r wl rw bs qd <<<"$w"
        [[ "$wl" == seq4k-* ]] && continue # the seq4k set: ours against QEMU's driver only
        want fio-io_uring && run_fio fio-io_uring "$dev" "$bdev" "$wl" "$rw" "$bs" "$qd" --ioengine=io_uring
        if want fio-io_uring-poll; then
          if [ "$poll" = 1 ]; then
            run_fio fio-io_uring-poll "$dev" "$bdev" "$wl" "$rw" "$bs" "$qd" --ioengine=io_uring --hipri=1
          else
            record "$dev" "$wl" fio-io_uring-poll "fail: no poll queue (io_poll=0)" - - -
          fi
        fi
        want fio-libaio && run_fio fio-libaio "$dev" "$bdev" "$wl" "$rw" "$bs" "$qd" --ioengine=libaio
      done
    else
      for w in $WORKLOADS; do
        for c in fio-io_uring fio-io_uring-poll fio-libaio; do
          want "$c" && record "$dev" "${w%%:*}" "$c" "fail: no kernel block device" - - -
        done
      done
    fi
  fi
  if want mfio || want mfio-adaptive || want mfio-interrupt || want mfio-tokio || { [ "$dev" = nvme ] && want qemu-nvme; }; then
    if bind "$addr" vfio-pci; then
      for c in mfio mfio-adaptive mfio-interrupt; do
        want "$c" && [ "${MFIO_BENCH_IDLE:-1}" = 1 ] && run_idle "$c" "$dev" "$addr"
      done
      for w in $WORKLOADS; do
        IFS=: read -r wl rw bs qd <<<"$w"
        [[ "$wl" == seq4k-* ]] && [ "$dev" != nvme ] && continue
        # The modes side by side, in turn for each workload.
        for c in mfio mfio-adaptive mfio-interrupt mfio-tokio; do
          want "$c" && run_mfio "$c" "$dev" "$addr" "$wl" "$rw" "$bs" "$qd"
        done
        # QEMU's driver reads sequentially only: no random workloads for it.
        [ "$dev" = nvme ] && [ "$rw" = read ] && want qemu-nvme && run_qemu "$wl" "$bs" "$qd"
      done
    else
      record "$dev" all vfio "fail: binding to vfio-pci failed" - - -
    fi
  fi
}

log "contenders $CONTENDERS, ${TIME}s per run, timeout ${RUN_TIMEOUT}s, accel ${MFIO_VM_ACCEL:-?}, mode ${MFIO_IOMMU_MODE:-?}"
{
  echo "accel ${MFIO_VM_ACCEL:-?} mode ${MFIO_IOMMU_MODE:-?}"
  uname -r
  nproc
  fio --version
  qemu-img --version | head -n 1
  "$NVME_CAT" --version 2>/dev/null || true
} >"$OUT/versions.txt" 2>&1
bench_device nvme "$NVME" nvme /sys/module/nvme/parameters/poll_queues
bench_device virtio "$VIRTIO" virtio-pci /sys/module/virtio_blk/parameters/poll_queues
log "done"
