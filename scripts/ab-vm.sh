#!/bin/bash
# A/B in one guest boot: nvme-cat built at two git revisions, run alternately (A, B, A, B, ...)
# on the same NVMe and virtio-blk functions, so a code change is measured apart from what the
# host does between boots (boots differ by 15-20 % under TCG; runs within one boot much less).
# Prints each (device, QD, revision)'s IOPS per round and their medians, and B's median over A's.
#
# Usage: scripts/ab-vm.sh [options] REV_A REV_B
#   --qds LIST      queue depths, comma-separated (default 1,32)
#   --rounds N      rounds, each running A then B on every device and QD (default 3)
#   --time SECONDS  per run (default 3)
#   --out DIR       binaries, raw JSON lines and the table (default /tmp/mfio-ab-vm.DATE)
# REV_A and REV_B are anything git accepts (a commit, HEAD, a branch); each is built in a
# temporary worktree with its own target directory under target/ab-vm/ (reused next time).
# Exit code: 0 once the table is printed, 2 on a usage or build error.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
QDS=1,32 ROUNDS=3 TIME=3
OUT=/tmp/mfio-ab-vm.$(date +%Y%m%d-%H%M%S)
die() { echo "ab-vm: ERROR: $*" >&2; exit 2; }
REVS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --qds) QDS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --time) TIME=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) REVS+=("$1") ;;
  esac
  shift
done
[ ${#REVS[@]} = 2 ] || die "two revisions, please (see --help)"
command -v jq >/dev/null || die "jq is needed on the host"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The guest sees the host's root read-only over 9p: binaries under the repository are visible.
BIN=$ROOT/target/ab-vm/bin
mkdir -p "$BIN"

# build LABEL REV: nvme-cat (release) at REV into $BIN/nvme-cat-LABEL.
build() {
  local label=$1 rev=$2 wt
  git -C "$ROOT" rev-parse --verify -q "$rev^{commit}" >/dev/null || die "no such revision: $rev"
  wt=$(mktemp -d /tmp/mfio-ab-wt.XXXXXX)
  git -C "$ROOT" worktree add -q --detach "$wt" "$rev" || die "worktree for $rev"
  echo "ab-vm: building $label = $(git -C "$ROOT" rev-parse --short "$rev")" >&2
  if ! (cd "$wt" && CARGO_TARGET_DIR=$ROOT/target/ab-vm/$label cargo build -q --release -p nvme-cat); then
    git -C "$ROOT" worktree remove --force "$wt"
    die "build of $rev failed"
  fi
  cp "$ROOT/target/ab-vm/$label/release/nvme-cat" "$BIN/nvme-cat-$label"
  git -C "$ROOT" worktree remove --force "$wt"
}
build a "${REVS[0]}"
build b "${REVS[1]}"

# The guest side: alternate the binaries, one JSON line per run.
cat >"$BIN/ab-guest.sh" <<EOF
#!/bin/bash
for r in \$(seq $ROUNDS); do
  for v in a b; do
    for dev in nvme=\$MFIO_NVME_PCI virtio=\$MFIO_VIRTIO_PCI; do
      for qd in ${QDS//,/ }; do
        "$BIN/nvme-cat-\$v" bench "\${dev#*=}" --rw randread --bs 4096 --qd \$qd --queues 1 --time $TIME -o json 2>/dev/null |
          jq -c --arg v \$v --arg dev "\${dev%%=*}" --argjson r \$r --argjson qd \$qd '{r: \$r, v: \$v, dev: \$dev, qd: \$qd, iops: (.iops | floor)}'
      done
    done
  done
done
EOF
chmod +x "$BIN/ab-guest.sh"
runs=$((ROUNDS * 2 * 2 * $(tr ',' '\n' <<<"$QDS" | wc -l)))
echo "ab-vm: one boot, $runs runs of ${TIME}s" >&2
flock /tmp/mfio-qemu.lock "$HERE/vm-run.sh" --timeout $((runs * (TIME + 5) + 120)) -- "$BIN/ab-guest.sh" \
  >"$OUT/guest.log" 2>&1 || die "the guest run failed: see $OUT/guest.log"
sed 's/\x1b\[[0-9;]*m//g' "$OUT/guest.log" | grep '^{' >"$OUT/runs.jsonl" || die "no results: see $OUT/guest.log"

{
  echo "A/B in one boot, $(date -u '+%Y-%m-%d %H:%M UTC'): A = ${REVS[0]} ($(git -C "$ROOT" rev-parse --short "${REVS[0]}")), B = ${REVS[1]} ($(git -C "$ROOT" rev-parse --short "${REVS[1]}")); rounds: $ROUNDS, ${TIME}s per run; 4 KiB random reads, one queue"
  echo
  echo "| device | QD | A IOPS (rounds) | B IOPS (rounds) | A median | B median | B / A |"
  echo "|---|---:|---|---|---:|---:|---:|"
  jq -rs '
    def median: sort | if length == 0 then 0 elif length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    group_by([.dev, .qd])[] | . as $g
    | ([$g[] | select(.v == "a") | .iops]) as $a | ([$g[] | select(.v == "b") | .iops]) as $b
    | "| \($g[0].dev) | \($g[0].qd) | \($a | map(tostring) | join(" / ")) | \($b | map(tostring) | join(" / ")) | \($a | median | floor) | \($b | median | floor) | \(if ($a | median) > 0 then (($b | median) / ($a | median) * 100 | round / 100 | tostring) + "x" else "-" end) |"
  ' "$OUT/runs.jsonl"
} | tee "$OUT/table.md"
echo "ab-vm: raw results in $OUT" >&2
