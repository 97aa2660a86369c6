"""Leaderboards: DataComp-exact aggregation, results store, tables, plots, HTML and submission packs."""
