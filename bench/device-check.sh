#!/usr/bin/env bash
# The committed prebuilt addon on the GPU machine, in one call: the whole test suite (the CUDA tests
# run there instead of skipping; if the host CPU has AVX-512, the widest CPU kernels are tested too),
# the model and scheduler tests again with LOWBIT_TEST_DEVICE=cuda, then the whole-model GPTQ timing.
# Here first: npm run build:ts; ../shared/device/prepare.sh --modules; cp -r ../shared/data .devdata
# Then run there with carry [".device", ".devdata", "dist"]:   bash bench/device-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lowbit-device}
mkdir -p "$OUT"
[[ -d ../shared/data ]] || { mkdir -p ../shared && cp -r .devdata ../shared/data; }
export LOWBIT_ADDON=$PWD/prebuilds/linux-x64/lowbit.napi.node
status=0
summary=$OUT/summary.md
: > "$summary"

bash .device/run.sh node -e "import('./dist/index.js').then((m) => console.log(JSON.stringify(m.devices())))" 2>&1 | tee "$OUT/devices.log"
grep -m1 -o 'model name.*' /proc/cpuinfo | tee -a "$summary"
grep -m1 -o -w 'avx512f' /proc/cpuinfo | tee -a "$summary"

bash .device/run.sh npx vitest run 2>&1 | tee "$OUT/suite.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
LOWBIT_TEST_DEVICE=cuda bash .device/run.sh npx vitest run test/model test/schedule 2>&1 | tee "$OUT/cuda-model.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
for log in suite cuda-model; do
  { echo "## $log"; sed 's/\x1b\[[0-9;]*m//g' "$OUT/$log.log" | grep -E "Test Files|Tests |FAIL|skipped" | head -20; } >> "$summary"
done

echo "## whole-model GPTQ (bench/gptq-model.mjs)" >> "$summary"
for args in "--device cuda --samples 128" "--device cuda --samples 8" "--device cpu --samples 8"; do
  timeout 300 bash .device/run.sh node bench/gptq-model.mjs $args --seq-len 2048 2>&1 | tee -a "$OUT/gptq-model.log" | grep '^|' >> "$summary"
done
cat "$summary"
exit $status
