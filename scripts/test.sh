#!/bin/bash
# The whole test suite, as CI runs it (.ci/run calls exactly this):
#   formatting, clippy, the shape rules (scripts/check-shape.py: no file over 600 lines, no
#   circular imports), the no_std build of the framework, every crate's tests (the NBD server's
#   against nbdinfo, nbdsh and qemu-img), the soundness
#   tests (the framework's, dma's, both drivers', and the interrupt and runtime tests) under
#   valgrind, the benchmarks' quick run, and the guest tests (scripts/vm-tests.sh: QEMU's NVMe
#   and virtio-blk through VFIO, IOMMU and no-IOMMU), the engines' crash test across boots
#   (scripts/vm-crash.sh), faults from QEMU's block layer (scripts/vm-faults.sh), hot removal
#   mid-I/O (scripts/vm-removal.sh) and a minute's soak (scripts/soak.sh).
# Installs what it needs (apt packages, the guest kernel) on a fresh Debian 12 machine.
# Every stage runs even if an earlier one failed; the summary says which failed. Exit 1 if any.
#
# Usage: scripts/test.sh [--no-vm]     (--no-vm: skip the guest stage, for quick local runs)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VM=1
for a in "$@"; do
  case "$a" in
    --no-vm) VM=0 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option '$a'" >&2; exit 2 ;;
  esac
done

# ---- host packages the stages below need ----------------------------------------------------
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v jq >/dev/null || missing+=(jq)
# The NBD server's tests run real clients: libnbd's nbdinfo and nbdsh (Debian's python3 with
# its libnbd module), and qemu-img.
command -v nbdinfo >/dev/null || missing+=(libnbd-bin)
# nbdsh too, and the module checked from / (in the repository, its nbd/ directory imports as
# a namespace package).
{ command -v nbdsh >/dev/null && (cd / && /usr/bin/python3 -c 'import nbd') 2>/dev/null; } || missing+=(python3-libnbd)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

passed=() failed=()
stage() { # stage NAME CMD...: run one stage, record the outcome, keep going
  local name=$1; shift
  echo
  echo "=== stage: $name"
  local t0=$SECONDS
  if "$@"; then
    passed+=("$name"); echo "=== stage $name: ok ($((SECONDS - t0)) s)"
  else
    failed+=("$name"); echo "=== stage $name: FAILED ($((SECONDS - t0)) s)"
  fi
}

test_bins() { # test_bins CARGO_TEST_ARGS...: the test executables those arguments build
  cargo test "$@" --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true) | .executable' | grep -v null
}

valgrind_soundness() {
  # Under valgrind: the framework's tests (packets on the stack, drop while in flight, forgotten
  # futures, cross-thread completion, a panic in every user callback, leaked packets and views),
  # dma's (atomic access from threads, an unmap racing a device's access), and the drivers'
  # soundness tests (a sink panicking inside the NVMe and virtio-blk completion loops, a reset
  # of a controller that will not stop). Any invalid access fails the stage.
  # Then the waits (eventfds, the kick waker across threads, parked wakers, the lost wake-up
  # window): both drivers' interrupt tests, the wakeup state machine, the tokio and smol
  # drivers (their CPU bounds are checked natively only: MFIO_VALGRIND), and the WAL's
  # panicking wakers.
  local bins
  bins="$(test_bins -p mfio) $(test_bins -p mfio-dma --lib) $(test_bins -p mfio-nvme --test soundness)"
  bins="$bins $(test_bins -p mfio-virtio --test soundness)"
  bins="$bins $(test_bins -p mfio-nvme --test interrupts) $(test_bins -p mfio-virtio --test interrupts)"
  bins="$bins $(test_bins -p mfio-pci --lib) $(test_bins -p mfio-rt --test tokio --test smol)"
  bins="$bins $(test_bins -p mfio-wal --test wakers)"
  [ "$(echo $bins | wc -w)" -ge 10 ] || { echo "test binaries not found: $bins"; return 1; }
  local b rc=0
  for b in $bins; do
    echo "valgrind: $(basename "$b")"
    # One test at a time: valgrind runs one thread at a time anyway, and a second test's
    # threads would hold the CPU for slices longer than the waits' timing windows (10 ms).
    MFIO_VALGRIND=1 PROPTEST_CASES=32 valgrind -q --error-exitcode=99 --leak-check=no "$b" \
      --test-threads=1 -q || rc=1
  done
  return $rc
}

stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --workspace --all-targets -- -D warnings
stage shape python3 scripts/check-shape.py
stage no_std cargo build -p mfio --no-default-features
stage cargo-test cargo test --workspace
stage valgrind valgrind_soundness
stage bench-smoke cargo bench -p mfio --bench roundtrip -- --quick
if [ "$VM" = 1 ]; then
  stage vm-tests scripts/vm-tests.sh
  # The engines across boots: QEMU killed mid-run, recovery on the same images (about 35 s).
  stage vm-crash scripts/vm-crash.sh --no-build
  # Faults from QEMU's block layer (blkdebug EIO, a namespace slower than the I/O timeout),
  # both drivers, both IOMMU modes (about 25 s).
  stage vm-faults scripts/vm-faults.sh
  # Hot removal mid-I/O through sysfs and through QMP device_del/device_add, both drivers, both
  # IOMMU modes (about 45 s).
  stage vm-removal scripts/vm-removal.sh
  # A minute of verified random I/O on both devices, several queues and threads (about 75 s).
  stage soak scripts/soak.sh --time 60
fi

echo
echo "=== summary: passed: ${passed[*]:-none}; failed: ${failed[*]:-none}"
echo "stages: ${#passed[@]} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
