// Compiler attributes of the CPU kernels' channel loops.
//
// DCN_SIMD_CLONES compiles a function for several x86-64 ISA levels (AVX-512, AVX2+FMA, baseline
// SSE2) and picks the best one the CPU supports at load time (GCC/Clang function multi-versioning), so
// the library runs everywhere and uses wide vectors where it can. It applies to plain functions, not
// templates: wrap an always-inline template in one non-template function per dtype.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define DCN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DCN_SIMD_CLONES
#endif
#define DCN_ALWAYS_INLINE inline __attribute__((always_inline))

namespace dcn_plugin {

// The input-gradient scatter of both CPU kernels (the convolution's samples, RoI pooling's bins):
// a[r*len + i] += wa*g[r*cs + i]; b[...] += wb*g[...]; ... The four taps of a sample are four different
// pixels; only the sink row for taps outside the image may be passed more than once.
template <typename T>
DCN_ALWAYS_INLINE void scatter4(T* a, T* b, T* c, T* d, const T* __restrict g, int64_t cs, T wa, T wb, T wc, T wd,
                                int64_t len, int64_t runs) {
  for (int64_t r = 0; r < runs; ++r, g += cs, a += len, b += len, c += len, d += len) {
    for (int64_t i = 0; i < len; ++i) {
      const T gi = g[i];
      a[i] += wa * gi;
      b[i] += wb * gi;
      c[i] += wc * gi;
      d[i] += wd * gi;
    }
  }
}

}  // namespace dcn_plugin
