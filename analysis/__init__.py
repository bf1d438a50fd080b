"""braggmap: analysis package."""
