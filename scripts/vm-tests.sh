#!/bin/bash
# Run the guest test programs against QEMU's NVMe and virtio-blk devices bound to vfio-pci, in
# IOMMU and in no-IOMMU mode. The programs are every binary target of the vm-tests package whose
# name starts with "guest-" (vm-tests/src/bin/guest-*.rs), built on the host and run in the guest.
# One boot per mode runs all of them. Prints a PASS/FAIL table per mode and program, the output
# of every failing program, and exits non-zero if any failed.
#
# Usage: scripts/vm-tests.sh [options]
#   --release           build and run the release profile (default: debug)
#   --modes LIST        comma-separated, default iommu,noiommu
#   --only NAME         run only this program (repeatable); default: all guest-* binaries
#   --timeout SECONDS   per-boot limit (default 600); --test-timeout: per program (default 300)
#   --results DIR       keep every program's log and files here (default: temporary)
#   --no-setup          skip scripts/vm-setup.sh; --no-build: skip cargo build
#   --vm-opt WORD       one more argument for scripts/vm-run.sh (repeatable), for example
#                       --vm-opt --hugepages --vm-opt 64
#   --list              print the programs that would run and exit
#   -v, --verbose       print every program's output, not only the failing ones' (-v -v: and
#                       stream the guest's whole console)
# Needs: root (or sudo) the first time, for apt-get; see scripts/vm-setup.sh. Honours VMKIT,
# CARGO_TARGET_DIR and CARGO. Exit: 0 all passed, 1 a program failed, 2 the harness failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CARGO=${CARGO:-cargo}
PROFILE=debug MODES=iommu,noiommu TIMEOUT=600 TEST_TIMEOUT=300 RESULTS="" SETUP=1 BUILD=1
LIST=0 VERBOSE=0
ONLY=() VM_OPTS=()

die() { echo "vm-tests: ERROR: $*" >&2; exit 2; }
need_arg() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --release) PROFILE=release ;;
    --modes) need_arg "$@"; MODES=$2; shift ;;
    --only) need_arg "$@"; ONLY+=("$2"); shift ;;
    --timeout) need_arg "$@"; TIMEOUT=$2; shift ;;
    --test-timeout) need_arg "$@"; TEST_TIMEOUT=$2; shift ;;
    --results) need_arg "$@"; RESULTS=$2; shift ;;
    --vm-opt) need_arg "$@"; VM_OPTS+=("$2"); shift ;;
    --no-setup) SETUP=0 ;;
    --no-build) BUILD=0 ;;
    --list) LIST=1 ;;
    -v | --verbose) VERBOSE=$((VERBOSE + 1)) ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
IFS=, read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
  case "$m" in iommu | noiommu) ;; *) die "unknown mode '$m' (iommu, noiommu)" ;; esac
done

cd "$ROOT"
T_ALL=$SECONDS
if [ "$SETUP" = 1 ]; then
  "$HERE/vm-setup.sh" || die "scripts/vm-setup.sh failed"
fi

