"""braggmap: simulators package."""
