"""ClipCov (Joshi et al., AISTATS 2024): coverage-driven selection over class sequences.

``filter`` is the plugin, ``pipeline`` the scalable streaming engine, ``reference`` the paper's
algorithm kept for parity tests, and the remaining modules the numeric pieces they share.
"""
