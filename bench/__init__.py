"""Benchmarks of pyramid_examcache against the seed's cache-aside, dogpile.cache and
the physical floor; run ``python -m bench --help``."""
