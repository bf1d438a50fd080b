"""braggmap: viewer package."""
