#!/usr/bin/env bash
# Runs the native tests and the adversarial repros (test/native, test/gptq) against the
# AddressSanitizer build of the addon (npm run build:asan first). Node itself is not instrumented,
# so libasan is preloaded into it; leak detection is off (Node and V8 keep memory until exit).
# Any ASan report aborts the process that hit it, which fails the test that ran there.
set -euo pipefail
cd "$(dirname "$0")/.."
addon="$PWD/build-asan/Release/lowbit.node"
[ -f "$addon" ] || { echo "no $addon: run npm run build:asan first" >&2; exit 1; }
libasan="$(gcc -print-file-name=libasan.so)"
[ -f "$libasan" ] || { echo "libasan.so not found (gcc -print-file-name=libasan.so gave $libasan)" >&2; exit 1; }
export LOWBIT_ADDON="$addon"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:detect_container_overflow=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
LD_PRELOAD="$libasan" exec npx vitest run test/native test/gptq "$@"
