"""Data lifecycle: archive moves, retention purges, anonymization."""
