#!/bin/bash
# The main demo: nvme-cat in a QEMU guest, against QEMU's emulated NVMe controller and
# virtio-blk device bound to vfio-pci: list, id-ctrl, id-ns, a write/read round trip, the
# SMART log and short benchmarks. On a fresh Debian 12 machine it installs what it needs
# (QEMU, the guest kernel: scripts/vm-setup.sh) and builds what it runs.
#
# Usage: scripts/demo.sh [--noiommu]   the guest demo (IOMMU mode unless --noiommu)
#        scripts/demo.sh --local [IMAGE] mfio on an image file and striped memory, no VM
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=iommu
case "${1:-}" in
  --local) shift; exec cargo run --release -q -p mfio --example demo -- "$@" ;;
  --noiommu) MODE=noiommu ;;
  "") ;;
  *) echo "demo.sh: unknown option '$1' (--noiommu, --local)" >&2; exit 2 ;;
esac
scripts/vm-setup.sh
echo "demo: building nvme-cat (release)"
cargo build --release -q -p nvme-cat
exec scripts/vm-run.sh --no-setup --release --mode "$MODE" --timeout 900 -- bash "$PWD/vm-tests/guest/demo.sh"
