"""Local stand-ins for cloud services, for development, tests and benchmarks (not used by the product)."""
