/* Linked into every library: the sizes of the argument structs this build was compiled with,
   which the Python loader compares with its ctypes mirrors before any kernel runs. */
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
