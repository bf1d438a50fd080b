"""The one small error hierarchy of braggmap.

Every error names the offending value so that a one-line message tells the user what to fix.
"""


class BraggmapError(Exception):
    """Base class of every error braggmap raises on purpose."""


class ConfigurationError(BraggmapError):
    """A configuration file or option is missing, malformed or inconsistent."""


class GeometryError(BraggmapError):
    """The detector geometry does not fit the data (shape, pixel size, wavelength...)."""


class ProtocolError(BraggmapError):
    """A detector or internal message does not follow its protocol."""


class DataFileError(BraggmapError):
    """A data file (EIGER HDF5 master/data, map file) is missing, corrupt or of unknown layout."""
