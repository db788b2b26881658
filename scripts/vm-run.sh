#!/bin/bash
# QEMU options are comma-separated key=value lists, not array elements written by mistake:
# shellcheck disable=SC2054
# Boot a QEMU guest whose NVMe and virtio-blk functions are bound to vfio-pci, run one command in
# it (in the host's root, shared read-only over 9p), print the command's output and exit with
# its exit code.
#
# Usage: scripts/vm-run.sh [options] -- CMD [ARGS...]
#        scripts/vm-run.sh --shell [options] [-- CMD [ARGS...]]
# Options:
#   --mode iommu|noiommu  iommu (default): q35 + intel-iommu, VFIO type1; noiommu: no vIOMMU,
#                         vfio.enable_unsafe_noiommu_mode=1 (also: --iommu, --noiommu)
#   --accel auto|tcg|kvm  default auto: KVM only when the CPU shows vmx/svm and a probe boot works
#   --timeout SECONDS     wall-clock limit for the boot and the command (default 600); QEMU is
#                         killed by its PID when it expires (exit code 124)
#   --nvme-size SIZE      NVMe namespace 1 image size (default 128M)
#   --nvme2-size SIZE     NVMe namespace 2 image size (default 64M; 0: one namespace only)
#   --vblk-size SIZE      virtio-blk image size (default 128M)
#   --vblk-packed on|off  whether the virtio-blk device offers packed virtqueues (QEMU's
#                         packed=; default on: the driver uses them when offered and can
#                         still force split rings itself, so both get tested on one device)
#   --nvme-img PATH, --nvme2-img PATH, --vblk-img PATH
#                         use this image (created with the size above if missing) and keep it
#   --blkdebug CONF       put QEMU's blkdebug (error injection by the rules in CONF) under
#                         NVMe namespace 1 and the virtio-blk device (scripts/vm-faults.sh)
#   --nvme2-latency NS    NVMe namespace 2 is QEMU's null-co with every request delayed NS
#                         nanoseconds (reads return zeroes): commands that time out
#   --keep                keep the temporary run directory (images, console log) and print it
#   --out DIR             writable results directory, shared with the guest at the same path
#                         (default: a temporary one); the command finds it in $MFIO_VM_OUT
#   --device SPEC         an extra QEMU -device (repeatable); --qemu-arg ARG: any raw argument
#   --env NAME=VALUE      set in the command's environment (repeatable)
#   --append ARGS         extra guest kernel arguments
#   --no-bind             leave the devices on the kernel's nvme/virtio_blk drivers
#   --release             put target/release before target/debug on the guest PATH
#   --mem SIZE, --smp N   guest memory (default 2G) and CPUs (default 2)
#   --hugepages N         reserve N 2 MiB huge pages in the guest (default 0)
#   --shell               interactive: a shell in the guest after CMD (Ctrl-A X quits QEMU)
#   --no-setup            do not run scripts/vm-setup.sh first
#   -v, --verbose         show the whole console (kernel and /init messages), not only CMD's output
# In the guest the command sees: MFIO_NVME_PCI, MFIO_VIRTIO_PCI (PCI addresses),
# MFIO_NVME_NAMESPACES (1 or 2), MFIO_VIRTIO_PACKED (on|off), MFIO_IOMMU_MODE (iommu|noiommu),
# MFIO_VM_ACCEL (tcg|kvm), MFIO_VM_OUT (results dir), MFIO_VM=1; PATH starts with the
# workspace's target/debug and target/release (CARGO_TARGET_DIR respected). The cwd is the
# host's cwd (read-only).
# Exit codes: CMD's; 124 on timeout; 125 when the guest failed before or without running CMD.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VMKIT=${VMKIT:-$HOME/.cache/mfio-vmkit}

MODE=iommu ACCEL=auto TIMEOUT=600 MEM=2G SMP=2 HUGEPAGES=0
NVME_SIZE=128M NVME2_SIZE=64M VBLK_SIZE=128M VBLK_PACKED=on
NVME_IMG="" NVME2_IMG="" VBLK_IMG="" BLKDEBUG="" NVME2_LATENCY=""
KEEP=0 OUT="" BIND=1 RELEASE=0 SHELL_MODE=0 SETUP=1 VERBOSE=0 APPEND=
EXTRA=() USER_ENV=()

