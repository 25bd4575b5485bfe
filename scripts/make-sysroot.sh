#!/usr/bin/env bash
# Makes the build root for the prebuilt addon: a Debian 11 (bullseye) file system with its glibc 2.31
# and its GCC 10 (compiler, libstdc++ and libgcc built against that glibc). scripts/prebuild.mjs
# compiles with that GCC and --sysroot pointing here, libstdc++ and libgcc linked statically and
# scripts/glibc-compat.h forced in, so the prebuilt needs nothing newer than glibc 2.28 (Debian 10,
# Ubuntu 18.10, RHEL 8 and newer) whatever the build machine runs. nvcc gets the same compiler as its
# host compiler.
#
#   bash scripts/make-sysroot.sh [DIR]        (default DIR: .sysroot in the repository; needs root,
#                                              debootstrap and a Debian mirror: DEBIAN_MIRROR)
#   LOWBIT_SYSROOT=DIR npm run prebuild       (or nothing, when DIR is .sysroot)
#
# Debian 10 (glibc 2.28) would lower the floor further, but the mirrors serve bullseye as the oldest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/.sysroot}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

command -v debootstrap >/dev/null || { echo "make-sysroot: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
mkdir -p "$dir"
# minbase + the C/C++ toolchain; nothing runs inside it (the compiler is run from the host with --sysroot)
[[ -x "$dir/usr/bin/g++-10" ]] || debootstrap --variant=minbase --include=g++-10,libstdc++-10-dev,libc6-dev,linux-libc-dev bullseye "$dir" "$mirror"
rm -rf "$dir/var/cache/apt/archives"/*.deb
# Absolute links (lib64/ld-linux-x86-64.so.2 -> /lib/...) would point into the build machine's own
# file system when used from outside: make them relative to the build root.
find "$dir/usr" -type l -lname '/*' | while read -r link; do
  target="$(readlink "$link")"
  ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$dir$target")" "$link"
done
echo "make-sysroot: bullseye build root in $dir (glibc $(ls "$dir"/lib/x86_64-linux-gnu/libc-*.so | sed 's/.*libc-\(.*\)\.so/\1/'))"
