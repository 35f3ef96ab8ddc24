"""Vectorised chunk-stepping environments for hetero.rl: the interface and workers (base.py), Meta-World (metaworld.py)."""
