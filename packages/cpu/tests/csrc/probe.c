/* Test probe: the shared helpers of mb_common.h as plain exported functions, compiled
   with the library's own flags by test_native.py's `probe` fixture. */
#include "mb_common.h"
float t_exp(float x) { return mb_exp(x); }
float t_softplus(float x) { return mb_softplus(x); }
float t_softplus_beta(float x, float b, float th) { return mb_softplus_beta(x, b, th); }
uint16_t t_bf16(float x) { return mb_f32_to_bf16(x); }
void t_vstore_bf16(const float* x, uint16_t* out) {
    mb_vf v;
    memcpy(&v, x, sizeof v);
    mb_vstore_bf16(out, v);
}
int t_vl(void) { return MB_VL; }
