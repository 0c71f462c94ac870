#!/usr/bin/env bash
# The README's first command: installs what weft needs (idempotent), then runs `weft demo`
# (a 3-node cluster in network namespaces, udp backend, pings and iperf3 between pods).
# Extra arguments go to the demo, e.g. `bash scripts/demo.sh --nodes 4 --no-offloads`.
# Needs root: network namespaces. Nothing is left behind, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root (it creates network namespaces); run: sudo bash scripts/demo.sh" >&2
  exit 2
fi
bash scripts/setup.sh
echo
exec node bin/weft.js demo "$@"
