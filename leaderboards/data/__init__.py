"""Data shipped with clipsift.leaderboards: DataComp task list, published leaderboards, scales."""
