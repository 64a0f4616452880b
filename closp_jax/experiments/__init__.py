"""The paper's comparisons as experiments: paired statistics over queries and seeds (stats.py)."""