msg() { echo "vm-run: $*" >&2; }
die() { echo "vm-run: ERROR: $*" >&2; exit 125; }
need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mode) need_arg "$@"; MODE=$2; shift ;;
    --iommu) MODE=iommu ;;
    --noiommu | --no-iommu) MODE=noiommu ;;
    --accel) need_arg "$@"; ACCEL=$2; shift ;;
    --timeout) need_arg "$@"; TIMEOUT=$2; shift ;;
    --nvme-size) need_arg "$@"; NVME_SIZE=$2; shift ;;
    --nvme2-size) need_arg "$@"; NVME2_SIZE=$2; shift ;;
    --vblk-size) need_arg "$@"; VBLK_SIZE=$2; shift ;;
    --vblk-packed) need_arg "$@"; VBLK_PACKED=$2; shift ;;
    --nvme-img) need_arg "$@"; NVME_IMG=$2; shift ;;
    --nvme2-img) need_arg "$@"; NVME2_IMG=$2; shift ;;
    --vblk-img) need_arg "$@"; VBLK_IMG=$2; shift ;;
    --blkdebug) need_arg "$@"; BLKDEBUG=$(realpath "$2") || die "--blkdebug: no file $2"; shift ;;
    --nvme2-latency) need_arg "$@"; NVME2_LATENCY=$2; shift ;;
    --keep) KEEP=1 ;;
    --out) need_arg "$@"; OUT=$2; shift ;;
    --device) need_arg "$@"; EXTRA+=(-device "$2"); shift ;;
    --qemu-arg) need_arg "$@"; EXTRA+=("$2"); shift ;;
    --env) need_arg "$@"; [[ "$2" == [A-Za-z_]*=* ]] || die "--env wants NAME=VALUE"; USER_ENV+=("$2"); shift ;;
    --append) need_arg "$@"; APPEND="$APPEND $2"; shift ;;
    --no-bind) BIND=0 ;;
    --release) RELEASE=1 ;;
    --mem) need_arg "$@"; MEM=$2; shift ;;
    --smp) need_arg "$@"; SMP=$2; shift ;;
    --hugepages) need_arg "$@"; HUGEPAGES=$2; shift ;;
    --shell) SHELL_MODE=1 ;;
    --no-setup) SETUP=0 ;;
    -v | --verbose) VERBOSE=1 ;;
    -h | --help) sed -n "4,46p" "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the command goes after --; see --help)" ;;
  esac
  shift
done
[ $# -gt 0 ] || [ "$SHELL_MODE" = 1 ] || die "no command: scripts/vm-run.sh [options] -- CMD ARGS..."
case "$MODE" in iommu | noiommu) ;; *) die "--mode is iommu or noiommu, not '$MODE'" ;; esac
case "$ACCEL" in auto | tcg | kvm) ;; *) die "--accel is auto, tcg or kvm, not '$ACCEL'" ;; esac
case "$VBLK_PACKED" in on | off) ;; *) die "--vblk-packed is on or off, not '$VBLK_PACKED'" ;; esac
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds"
[[ "$HUGEPAGES" =~ ^[0-9]+$ ]] || die "--hugepages wants a number of 2 MiB pages"
[ -z "$NVME2_LATENCY" ] || [[ "$NVME2_LATENCY" =~ ^[0-9]+$ ]] || die "--nvme2-latency wants nanoseconds"
[ -z "$BLKDEBUG" ] || [[ "$BLKDEBUG" != *[:,]* ]] || die "--blkdebug: the path must not contain ':' or ','"

if [ "$SETUP" = 1 ]; then
  "$HERE/vm-setup.sh" --quiet >/dev/null || die "scripts/vm-setup.sh failed"
fi
if [ ! -f "$VMKIT/vmlinux" ] || [ ! -f "$VMKIT/initramfs.cpio.gz" ]; then
  die "no guest kernel/initramfs in $VMKIT: run scripts/vm-setup.sh"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: run scripts/vm-setup.sh"

# ---- run directory, cleaned up on exit; QEMU killed by its PID if still alive ----------------
RUN=$(mktemp -d "${TMPDIR:-/tmp}/mfio-vm.XXXXXX")
QEMU_PIDFILE="$RUN/qemu.pid"
TPID=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local pid
  if [ -n "$TPID" ] && kill -0 "$TPID" 2>/dev/null; then
    pid=$(cat "$QEMU_PIDFILE" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    kill "$TPID" 2>/dev/null
    sleep 1
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  fi
  if [ "$KEEP" = 1 ]; then
    msg "kept $RUN (console.log, images)"
  else
    rm -rf "$RUN"
  fi
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "$OUT" ]; then
  OUT="$RUN/out"
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# QEMU's option parser treats commas specially; the guest mounts the path verbatim.
[[ "$OUT" != *,* ]] || die "--out path must not contain a comma"
rm -f "$OUT/.mfio-exit-code"

