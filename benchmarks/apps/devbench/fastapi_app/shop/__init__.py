"""A small shop API: models, routes and the version."""
