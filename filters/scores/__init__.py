"""External and combined per-uid scores: score files and uid lists joined by uid, score mixing,
Soft Cap Sampling, and ``clipsift embed`` (pool metadata from any open_clip model)."""
