"""``liveswap dev``: reload the app when a file it depends on is saved. ``watch``: which files those are,
and when their content changes."""
