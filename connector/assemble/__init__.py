"""Assemble: decide when a study has finished arriving (quiet-period detection)."""