# ---- images ----------------------------------------------------------------------------------
# make_image PATH SIZE LABEL: sparse file with a recognisable first sector, unless it exists.
make_image() {
  [ -e "$1" ] && return 0
  truncate -s "$2" "$1" || die "cannot create image $1 ($2)"
  printf 'MFIO-VM %s LBA0' "$3" | dd of="$1" conv=notrunc status=none
}
[ -n "$NVME_IMG" ] || NVME_IMG="$RUN/nvme-ns1.img"
[ -n "$VBLK_IMG" ] || VBLK_IMG="$RUN/vblk.img"
make_image "$NVME_IMG" "$NVME_SIZE" NVME-NS1
make_image "$VBLK_IMG" "$VBLK_SIZE" VBLK
NS=1
if [ "$NVME2_SIZE" != 0 ] || [ -n "$NVME2_IMG" ]; then
  [ -n "$NVME2_IMG" ] || NVME2_IMG="$RUN/nvme-ns2.img"
  make_image "$NVME2_IMG" "$NVME2_SIZE" NVME-NS2
  NS=2
fi
for f in "$NVME_IMG" "$VBLK_IMG" ${NVME2_IMG:+"$NVME2_IMG"}; do
  [[ "$f" != *,* ]] || die "image path must not contain a comma: $f"
done

# ---- accelerator -----------------------------------------------------------------------------
# KVM only where the CPU has hardware virtualization: /dev/kvm can be software-backed (kvm_pvm),
# which cannot boot a stock kernel. Even then a probe boot must succeed; its verdict is cached
# per host boot, QEMU version and kernel.
probe_kvm() {
  local key cache="$VMKIT/kvm-probe"
  key="$(cat /proc/sys/kernel/random/boot_id) $(qemu-system-x86_64 --version | head -n 1) $(cat "$VMKIT/kernel-version" 2>/dev/null)"
  if [ -f "$cache" ] && [ "$(head -n 1 "$cache")" = "$key" ]; then
    [ "$(sed -n 2p "$cache")" = ok ]
    return
  fi
  local verdict=fail out
  # Into a variable, not a pipe to grep -q: that would end QEMU by SIGPIPE and fail the pipe.
  out=$(timeout -k 5 60 qemu-system-x86_64 -machine q35,accel=kvm -cpu host \
    -m 512M -smp 1 -display none -nodefaults -no-reboot -serial stdio -kernel "$VMKIT/vmlinux" \
    -initrd "$VMKIT/initramfs.cpio.gz" -append "console=ttyS0 panic=-1 quiet mfio.probe=1" \
    </dev/null 2>&1 || true)
  [[ "$out" != *@@MFIO-PROBE-OK@@* ]] || verdict=ok
  printf '%s\n%s\n' "$key" "$verdict" >"$cache"
  [ "$verdict" = ok ]
}
if [ "$ACCEL" = kvm ] && ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
  msg "warning: --accel kvm, but the CPU shows no vmx/svm: a software-backed /dev/kvm (kvm_pvm) cannot boot a stock kernel"
fi
if [ "$ACCEL" = auto ]; then
  ACCEL=tcg
  if [ ! -e /dev/kvm ]; then
    msg "no /dev/kvm: using TCG (full emulation, slower)"
  elif ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    msg "/dev/kvm exists but the CPU shows no vmx/svm (software-backed KVM, e.g. kvm_pvm, cannot boot a stock kernel): using TCG"
  elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    msg "no read-write access to /dev/kvm: using TCG"
  elif probe_kvm; then
    ACCEL=kvm
  else
    msg "a KVM probe boot failed: using TCG"
  fi
fi

# ---- QEMU command line -----------------------------------------------------------------------
# Fixed PCI slots, so device addresses are stable: NVMe 00:04.0, virtio-blk 00:05.0,
# 9p shares 00:06.0 and 00:07.0. Extra --device functions get the first free slots.
NVME_PCI=0000:00:04.0
VIRTIO_PCI=0000:00:05.0
if [ "$ACCEL" = kvm ]; then
  # intel-iommu's interrupt remapping needs the split irqchip under KVM.
  A=(-machine q35,accel=kvm,kernel-irqchip=split -cpu host)
