#!/usr/bin/env bash
# bench/forward-gpu.mjs on the GPU machine, with its ceilings and peer measured in the same run:
# the device-to-device copy bandwidth first (the decode bound), then lowbit's rows, then the
# transformers fp16 peer. Build the CUDA addon here and carry it (LOWBIT_ADDON) with .device, dist/.
#   bash bench/forward-gpu.sh [OUT dir]      (node through .device/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/lowbit-forward}}
mkdir -p "$out"
python3 bench/forward-gpu-peer.py "$out/copy.json" --skip-peer
bash .device/run.sh node bench/forward-gpu.mjs --peer "$out/copy.json" --out "$out/h200-forward.json" | tee "$out/forward.log"
python3 bench/forward-gpu-peer.py "$out/peer.json"
