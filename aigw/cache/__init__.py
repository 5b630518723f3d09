"""What the exact and semantic caches share: the key recipe, the cache record, its replay,
the exact stores, and single-flight."""