else
  # -cpu max, never the host's model: TCG emulates up to AVX2, binaries must not assume more.
  A=(-machine q35,accel=tcg -cpu max)
fi
A+=(-m "$MEM" -smp "$SMP" -nodefaults -no-reboot -display none -pidfile "$QEMU_PIDFILE")
if [ "$SHELL_MODE" = 1 ]; then
  # Ctrl-C goes to the guest; Ctrl-A X quits, Ctrl-A C toggles the QEMU monitor.
  A+=(-chardev stdio,id=con,mux=on,signal=off -serial chardev:con -mon chardev=con)
else
  A+=(-serial stdio)
fi
KARGS="console=ttyS0 panic=-1 mfio.mode=$MODE mfio.bind=$BIND mfio.shell=$SHELL_MODE"
[ "$HUGEPAGES" = 0 ] || KARGS="$KARGS hugepagesz=2M hugepages=$HUGEPAGES"
if [ "$VERBOSE" = 1 ]; then KARGS="$KARGS loglevel=7"; else KARGS="$KARGS quiet loglevel=1"; fi
IOMMU_PLATFORM=""
if [ "$MODE" = iommu ]; then
  # Before any PCI device, so that every device sits behind it.
  A+=(-device intel-iommu,intremap=on)
  KARGS="$KARGS intel_iommu=on"
  # Only with iommu_platform=on does QEMU's virtio device translate its DMA through the vIOMMU.
  IOMMU_PLATFORM=",iommu_platform=on"
fi
A+=(-kernel "$VMKIT/vmlinux" -initrd "$VMKIT/initramfs.cpio.gz" -append "$KARGS$APPEND")
# blkdebug:CONF:IMG puts the error injector between the raw format and the image, where the
# format's read_aio/write_aio events reach its rules.
# QEMU's virtio-blk merges adjacent requests into one host request, which then fails as a whole:
# with faults injected it must not, so that each request's outcome is its own sectors'.
FAULTS=${BLKDEBUG:+blkdebug:$BLKDEBUG:} NOMERGE=${BLKDEBUG:+,request-merging=off}
A+=(-drive "file=$FAULTS$NVME_IMG,if=none,id=nvm1,format=raw"
  -device "nvme,id=nvme0,serial=mfio0001,addr=04.0"
  -device "nvme-ns,drive=nvm1,bus=nvme0,nsid=1")
if [ -n "$NVME2_LATENCY" ]; then
  A+=(-drive "driver=null-co,size=$NVME2_SIZE,latency-ns=$NVME2_LATENCY,read-zeroes=on,if=none,id=nvm2"
    -device "nvme-ns,drive=nvm2,bus=nvme0,nsid=2")
elif [ "$NS" = 2 ]; then
  A+=(-drive "file=$NVME2_IMG,if=none,id=nvm2,format=raw" -device "nvme-ns,drive=nvm2,bus=nvme0,nsid=2")
fi
# packed=on: the device also offers VIRTIO_F_RING_PACKED (QEMU's default is off).
A+=(-drive "file=$FAULTS$VBLK_IMG,if=none,id=vblk,format=raw"
  -device "virtio-blk-pci,drive=vblk,disable-legacy=on,addr=05.0,packed=$VBLK_PACKED$IOMMU_PLATFORM$NOMERGE")
# multidevs=remap: without it /proc, /sys and /dev (all inode 1 on the host) alias over 9p.
A+=(-fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot,addr=06.0
  -fsdev "local,id=mfioout,path=$OUT,security_model=none"
  -device virtio-9p-pci,fsdev=mfioout,mount_tag=mfioout,addr=07.0)

