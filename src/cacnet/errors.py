"""Exceptions of cacnet; each maps to a documented exit code of `cac`."""

from __future__ import annotations

__all__ = ["CacError", "InvalidScanError", "SeriesSelectionError", "UnsuitableScanError", "WeightsError",
           "DeviceUnavailableError", "ClusterUnavailableError", "UsageError", "ReviewError",
           "SendError", "OutputError"]


class CacError(Exception):
    """Base class of cacnet's errors; ``exit_code`` is what `cac` exits with."""

    exit_code = 1


class InvalidScanError(CacError, ValueError):
    """A scan cannot be read or is not a usable non-contrast cardiac CT (exit 3)."""

    exit_code = 3


class SeriesSelectionError(InvalidScanError):
    """A DICOM folder holds no, or more than one, qualifying CT series (exit 3)."""


class UnsuitableScanError(InvalidScanError):
    """A readable scan that is not a calcium-scoring scan: contrast, no heart, sharp kernel (exit 3).

    Raised by triage (:mod:`cacnet.triage`); ``score_scan(force=True)`` or
    ``cac score --force`` scores such a scan anyway, with the reasons as warnings.
    """


class WeightsError(CacError):
    """Model weights missing, or not matching their manifest (exit 3)."""

    exit_code = 3


class DeviceUnavailableError(CacError, RuntimeError):
    """An explicitly requested device (e.g. CUDA) cannot be used (exit 5)."""

    exit_code = 5


class ClusterUnavailableError(DeviceUnavailableError):
    """The Dask scheduler of ``--scheduler`` cannot be reached, or local workers cannot start (exit 5)."""


class UsageError(CacError, ValueError):
    """Options that cannot go together here, e.g. --precision bf16 on a CPU without bf16 (exit 2)."""

    exit_code = 2


class SendError(CacError, RuntimeError):
    """DICOM outputs could not be sent (``--send``): node unreachable, association or store refused (exit 6).

    The files stay in the output folder; send them again later.
    """

    exit_code = 6


class OutputError(CacError):
    """An output folder or file cannot be created or written: ``-o``, ``--csv``, OUTDIR (exit 7).

    `cac` checks its outputs before any scan is scored (:func:`cacnet._files.check_output_dir`); a
    scan whose outputs fail to write later (e.g. a full disk) is an error row with this exit code.
    """

    exit_code = 7


class ReviewError(CacError, ValueError):
    """A review that cannot be applied: another scan's, a stale one, or a malformed file (exit 3).

    Raised by :func:`cacnet.review.apply_review` (``cac review apply``).
    """

    exit_code = 3
