// Compiler attributes of the CPU kernels' channel loops.
//
// DCN_SIMD_CLONES compiles a function for several x86-64 ISA levels (AVX-512, AVX2+FMA, baseline
// SSE2) and picks the best one the CPU supports at load time (GCC/Clang function multi-versioning), so
// the library runs everywhere and uses wide vectors where it can. It applies to plain functions, not
// templates: wrap an always-inline template in one non-template function per dtype.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define DCN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DCN_SIMD_CLONES
#endif
#define DCN_ALWAYS_INLINE inline __attribute__((always_inline))