# ---- what the guest runs ---------------------------------------------------------------------
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; } # shell-quote one word
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TARGET=$(realpath -m "$TARGET")
if [ "$RELEASE" = 1 ]; then BINS="$TARGET/release:$TARGET/debug"; else BINS="$TARGET/debug:$TARGET/release"; fi
{
  echo "export PATH=$(q "$BINS:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")"
  echo "export HOME=/var/tmp TMPDIR=/var/tmp LANG=C.UTF-8 TERM=$(q "${TERM:-dumb}") RUST_BACKTRACE=1"
  echo "export MFIO_VM=1 MFIO_IOMMU_MODE=$MODE MFIO_VM_ACCEL=$ACCEL"
  echo "export MFIO_NVME_PCI=$NVME_PCI MFIO_NVME_NAMESPACES=$NS MFIO_VIRTIO_PCI=$VIRTIO_PCI"
  echo "export MFIO_VIRTIO_PACKED=$VBLK_PACKED"
  echo "export MFIO_VM_OUT=$(q "$OUT") MFIO_WORKSPACE=$(q "$ROOT") CARGO_TARGET_DIR=$(q "$TARGET")"
  for e in ${USER_ENV[@]+"${USER_ENV[@]}"}; do echo "export ${e%%=*}=$(q "${e#*=}")"; done
  # The host's cwd (read-only in the guest), for the command and the --shell alike.
  echo "cd $(q "$PWD") 2>/dev/null || cd /"
} >"$RUN/env.sh"
if [ $# -gt 0 ]; then
  {
    printf 'exec'
    for w in "$@"; do printf ' %s' "$(q "$w")"; done
    echo
  } >"$RUN/cmd.sh"
else
  : >"$RUN/cmd.sh"
fi
printf '%s' "$OUT" >"$RUN/outpath"
A+=(-fw_cfg "name=opt/mfio/env,file=$RUN/env.sh" -fw_cfg "name=opt/mfio/cmd,file=$RUN/cmd.sh"
  -fw_cfg "name=opt/mfio/out,file=$RUN/outpath")
A+=(${EXTRA[@]+"${EXTRA[@]}"})

# ---- boot ------------------------------------------------------------------------------------
LOG="$RUN/console.log"
echo "+ qemu-system-x86_64 ${A[*]}" >"$RUN/qemu-cmdline"
msg "booting: accel=$ACCEL mode=$MODE nvme=$NVME_PCI ($NS namespace(s)) virtio-blk=$VIRTIO_PCI (packed=$VBLK_PACKED) timeout=${TIMEOUT}s"
T0=$(date +%s.%N)
set +e
if [ "$SHELL_MODE" = 1 ]; then
  # The terminal is QEMU's: --foreground keeps it in the terminal's process group.
  timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 "${A[@]}"
  QRC=$?
else
  : >"$LOG" # exists before tail looks for it
  timeout -k 5 "$TIMEOUT" qemu-system-x86_64 "${A[@]}" </dev/null >"$LOG" 2>&1 &
  TPID=$!
  # Stream the console: only CMD's output (between the markers) unless --verbose.
  tail -s 0.2 -n +1 -f --pid="$TPID" "$LOG" | awk -v all="$VERBOSE" '
    { sub(/\r$/, "") }
    /^qemu-system-x86_64: / { print > "/dev/stderr"; next }
    /@@MFIO-BEGIN@@/ { on = 1; if (!all) next }
    /@@MFIO-END rc=/ { if (!all) { i = index($0, "@@MFIO-END"); if (i > 1) print substr($0, 1, i - 1); on = 0; fflush(); next } on = 0 }
    on || all { print; fflush() }'
  wait "$TPID"
  QRC=$?
  TPID=""
fi
set -e
T1=$(date +%s.%N)
WALL=$(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }')
READY=$(sed -n 's/.*mfio-init: ready, uptime \([0-9.]*\)s.*/\1/p' "$LOG" 2>/dev/null | head -n 1 || true)

if [ -f "$OUT/.mfio-exit-code" ]; then
  RC=$(cat "$OUT/.mfio-exit-code")
  rm -f "$OUT/.mfio-exit-code"
  msg "exit $RC: accel=$ACCEL mode=$MODE,${READY:+ guest ready at ${READY}s uptime,} wall ${WALL}s"
  if [ "$RC" = 125 ] && [ "$SHELL_MODE" = 0 ]; then
    msg "guest setup failed; console:"
    grep 'mfio-init' "$LOG" | sed 's/\r$//; s/^/  /' >&2
  fi
  exit "$RC"
fi
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  msg "TIMEOUT: the guest ran past ${TIMEOUT}s; QEMU killed (accel=$ACCEL mode=$MODE)"
  RC=124
else
  msg "the guest ended without an exit code (QEMU exit $QRC, accel=$ACCEL mode=$MODE, wall ${WALL}s)"
  RC=125
fi
if [ "$SHELL_MODE" = 0 ] && [ "$VERBOSE" = 0 ]; then
  if grep -q '@@MFIO-BEGIN@@' "$LOG"; then
    msg "it died or hung while running the command: its last console lines are above"
  else
    msg "last console lines:"
    tail -n 40 "$LOG" | sed 's/\r$//; s/^/  /' >&2
  fi
fi
exit "$RC"