# ---- the programs: from cargo metadata, so a new src/bin/guest-*.rs is picked up by itself --
command -v jq >/dev/null || die "jq not found (scripts/vm-setup.sh installs it)"
META=$("$CARGO" metadata --no-deps --format-version 1) || die "cargo metadata failed"
TARGET_DIR=$(jq -r '.target_directory' <<<"$META")
mapfile -t BINS < <(jq -r '.packages[] | select(.name == "vm-tests") | .targets[]
  | select(.kind | index("bin")) | .name | select(startswith("guest-"))' <<<"$META" | sort)
[ "${#BINS[@]}" -gt 0 ] || die "the vm-tests package has no guest-* binary"
if [ "${#ONLY[@]}" -gt 0 ]; then
  for o in "${ONLY[@]}"; do
    printf '%s\n' "${BINS[@]}" | grep -qx -- "$o" || die "--only $o: no such guest-* binary (have: ${BINS[*]})"
  done
  BINS=("${ONLY[@]}")
fi
if [ "$LIST" = 1 ]; then
  printf '%s\n' "${BINS[@]}"
  exit 0
fi

BINDIR="$TARGET_DIR/$PROFILE"
if [ "$BUILD" = 1 ]; then
  echo "vm-tests: cargo build -p vm-tests -p nvme-cat --bins ($PROFILE)"
  PFLAG=()
  [ "$PROFILE" = release ] && PFLAG=(--release)
  # Never -C target-cpu=native: the guest CPU (TCG) lacks the host's AVX-512.
  # nvme-cat too: guest-nvme-cat runs the tool the way a user does.
  "$CARGO" build -q -p vm-tests -p nvme-cat --bins ${PFLAG[@]+"${PFLAG[@]}"} || die "cargo build -p vm-tests failed"
fi
for b in "${BINS[@]}"; do
  [ -x "$BINDIR/$b" ] || die "cargo metadata lists $b but $BINDIR/$b does not exist (build failed?)"
done

# ---- one boot per mode -----------------------------------------------------------------------
TMP=""
if [ -z "$RESULTS" ]; then
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/mfio-vm-tests.XXXXXX")
  RESULTS=$TMP
fi
trap '[ -z "$TMP" ] || rm -rf "$TMP"' EXIT
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
RUNV=()
[ "$VERBOSE" -ge 2 ] && RUNV=(-v)
declare -A WALL VMRC
for m in "${MODE_LIST[@]}"; do
  OUT="$RESULTS/$m"
  rm -rf "$OUT"
  mkdir -p "$OUT"
  echo "vm-tests: [$m] booting, running ${#BINS[@]} program(s): ${BINS[*]}"
  T0=$SECONDS
  set +e
  # The guest runner prints one line per program; --verbose adds each program's output.
  "$HERE/vm-run.sh" --no-setup --mode "$m" --timeout "$TIMEOUT" --out "$OUT" ${RUNV[@]+"${RUNV[@]}"} \
    ${VM_OPTS[@]+"${VM_OPTS[@]}"} \
    -- /bin/sh "$ROOT/vm-tests/guest/run-suite.sh" "$BINDIR" "$TEST_TIMEOUT" "${BINS[@]}" \
    2>"$OUT/vm-run.stderr"
  VMRC[$m]=$?
  set -e
  WALL[$m]=$((SECONDS - T0))
  cat "$OUT/vm-run.stderr" >&2
  if [ "$VERBOSE" -ge 1 ]; then
    for b in "${BINS[@]}"; do
      [ -f "$OUT/$b.log" ] && sed "s/^/  [$m $b] /" "$OUT/$b.log"
    done
  fi
done

# ---- report ----------------------------------------------------------------------------------
FAILED=0
echo
printf '%-10s %-28s %-8s %s\n' MODE PROGRAM RESULT SECONDS
for m in "${MODE_LIST[@]}"; do
  OUT="$RESULTS/$m"
  ACCEL=$(sed -n 's/.*booting: accel=\([a-z]*\).*/\1/p' "$OUT/vm-run.stderr" | head -n 1 || true)
  for b in "${BINS[@]}"; do
    if [ -f "$OUT/$b.rc" ]; then
      rc=$(cat "$OUT/$b.rc")
      if [ "$rc" = 0 ]; then r=PASS; else r="FAIL($rc)"; FAILED=1; fi
      secs=$(cat "$OUT/$b.secs" 2>/dev/null || echo -)
    else
      r="NO-RESULT"; secs=-; FAILED=1
    fi
    printf '%-10s %-28s %-8s %s\n' "$m" "$b" "$r" "$secs"
  done
  echo "           (boot + run: ${WALL[$m]}s, accel ${ACCEL:-?}, vm-run exit ${VMRC[$m]})"
done
for m in "${MODE_LIST[@]}"; do
  OUT="$RESULTS/$m"
  for b in "${BINS[@]}"; do
    rc=$(cat "$OUT/$b.rc" 2>/dev/null || echo none)
    [ "$rc" != 0 ] || continue
    echo
    if [ "$rc" = none ]; then
      echo "===== [$m] $b: no result: the guest crashed, timed out or never ran it. vm-run said:"
      sed 's/^/  /' "$OUT/vm-run.stderr"
    else
      echo "===== [$m] $b: FAILED with exit code $rc; its output:"
    fi
    if [ -f "$OUT/$b.log" ]; then
      n=$(wc -l <"$OUT/$b.log")
      [ "$n" -le 300 ] || echo "  ... ($((n - 300)) earlier lines not shown; --results DIR keeps them)"
      tail -n 300 "$OUT/$b.log" | sed 's/^/  /'
    fi
  done
done
echo
if [ "$FAILED" = 0 ]; then
  echo "vm-tests: all ${#BINS[@]} program(s) passed in ${#MODE_LIST[@]} mode(s), $((SECONDS - T_ALL))s in all"
else
  echo "vm-tests: FAILED ($((SECONDS - T_ALL))s in all)"
  [ -n "$TMP" ] || echo "vm-tests: logs in $RESULTS"
fi
exit "$FAILED"
