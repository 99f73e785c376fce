"""The store layer: the one place that owns persistent state (SQLite state DB, spool, quarantine)."""
