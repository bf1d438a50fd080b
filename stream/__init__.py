"""braggmap: stream package."""
