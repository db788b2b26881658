#!/bin/bash
# Runs in the guest, started by scripts/bench-vm.sh --diag, while QEMU traces doorbells, notifies
# and interrupts: a few short runs of each contender, each framed by markers in QEMU's trace
# (a one-byte read of the host bridge's config space at offset 0xf0 before, 0xf4 after), so the
# host can count device events per I/O for each run.
#
#   bench-diag.sh --time SECONDS
#
# Writes $MFIO_VM_OUT/diag/: RUN.json (or .txt) per run and order.tsv (run label, output file),
# in the order of the markers.
set -uo pipefail # not -e: a failed run is a result to record, not a reason to stop

TIME=3
[ "${1:-}" = --time ] && TIME=$2
NVME=${MFIO_NVME_PCI:?not in the bench guest}
VIRTIO=${MFIO_VIRTIO_PCI:?not in the bench guest}
# bench-vm.sh's snapshot of nvme-cat (one build for every boot), else the workspace's.
NVME_CAT=${MFIO_BENCH_NVME_CAT:-nvme-cat}
OUT=$MFIO_VM_OUT/diag
mkdir -p "$OUT"
: >"$OUT/order.tsv"
HB=/sys/bus/pci/devices/0000:00:00.0/config
mark() { dd if="$HB" bs=1 skip=$(($1)) count=1 status=none >/dev/null; }
log() { echo "bench-diag: $*" >&2; }

# run LABEL FILE CMD...: one framed run under a timeout (qemu-img has been seen hanging).
run() {
  local label=$1 f=$2
  shift 2
  sleep 0.5
  mark 0xf0
  timeout -k 3 $((TIME * 3 + 15)) "$@" >"$f" 2>"$f.err" </dev/null
  local rc=$?
  mark 0xf4
  printf '%s\t%s\t%s\n' "$label" "$f" "$rc" >>"$OUT/order.tsv"
  log "$label: rc $rc"
}
# bind, rebind, blockdev
# shellcheck source=bench-lib.sh
. "$(dirname "$0")/bench-lib.sh"
fio_job() { # fio_job BDEV QD EXTRA...: the fio command line in FIO (run() needs a command)
  local b=$1 qd=$2
  shift 2
  FIO=(fio --name=d --filename="$b" --direct=1 --rw=randread --bs=4k --iodepth="$qd" --numjobs=1
    --time_based --runtime="$TIME" --norandommap --randrepeat=0 --output-format=json "$@")
}

# The guest's clock: a polling driver and fio read it per I/O (latency), and under TCG the TSC
# may be declared unstable, leaving hpet or acpi_pm (a system call and an emulated device read
# per clock read). Cost of one clock read, against a loop of the same shape without it.
{
  echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) (available: $(cat /sys/devices/system/clocksource/clocksource0/available_clocksource))"
  dmesg | grep -iE 'clocksource|tsc' | tail -n 8
  python3 -c '
import time
n = 20000
t0 = time.perf_counter_ns()
for _ in range(n): time.monotonic_ns()
t1 = time.perf_counter_ns()
for _ in range(n): abs(1)
t2 = time.perf_counter_ns()
print("clock_gettime(CLOCK_MONOTONIC) from Python: %.0f ns per call, loop without it %.0f ns" % ((t1 - t0) / n, (t2 - t1) / n))
' 2>&1
} >"$OUT/clock.txt"
cat "$OUT/clock.txt" >&2

for dev in nvme virtio; do
  if [ "$dev" = nvme ]; then
    addr=$NVME drv=nvme
    echo 1 >/sys/module/nvme/parameters/poll_queues
  else
    addr=$VIRTIO drv=virtio-pci
    echo 1 >/sys/module/virtio_blk/parameters/poll_queues
  fi
  # rebind, not bind: a driver probed before poll_queues changed must probe again.
  rebind "$addr" "$drv"
  if b=$(blockdev "$addr"); then
    for qd in 1 32; do
      fio_job "$b" "$qd" --ioengine=io_uring
      run "$dev fio-io_uring qd$qd" "$OUT/$dev.fio-io_uring.qd$qd.json" "${FIO[@]}"
      fio_job "$b" "$qd" --ioengine=io_uring --hipri=1
      run "$dev fio-io_uring-poll qd$qd" "$OUT/$dev.fio-io_uring-poll.qd$qd.json" "${FIO[@]}"
    done
  fi
  # System calls per I/O (strace -c, outside the trace windows): the I/O path of a userspace
  # driver should make none; fio's show what the kernel path costs in crossings.
  if [ -n "${b:-}" ] && [ "$dev" = nvme ]; then
    for e in io_uring io_uring-poll; do
      x=(--ioengine=io_uring)
      [ "$e" = io_uring-poll ] && x+=(--hipri=1)
      strace -f -c -o "$OUT/$dev.strace.fio-$e.qd1.txt" fio --name=s --filename="$b" --direct=1 --rw=randread --bs=4k \
        --iodepth=1 --time_based --runtime=2 --output-format=json "${x[@]}" >"$OUT/$dev.strace.fio-$e.qd1.json" 2>/dev/null
    done
  fi
  bind "$addr" vfio-pci
  strace -f -c -o "$OUT/$dev.strace.mfio.qd1.txt" "$NVME_CAT" bench "$addr" --rw randread --bs 4K --qd 1 --time 2 -o json \
    >"$OUT/$dev.strace.mfio.qd1.json" 2>/dev/null
  for qd in 1 32; do
    run "$dev mfio qd$qd" "$OUT/$dev.mfio.qd$qd.json" "$NVME_CAT" bench "$addr" --rw randread --bs 4K --qd "$qd" --time "$TIME" -o json
  done
  if [ "$dev" = nvme ]; then
    run "nvme qemu-nvme seq4k qd1" "$OUT/nvme.qemu-nvme.qd1.txt" stdbuf -oL qemu-img bench -f raw -t writeback -c $((TIME * 3000)) -d 1 -s 4096 "nvme://$NVME/1"
    run "nvme qemu-nvme seq4k qd32" "$OUT/nvme.qemu-nvme.qd32.txt" stdbuf -oL qemu-img bench -f raw -t writeback -c $((TIME * 6000)) -d 32 -s 4096 "nvme://$NVME/1"
  fi
done
log "all runs done"
