#!/usr/bin/env python3
"""Where a QD1 I/O's time goes, from a QEMU trace (scripts/bench-vm.sh --diag).

At queue depth 1 each I/O is one cycle: the guest rings the SQ doorbell, QEMU's main loop
fetches the command, hands the read to the block layer's thread pool, gets it back, queues the
completion (the CQE is posted from a timer or bottom half, which has no trace event), and the
guest notices it and rings the doorbell for the next I/O. This splits each cycle at those
events and prints the median and p90 of every step, per traced run, so the part spent in QEMU's
device emulation and the part spent in the guest (driver, load generator, kernel) are measured
rather than guessed. A step whose event the trace lacks (not enabled) is folded into the next.

Usage: qd1-timeline.py TRACE SEGMENTS ORDER
  TRACE     QEMU's trace log (-msg timestamp=on: PID@SECONDS.MICROS:event ...)
  SEGMENTS  diag-segments.tsv (run index, start, end: host seconds)
  ORDER     diag/order.tsv (run label per index, in order)
Only runs whose label ends in "qd1" and that use the NVMe device are analysed.
"""
import re
import statistics
import sys

# The steps of one cycle, by the event that ends each.
STEPS = [
    ("pci_nvme_io_cmd", "doorbell -> command fetched (main loop)"),
    ("blk_co_preadv", "-> read entered the block layer"),
    ("pci_nvme_rw_cb", "-> read done, back in the main loop"),
    ("pci_nvme_enqueue_req_completion", "-> completion queued"),
    ("next doorbell", "-> next SQ doorbell (CQE post, guest)"),
]
EVENT = re.compile(r"^\d+@(\d+\.\d+):(\w+)(.*)$")


def runs(segments, order):
    labels = [line.split("\t")[0] for line in open(order) if line.strip()]
    out = []
    for line in open(segments):
        f = line.rstrip("\n").split("\t")
        i, t0, t1 = int(f[0]), float(f[1]), float(f[2])
        if i <= len(labels):
            out.append((labels[i - 1], t0, t1))
    return out


def cycles(events, steps):
    """Splits (time, name) events into per-I/O cycles that start at an I/O SQ doorbell."""
    cur = None
    for t, name in events:
        if name == "doorbell":
            if cur is not None and all(s in cur for s, _ in steps[:-1]):
                cur["next doorbell"] = t
                yield cur
            cur = {"start": t}
        elif cur is not None and name not in cur:
            cur[name] = t


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    trace, segments, order = sys.argv[1:]
    want = [(l, t0, t1) for l, t0, t1 in runs(segments, order) if l.endswith("qd1") and l.startswith("nvme")]
    if not want:
        print("(no NVMe QD1 run in the trace)")
        return
    per_run = {l: [] for l, _, _ in want}
    names = {s for s, _ in STEPS[:-1]}
    with open(trace, errors="replace") as f:
        for line in f:
            m = EVENT.match(line)
            if not m:
                continue
            t, name, rest = float(m.group(1)), m.group(2), m.group(3)
            if name == "pci_nvme_mmio_doorbell_sq":
                if "sqid 0 " in rest + " ":
                    continue  # the admin queue
                name = "doorbell"
            elif name not in names:
                continue
            for l, t0, t1 in want:
                if t0 <= t <= t1:
                    per_run[l].append((t, name))
    seen = {name for evs in per_run.values() for _, name in evs}
    steps = [(s, d) for s, d in STEPS if s in seen or s == "next doorbell"]
    print("| run | I/Os | " + " | ".join(d for _, d in steps) + " | cycle |")
    print("|---|---:|" + "---:|" * (len(steps) + 1))
    for l, _, _ in want:
        cs = list(cycles(per_run[l], steps))
        if not cs:
            print(f"| {l} | 0 |" + " |" * (len(steps) + 1))
            continue
        cells = []
        prev = "start"
        for s, _ in steps:
            d = [(c[s] - c[prev]) * 1e6 for c in cs]
            cells.append(f"{statistics.median(d):.1f} ({statistics.quantiles(d, n=10)[-1]:.1f})")
            prev = s
        total = [(c["next doorbell"] - c["start"]) * 1e6 for c in cs]
        cells.append(f"{statistics.median(total):.1f} ({statistics.quantiles(total, n=10)[-1]:.1f})")
        print(f"| {l} | {len(cs)} | " + " | ".join(cells) + " |")
    print()
    print("µs per step: median (p90) over the run's cycles, host clock; tracing itself slows QEMU.")


if __name__ == "__main__":
    main()
