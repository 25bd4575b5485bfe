{
  # CPU-only build of the same addon with node-gyp (npm run build:gyp). The CMake build is the main
  # one (it adds CUDA); test/native/build-files.test.ts checks that both name the same CPU sources.
  "targets": [
    {
      "target_name": "lowbit",
      "sources": [
        "native/core/dtype.cpp",
        "native/core/thread_pool.cpp",
        "native/core/quant_grid.cpp",
        "native/core/rtn.cpp",
        "native/core/pack.cpp",
        "native/core/packed_matrix.cpp",
        "native/core/packed_gemm.cpp",
        "native/core/packed_gemm_scalar.cpp",
        "native/core/packed_gemm_avx2.cpp",
        "native/core/packed_gemm_avx512.cpp",
        "native/core/cpu_gptq/linear_op.cpp",
        "native/core/cpu_gptq/repack.cpp",
        "native/core/cpu_gptq/kernels_scalar.cpp",
        "native/core/cpu_gptq/kernels_avx2.cpp",
        "native/core/cpu_gptq/kernels_avx512.cpp",
        "native/core/cpu_gptq/spqr_panels.cpp",
        "native/core/stream_read.cpp",
        "native/core/model/backend.cpp",
        "native/core/model/ops.cpp",
        "native/core/model/cpu_llama.cpp",
        "native/core/weights/cpu_linear.cpp",
        "native/core/linalg.cpp",
        "native/core/hessian.cpp",
        "native/core/gptq.cpp",
        "native/core/spqr.cpp",
        "native/core/spqr_gemm.cpp",
        "native/core/spqr_gemm_scalar.cpp",
        "native/core/spqr_gemm_avx2.cpp",
        "native/core/spqr_gemm_avx512.cpp",
        "native/binding/addon.cpp",
        "native/binding/info.cpp",
        "native/binding/quant.cpp",
        "native/binding/model.cpp",
        "native/binding/gptq.cpp",
        "native/binding/spqr.cpp",
        "native/binding/linear.cpp",
        "native/binding/cpu_gptq.cpp",
        "cuda/stub.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "LOWBIT_SOURCE_HASH=\"<!(node scripts/source-hash.mjs)\"",
        "LOWBIT_BUILD_SYSTEM=\"node-gyp\""
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fexceptions", "-fvisibility=hidden"]
    }
  ]
}
