/*
 * Forced into every C++ and CUDA-host translation unit of the prebuilt addon (scripts/prebuild.mjs
 * passes -include through its compiler wrapper). Built against glibc 2.31 (scripts/make-sysroot.sh),
 * the binary would need 2.29 only for pow, whose default version changed then (a wrapper without
 * the old SVID error handling; the same results). Binding pow to its first version keeps the whole
 * addon at glibc 2.27 or older, so it loads on Debian 10, Ubuntu 18.04 and RHEL 8 too.
 * Not defined for device code (__CUDA_ARCH__) nor outside x86-64 Linux.
 */
#if defined(__x86_64__) && defined(__linux__) && !defined(__CUDA_ARCH__)
__asm__(".symver pow,pow@GLIBC_2.2.5");
#endif
