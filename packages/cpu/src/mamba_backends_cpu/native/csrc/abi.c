/* Linked into every library: the sizes of the argument structs this build was compiled with,
   which the Python loader compares with its ctypes mirrors before any kernel runs, and the
   ISA level the build targets. */
#include <string.h>

#include "mb_args.h"

int64_t mb_abi_version(void) { return MB_ABI_VERSION; }

/* sizeof the struct called `name`, or -1 when this build has no such struct */
int64_t mb_abi_sizeof(const char* name) {
#define MB_SIZE(T) if (strcmp(name, #T) == 0) return (int64_t)sizeof(T)
    MB_SIZE(MbScanArgs);
    MB_SIZE(MbScanVarlenArgs);
    MB_SIZE(MbSsdArgs);
    MB_SIZE(MbSsuArgs);
    MB_SIZE(MbConvArgs);
    MB_SIZE(MbGdnArgs);
    MB_SIZE(MbGatingArgs);
#undef MB_SIZE
    return -1;
}

/* The ISA level this build was compiled for, from the compiler's feature macros (the -march
   value), named as mamba_backends_cpu.isa names the CPU's levels. The kernels choose their
   vector width by the same macros (mb_common.h): 16 lanes from __AVX512F__, 8 from __AVX__. */
const char* mb_isa_level(void) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    return "avx512-bf16";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#elif defined(__aarch64__) && defined(__ARM_FEATURE_SVE)
    return "sve";
#elif defined(__aarch64__) && defined(__ARM_NEON)
    return "neon";
#else
    return "portable";
#endif
}
