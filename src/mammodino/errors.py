"""Typed errors with messages an engineer can act on: which file, what is wrong, what to do."""

from __future__ import annotations

from pathlib import Path


class MammodinoError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MammodinoError):
    """A configuration key or value is invalid."""


class MammoReadError(MammodinoError):
    """A file could not be read as a mammogram.

    `reason` says what is wrong, `hint` what to do; `str()` is one line without PHI.
    """

    def __init__(self, path: str | Path, reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        message = f"{Path(self.path).name}: {reason}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class UnsupportedTransferSyntaxError(MammoReadError):
    """The pixel data is compressed in a way no installed decoder handles."""


class NotAnImageError(MammoReadError):
    """The file is not an image (dose report, presentation state, random bytes...)."""


class NoPixelDataError(MammoReadError):
    """A DICOM image object without PixelData."""


class TruncatedFileError(MammoReadError):
    """The file ends before its declared content does."""


class ImageTooLargeError(MammoReadError):
    """The declared image size is beyond any real mammogram; refused before allocating."""


class ImageTooSmallError(MammoReadError):
    """The image is too small to hold a breast."""


class NoBreastFoundError(MammoReadError):
    """No breast tissue was found (blank or all-background image)."""


class CacheError(MammodinoError):
    """A prepared cache is missing or malformed: no manifest, missing columns, unreadable image."""


class CheckpointError(MammodinoError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model."""


class NonFiniteLossError(MammodinoError):
    """Training produced non-finite losses too many steps in a row."""


class EvaluationError(MammodinoError):
    """Features, labels or an evaluation setting do not fit together (join, task, splits)."""


class LabelsError(MammodinoError):
    """A published label file does not have the columns or values its data set documents."""
