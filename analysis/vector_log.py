"""A natural logarithm that LLVM can vectorize, for the fit kernels' per-bin loops.

``math.log`` in a Numba loop is a call into libm, one value at a time, and keeps LLVM from
vectorizing the loop around it (Numba has no vector maths library here). :func:`vector_log` is
fdlibm's ``__ieee754_log`` without its branches: the exponent and mantissa are split with
integer operations on the bits, the mantissa is reduced to [sqrt(2) / 2, sqrt(2)), and
``log(1 + f)`` comes from fdlibm's minimax polynomial in ``s = f / (2 + f)`` (error below
1 ulp in fdlibm; here within 2 ulp of ``np.log``, tested).

Domain: positive, finite, normal numbers. Zero, negative, subnormal, infinite or NaN inputs
give meaningless finite values: callers select those lanes away.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SQRT2 = 1.4142135623730951
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_MANTISSA = np.int64(0x000FFFFFFFFFFFFF)
_ONE_BITS = np.int64(0x3FF0000000000000)
_FIFTY_TWO = np.int64(52)


@intrinsic
def _float_bits(typingctx, value):
    """The IEEE-754 bits of a float64 as an int64 (a bitcast, no conversion)."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float(typingctx, bits):
    """The float64 whose IEEE-754 bits are the int64 ``bits``."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@numba.njit(cache=True, inline="always")
def vector_log(x):
    """ln(x) for a positive finite normal float64, without branches (see the module docstring)."""
    bits = _float_bits(x)
    mantissa = _bits_float((bits & _MANTISSA) | _ONE_BITS)          # [1, 2)
    high = np.float64(mantissa > _SQRT2)
    mantissa *= 1.0 - 0.5 * high                                     # [sqrt(2) / 2, sqrt(2))
    k = np.float64((bits >> _FIFTY_TWO) - np.int64(1023)) + high
    f = mantissa - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    r = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7))) + w * (_LG2 + w * (_LG4 + w * _LG6))
    half_f2 = 0.5 * f * f
    return k * _LN2_HI - ((half_f2 - (s * (half_f2 + r) + k * _LN2_LO)) - f)
