"""Data lifecycle of PostgreSQL targets: batched archive moves, retention purges, optional exports."""
