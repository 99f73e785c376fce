"""Ingest: the doors into the connector (C-STORE SCP, drop folder) and the durable intake behind them."""
