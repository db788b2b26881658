#!/bin/bash
# NBD in the guest, one boot: qemu-nbd serving the kernel's /dev/nvme0n1 (the controller bound
# to the kernel's nvme driver, O_DIRECT, io_uring) against mfio-nbd serving the same namespace
# through VFIO (`nvme-cat serve`), through the same client (fio's nbd engine on a Unix socket),
# rounds alternating which goes first. The function moves between nvme and vfio-pci between
# the two. Prints scripts/bench-nbd.sh's table (medians of the rounds, ratio to qemu-nbd).
#
# Usage: scripts/bench-nbd-vm.sh [--rounds N] [--time SECONDS] [--qds LIST] [--out DIR]
#        [--ours LIST]   our servers to run (default mfio; also mfio-poll, mfio-interrupt)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ROUNDS=3 TIME=3 QDS=1,32 OURS=mfio
OUT=/tmp/mfio-bench-nbd-vm.$(date +%Y%m%d-%H%M%S)
die() { echo "bench-nbd-vm: ERROR: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --qds) QDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --ours) OURS=$2; shift ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
(cd "$ROOT" && cargo build -q --release -p nvme-cat) || die "building nvme-cat failed"
cat >"$OUT/guest.sh" <<EOF
#!/bin/bash
set -euo pipefail
log() { echo "bench-nbd-vm: \$*" >&2; }
. "$ROOT/vm-tests/guest/bench-lib.sh"
A=\$MFIO_NVME_PCI
export MFIO_NBD_SOCK=/run/mfio/bench-nbd.sock
common=(--qds $QDS --time $TIME --rounds 1 --no-fill --out "$OUT/runs")
kernel() {
  bind "\$A" nvme
  local b; b=\$(blockdev "\$A") || { log "no block device on \$A"; exit 1; }
  "$ROOT/scripts/bench-nbd.sh" "\${common[@]}" --first-round \$1 --servers qemu-nbd --image "\$b" \
    --qemu-nbd-cache none >/dev/null
}
ours() {
  bind "\$A" vfio-pci
  NVME_CAT="$ROOT/target/release/nvme-cat" "$ROOT/scripts/bench-nbd.sh" "\${common[@]}" \
    --first-round \$1 --servers $OURS --mfio-device "\$A" --image /dev/null >/dev/null
}
for r in \$(seq $ROUNDS); do
  if [ \$((r % 2)) = 1 ]; then kernel \$r; ours \$r; else ours \$r; kernel \$r; fi
  log "round \$r done"
done
EOF
chmod +x "$OUT/guest.sh"
runs=$((ROUNDS * 2 * 2 * $(tr ',' '\n' <<<"$QDS" | wc -l)))
echo "bench-nbd-vm: one boot, $runs runs of ${TIME}s" >&2
flock /tmp/mfio-qemu.lock "$HERE/vm-run.sh" --no-bind --release --out "$OUT" \
  --timeout $((runs * (TIME + 6) + 180)) -- "$OUT/guest.sh" >"$OUT/guest.log" 2>&1 ||
  die "the guest run failed: see $OUT/guest.log"
"$HERE/bench-nbd.sh" --report --servers "$OURS" --qds "$QDS" --out "$OUT/runs" | tee "$OUT/table.md"
