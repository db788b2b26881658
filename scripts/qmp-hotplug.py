#!/usr/bin/env python3
"""Host half of `removal qmp` (vm-tests/src/bin/removal.rs), run by scripts/vm-removal.sh.

For each device, in order: wait for the guest's `OUT/ready-LABEL`, unplug the device with QMP
`device_del` and wait for QEMU's DEVICE_DELETED event (the guest has acknowledged the unplug, so
its driver and vfio-pci let go), then wait for `OUT/gone-LABEL` and plug the same device back
with `device_add`. Every step has a deadline; on any failure this prints why and exits 1, and
the guest, which waits for its device to come back, fails on its own deadline.

Usage: qmp-hotplug.py SOCKET OUTDIR LABEL=ID=DEVICE_ADD_ARGS... (ARGS as for -device)
"""
import json
import os
import socket
import sys
import time

STEP = 60.0  # seconds any one step may take


def log(msg):
    print(f"qmp-hotplug: {msg}", file=sys.stderr, flush=True)


class Qmp:
    def __init__(self, path, deadline):
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot connect to {path}: {e}")
                time.sleep(0.1)
        self.buf = b""
        self.events = []
        greeting = self.recv(time.monotonic() + STEP)
        if "QMP" not in greeting:
            raise RuntimeError(f"not a QMP greeting: {greeting}")
        self.command("qmp_capabilities")

    def recv(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("QMP: no answer before the deadline")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("QMP: QEMU closed the monitor")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + STEP
        while True:
            reply = self.recv(deadline)
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{name}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, name, device_id, deadline):
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and ev.get("data", {}).get("device") == device_id:
                    del self.events[i]
                    return
            self.events.append(self.recv(deadline))


def wait_file(path, deadline):
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the guest never wrote {os.path.basename(path)}")
        time.sleep(0.05)


def device_args(spec):
    """'virtio-blk-pci,id=x,drive=y' -> {'driver': 'virtio-blk-pci', 'id': 'x', 'drive': 'y'}"""
    driver, *props = spec.split(",")
    out = {"driver": driver}
    for p in props:
        key, _, value = p.partition("=")
        out[key] = value
    return out


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    path, outdir = sys.argv[1], sys.argv[2]
    devices = []
    for arg in sys.argv[3:]:
        label, dev_id, spec = arg.split("=", 2)
        devices.append((label, dev_id, spec))
    # The guest boots, binds and writes its pattern before the first ready file.
    qmp = Qmp(path, time.monotonic() + 120)
    for label, dev_id, spec in devices:
        wait_file(os.path.join(outdir, f"ready-{label}"), time.monotonic() + 300)
        t0 = time.monotonic()
        qmp.command("device_del", id=dev_id)
        qmp.wait_event("DEVICE_DELETED", dev_id, time.monotonic() + STEP)
        log(f"{label}: device_del {dev_id} done in {time.monotonic() - t0:.2f}s")
        wait_file(os.path.join(outdir, f"gone-{label}"), time.monotonic() + STEP)
        qmp.command("device_add", **device_args(spec))
        log(f"{label}: device_add {dev_id} done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, ValueError) as e:
        log(f"FAILED: {e}")
        sys.exit(1)
