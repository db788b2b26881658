#!/bin/bash
# The main demo: mfio on an image file (io_uring) and on striped memory.
# Usage: scripts/demo.sh [IMAGE]   (default: a temporary 64 MiB image)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release -q -p mfio --example demo -- "$@"
