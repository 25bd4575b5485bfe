#!/usr/bin/env bash
# Everything CUDA, on the GPU machine, in one go: the CUDA tests, then the timings; full logs under
# $OUT, the short tables printed last. Build here first (the GPU machine has no Node.js):
#   npx cmake-js compile --out build-cuda --CDCMAKE_CUDA_ARCHITECTURES=90
#   bench/device.sh --build-only            (the standalone benchmark programs, into build-cuda/bench)
#   ../shared/device/prepare.sh --modules
# then run there with carry [".device", "build-cuda"]:   bash bench/device.sh [probe] [tests] [gemm] [spqr] [gptq] [model]
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/build-cuda/bench
nvcc_flags=(-O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr)

if [[ ${1:-} == --build-only ]]; then
  mkdir -p "$bin/obj"
  # The CPU side (packing, the CPU GPTQ and linear algebra the checks compare with and fall back to),
  # compiled once by the host compiler: the SIMD kernels carry their own target attributes.
  cpu_objs=()
  for f in native/core/*.cpp native/core/cpu_gptq/*.cpp; do
    o=$bin/obj/$(echo "${f#native/core/}" | tr / _).o
    [[ $o -nt $f ]] || g++ -O2 -std=c++17 -c "$f" -o "$o" || exit 1
    cpu_objs+=("$o")
  done
  # The wgmma kernels (sm_90a alone, as CMakeLists.txt builds them) as an object of their own.
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
    -c cuda/gptq_kernels/gemm_wgmma.cu -o "$bin/obj/gemm_wgmma.o" || exit 1
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr \
    -c cuda/spqr_kernels/gemm_wgmma.cu -o "$bin/obj/spqr_gemm_wgmma.o" || exit 1
  gptq_kernels=(cuda/gptq_kernels/gemm.cu cuda/gptq_kernels/dequant.cu cuda/gptq_kernels/repack.cu "$bin/obj/gemm_wgmma.o")
  # The dequantize + cuBLAS path links linalg.cu (cuBLAS through dlopen).
  nvcc "${nvcc_flags[@]}" bench/cuda-gemm.cu "${gptq_kernels[@]}" cuda/linalg.cu cuda/device.cu "${cpu_objs[@]}" \
    -o "$bin/cuda-gemm" -ldl
  # The GPTQ check links the CPU implementation (native/core, without the model) to compare against.
  nvcc "${nvcc_flags[@]}" bench/cuda-gptq.cu cuda/gptq.cu cuda/linalg.cu cuda/device.cu "${cpu_objs[@]}" \
    -o "$bin/cuda-gptq" -ldl
  # The SpQR tensor-core product against float64, and timed beside gptq-tc and cuBLAS fp16.
  nvcc "${nvcc_flags[@]}" bench/cuda-spqr.cu cuda/spqr_kernels/gemm.cu cuda/spqr_kernels/repack.cu "$bin/obj/spqr_gemm_wgmma.o" \
    "${gptq_kernels[@]}" cuda/linalg.cu cuda/device.cu "${cpu_objs[@]}" -o "$bin/cuda-spqr" -ldl
  exit
fi

OUT=${OUT:-/tmp/lowbit-device}
mkdir -p "$OUT"
export LOWBIT_ADDON=$root/build-cuda/Release/lowbit.node
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(probe tests gemm gptq model)
summary=$OUT/summary.md
: > "$summary"
status=0

for step in "${steps[@]}"; do
  echo "=== $step" >&2
  case $step in
    probe)
      {
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
        ls /usr/local/cuda*/lib64 2>/dev/null | grep -E 'cublas|cusolver' || echo "no cublas/cusolver in /usr/local/cuda*/lib64"
        python3 -c 'import nvidia.cublas, nvidia.cusolver, os; print(os.path.dirname(nvidia.cublas.__file__), os.listdir(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))); print(os.listdir(os.path.join(os.path.dirname(nvidia.cusolver.__file__), "lib")))' 2>&1
        ldconfig -p | grep -E 'cublas|cusolver' || echo "ldconfig: none"
      } 2>&1 | tee "$OUT/probe.log" >&2
      ;;
    tests)
      bash .device/run.sh npx vitest run test/cuda 2>&1 | tee "$OUT/tests.log" >&2
      rc=${PIPESTATUS[0]}
      [[ $rc -ne 0 ]] && status=$rc
      { echo "## CUDA tests (rc $rc)"; grep -E "Tests |Test Files |✓|✗|×|FAIL" "$OUT/tests.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -40; } >> "$summary"
      ;;
    gemm)
      # The GPTQ kernels: correctness against float64, then the timing sweep and the peers (cuBLAS,
      # tinygemm) in the same run; bench/gemm-report.py (here) turns mine.json + peers.json into
      # bench/results/h200-gemm.json, the plot and the tables of RESULTS.md.
      "$bin/cuda-gemm" check 2>&1 | tee "$OUT/gemm-check.log" >&2
      [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
      "$bin/cuda-gemm" sweep "$OUT/mine.json" 2>&1 | tee "$OUT/gemm.log" >&2
      (cd "$OUT" && PYTHONUNBUFFERED=1 python3 "$root/bench/gemm-peers.py" "$OUT/peers.json") 2>&1 | tee "$OUT/peers.log" >&2
      { echo "## GPTQ GEMV/GEMM"; tail -1 "$OUT/gemm-check.log"; grep -E "^\||device" "$OUT/gemm.log"; } >> "$summary"
      ;;
    spqr)
      # The SpQR kernels: correctness against float64, then SpQR vs gptq-tc vs cuBLAS fp16 (rows into
      # spqr.json; bench/results/h200-spqr.json is that file).
      "$bin/cuda-spqr" check 2>&1 | tee "$OUT/spqr-check.log" >&2
      [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
      "$bin/cuda-spqr" bench "$OUT/spqr.json" 2>&1 | tee "$OUT/spqr.log" >&2
      { echo "## SpQR"; tail -1 "$OUT/spqr-check.log"; grep -E "^\||device" "$OUT/spqr.log"; } >> "$summary"
      ;;
    gptq)
      if [[ -x $bin/cuda-gptq ]]; then
        "$bin/cuda-gptq" 2>&1 | tee "$OUT/gptq.log" >&2
        [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
        # The fallback without cuBLAS/cuSOLVER (built-in GEMM, CPU Cholesky): correctness only.
        LOWBIT_CUDA_NO_VENDOR_LIBS=1 "$bin/cuda-gptq" --check 2>&1 | tee "$OUT/gptq-fallback.log" >&2
        [[ ${PIPESTATUS[0]} -ne 0 ]] && status=1
        PYTHONUNBUFFERED=1 python3 bench/gptq-torch-baseline.py 2>&1 | tee "$OUT/gptq-torch.log" >&2
        { echo "## GPTQ"; grep -hE "^\||device" "$OUT/gptq.log" "$OUT/gptq-fallback.log" "$OUT/gptq-torch.log"; } >> "$summary"
      fi
      ;;
    model)
      # The forward-pass tests (stories260K perplexities of REFERENCE.md included) on the CUDA backend.
      # They read ../shared/data, which does not travel: carry a copy as .devdata (cp -r ../shared/data .devdata).
      if [[ ! -d ../shared/data && -d .devdata ]]; then mkdir -p ../shared && cp -r .devdata ../shared/data; fi
      LOWBIT_TEST_DEVICE=cuda bash .device/run.sh npx vitest run test/model 2>&1 | tee "$OUT/model.log" >&2
      rc=${PIPESTATUS[0]}
      [[ $rc -ne 0 ]] && status=$rc
      { echo "## forward-pass tests on CUDA (rc $rc)"; grep -aE "Tests |Test Files |✓|✗|×|FAIL|ppl" "$OUT/model.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -40; } >> "$summary"
      ;;
  esac
done
cat "$summary"
exit $status
