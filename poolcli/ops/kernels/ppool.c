/* Fused CPU kernel for P-pooling (see ppool_impl.h). Plain C with no Python or torch headers: it is
 * compiled on first use by poolcli/ops/native.py and called through ctypes on raw data pointers, one
 * range of image planes per thread. Compiled with -ffast-math so that exp/log vectorise through
 * glibc's libmvec (the object is linked without it, so the process's floating-point mode is untouched).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <float.h>

#define MODE_NONE 0
#define MODE_SHIFT 1
#define MODE_CLAMP 2

int ppool_abi_version(void) { return 2; }

#define T float
#define SFX f32
#define TINY FLT_MIN
#define ZLOG (-1e20f)
#define LOWEST (-FLT_MAX)
#define EXP expf
#define LOG logf
#include "ppool_impl.h"
#undef T
#undef SFX
#undef TINY
#undef ZLOG
#undef LOWEST
#undef EXP
#undef LOG

#define T double
#define SFX f64
#define TINY DBL_MIN
#define ZLOG (-1e200)
#define LOWEST (-DBL_MAX)
#define EXP exp
#define LOG log
#include "ppool_impl.h"
