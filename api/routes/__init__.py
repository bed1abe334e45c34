"""Routes grouped by resource; ``api.main`` includes every router."""
