"""Errors of the CAC stage. Messages carry codes and counts only, never DICOM values."""

from __future__ import annotations


class InferError(Exception):
    """Base class; ``code`` is a short machine-readable reason (logged and reported)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class SeriesError(InferError):
    """A series cannot be scored (inconsistent geometry, undecodable pixels, too few slices...)."""


class ModelError(InferError):
    """The model folder is missing, its manifest is invalid, or no execution provider can run it."""


class ModelIntegrityError(ModelError):
    """The model file's SHA-256 differs from its manifest: refuse to run it."""
