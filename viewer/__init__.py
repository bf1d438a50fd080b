"""braggmap: the live viewer (Qt, pyqtgraph); reads the service's published map state and
frame details only."""

from viewer.pyside_refcount import protect_none

protect_none()
