"""Embedding-density pruning: SemDeDup, SSP and Density-Based Pruning (Abbas et al.).

All three run on the streaming clustering engine in :mod:`clipsift.clustering`; ``allocation``
holds DBP's per-cluster budget arithmetic.
"""
