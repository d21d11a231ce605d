"""The benchmark of the /v1 hot path (see README.md); not part of the product."""
