"""Why a value is missing: one set of status codes for fits, derived quantities and maps.

Kernels write these integers into caller-owned ``int32`` arrays (Numba cannot raise for data
conditions); maps keep one status per pixel and parameter family. ``OK`` is the only code
that goes with a number; every other code goes with NaN.
"""

from enum import IntEnum


class Status(IntEnum):
    OK = 0
    NOT_SIGNIFICANT = 1      # peak not above the noise (I0 / sigma(I0) below threshold)
    NOT_CONVERGED = 2        # fit reached its iteration limit
    TOO_FEW_POINTS = 3       # window (mostly) masked or empty
    CENTRE_AT_EDGE = 4       # fitted centre at the window edge / a bound
    INVALID_INPUT = 5        # NaN or negative counts in the input
    SINGULAR = 6             # normal matrix singular: parameters undetermined
    MISSING_PEAK = 7         # a derived quantity needs a peak that is missing
    NEGATIVE_RADICAND = 8    # Williamson-Hall: measured width below the size broadening
    SATURATED = 9            # overloaded pixels in the peak window
    OUTSIDE_DETECTOR = 10    # window falls in a gap / off the detector for this geometry
    UNDECODABLE = 11         # the frame could not be decoded
    PENDING_AVERAGE = 12     # waits for the average-pattern fit at the end of the series
    TOO_UNCERTAIN = 13       # value computed, but its error is above the reporting limit
    NOT_MEASURED = 255       # map pixel not reached yet


STATUS_REASONS: dict[int, str] = {
    Status.OK: "ok",
    Status.NOT_SIGNIFICANT: "peak not significant above background",
    Status.NOT_CONVERGED: "fit did not converge",
    Status.TOO_FEW_POINTS: "too few unmasked points in the window",
    Status.CENTRE_AT_EDGE: "fitted centre at the window edge",
    Status.INVALID_INPUT: "invalid input (NaN or negative counts)",
    Status.SINGULAR: "fit singular: parameters undetermined",
    Status.MISSING_PEAK: "a peak needed for this quantity is missing",
    Status.NEGATIVE_RADICAND: "width below the size broadening (negative radicand)",
    Status.SATURATED: "saturated pixels in the peak window",
    Status.OUTSIDE_DETECTOR: "window outside the detector or in a gap",
    Status.UNDECODABLE: "frame could not be decoded",
    Status.PENDING_AVERAGE: "waits for the average-pattern Williamson-Hall fit (end of series)",
    Status.TOO_UNCERTAIN: "error above the reporting limit (too few or too weak peaks)",
    Status.NOT_MEASURED: "not measured yet",
}


def reason(code: int) -> str:
    """Human-readable reason for a status code (unknown codes are named as such)."""
    return STATUS_REASONS.get(int(code), f"unknown status {int(code)}")
