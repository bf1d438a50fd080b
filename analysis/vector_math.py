"""A logarithm and an exponential that LLVM can vectorize, for the fit kernels' per-bin loops.

``math.log`` and ``math.exp`` in a Numba loop are calls into libm, one value at a time, and
keep LLVM from vectorizing the loop around them (Numba has no vector maths library here).
Both functions below are fdlibm's (``__ieee754_log``, ``__ieee754_exp``) without their
branches, the exponent handled with integer operations on the bits:

* :func:`vector_log`: the mantissa reduced to [sqrt(2) / 2, sqrt(2)), ``log(1 + f)`` from
  fdlibm's minimax polynomial in ``s = f / (2 + f)``. Domain: positive, finite, normal
  numbers; zero, negative, subnormal, infinite or NaN inputs give meaningless values.
* :func:`vector_exp`: ``x = k ln 2 + r`` with ``|r| <= ln(2) / 2``, fdlibm's rational
  approximation of ``exp(r)``, times ``2^k`` built from its bits. Domain: ``-708 <= x <= 709``
  (results between the smallest normal double and the largest); outside it, meaningless.

Callers select the lanes outside the domain away. Within 1 ulp (log) and 2 ulp (exp) of
NumPy's (tested).
"""

from __future__ import annotations

import math

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
_INV_LN2 = 1.44269504088896338700e+00
_P1 = 1.66666666666666019037e-01
_P2 = -2.77777777770155933842e-03
_P3 = 6.61375632143793436117e-05
_P4 = -1.65339022054652515390e-06
_P5 = 4.13813679705723846039e-08
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
def vector_exp(x):
    """exp(x) for ``-708 <= x <= 709``, without branches (see the module docstring)."""
    k = math.floor(x * _INV_LN2 + 0.5)
    high = x - k * _LN2_HI
    low = k * _LN2_LO
    r = high - low
    t = r * r
    c = r - t * (_P1 + t * (_P2 + t * (_P3 + t * (_P4 + t * _P5))))
    exp_r = 1.0 - ((low - (r * c) / (2.0 - c)) - high)
    return exp_r * _bits_float((np.int64(k) + np.int64(1023)) << _FIFTY_TWO)


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
