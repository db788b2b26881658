#!/bin/sh
# Runs in the guest (in the host root, through scripts/vm-run.sh), started by scripts/vm-tests.sh:
#   run-suite.sh BINDIR PER_TEST_TIMEOUT NAME...
# Runs every BINDIR/NAME in turn, even after a failure, each under its own timeout. For each one
# it leaves in $MFIO_VM_OUT: NAME.log (stdout+stderr), NAME.rc (exit code), NAME.secs (run
# time); NAME.files/ is the program's own results directory ($MFIO_VM_OUT while it runs).
# Exits 1 if any program failed.
set -u
BINDIR=$1
PER=$2
shift 2
OUT=$MFIO_VM_OUT
failed=0
for name in "$@"; do
  mkdir -p "$OUT/$name.files"
  t0=$(date +%s.%N)
  MFIO_VM_OUT="$OUT/$name.files" timeout -k 5 "$PER" "$BINDIR/$name" >"$OUT/$name.log" 2>&1 </dev/null
  rc=$?
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  [ "$rc" = 124 ] && echo "$name: TIMEOUT after ${PER}s" >>"$OUT/$name.log"
  echo "$secs" >"$OUT/$name.secs"
  echo "$rc" >"$OUT/$name.rc"
  if [ "$rc" = 0 ]; then v=PASS; else v="FAIL (exit $rc)"; failed=1; fi
  echo "vm-tests: [$MFIO_IOMMU_MODE] $name: $v, ${secs}s"
done
exit "$failed"
