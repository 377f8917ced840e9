"""The plain app's own package."""
