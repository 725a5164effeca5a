"""One scan: everything `cac score` does for it (:func:`score_path`), and the serial batch (:func:`iter_serial`)."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from ..batch import csv_row, read_result
from ..ensemble import Ensemble
from ..errors import CacError, OutputError
from ..io import scan_id
from ..outputs.write import write_outputs
from ..pipeline import PreparedScan, prepare_scan, score_scan

__all__ = ["ScoreOptions", "ScanOutcome", "error_outcome", "input_identity", "iter_serial", "peak_rss_mb",
           "score_path"]

#: Bytes of a scan file hashed to tell whether it changed since it was scored.
_HASHED_BYTES = 1 << 20


@dataclass(frozen=True)
class ScoreOptions:
    """What to do with each scan besides scoring it; travels to the Dask workers with every task.

    Parameters
    ----------
    outdir : path, optional
        ``-o``: write each scan's outputs here (:func:`cacnet.outputs.write_outputs`).
    calibration, series, early_stop, force
        As for :func:`cacnet.pipeline.score_scan`.
    skip_existing : bool
        Skip scans whose ``<id>.json`` exists in ``outdir`` (their row says ``skipped``).
    outputs : mapping
        Keyword arguments of :func:`cacnet.outputs.write_outputs` beyond the
        result and the folder (``preview``, and whatever output options it
        takes); values must pickle, since they go to the workers.
    """

    outdir: Optional[Path] = None
    calibration: Optional[float] = None
    series: Optional[str] = None
    early_stop: bool = False
    force: bool = False
    skip_existing: bool = False
    outputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ScanOutcome:
    """What became of one scan: its CSV row, its ``--json`` object and how it went.

    Attributes
    ----------
    index : int
        Position of the scan among the run's inputs.
    input : str
        The path as scored (and as in the CSV's ``input`` column).
    id : str
    status : {"ok", "skipped", "error"}
    row : dict
        The CSV row (:func:`cacnet.batch.csv_row`).
    data : dict or None
        The result JSON; None on error, and for a scan resumed from the
        manifest whose ``<id>.json`` was not read.
    error : str
    exit_code : int
        0, or the exit code of the error (3 invalid scan, 5 device, 1 internal).
    internal : bool
        The error was unexpected (a bug or a dead worker), not a bad scan.
    identity : dict or None
        :func:`input_identity` of the input when it was scored (with a manifest).
    seconds : float
        Wall time of the scan in :func:`score_path`.
    worker : str
        Dask worker address; empty in a serial run.
    peak_rss_mb : float
        Peak resident memory of the process that scored it, so far.
    resumed : bool
        Taken from the manifest of an earlier run, not scored now.
    """

    index: int
    input: str
    id: str
    status: str
    row: dict[str, Any]
    data: Optional[dict[str, Any]] = None
    error: str = ""
    exit_code: int = 0
    internal: bool = False
    identity: Optional[dict[str, Any]] = None
    seconds: float = 0.0
    worker: str = ""
    peak_rss_mb: float = 0.0
    resumed: bool = False

    @property
    def warnings(self) -> list[str]:
        """The scan's warnings (from its result, or from its CSV row when resumed)."""
        if self.data is not None:
            return list(self.data.get("warnings", []))
        text = str(self.row.get("warnings", ""))
        return text.split(" | ") if text else []

    def json_object(self) -> dict[str, Any]:
        """The scan's ``cac score --json`` object.

        A scored scan: its result plus ``status`` and ``input``; a failed
        one: ``id``, ``input``, ``status``, ``error``, ``exit_code``; a scan
        resumed from the manifest: its result when it was read (else its CSV
        row's fields), with ``"resumed": true``.
        """
        if self.status == "error":
            return {"id": self.id, "input": self.input, "status": "error", "error": self.error,
                    "exit_code": self.exit_code}
        base = self.data if self.data is not None else self.row
        out = {"id": self.id, "status": self.status, "input": self.input, **base}
        out.update({"status": self.status, "input": self.input})
        if self.resumed:
            out["resumed"] = True
        return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM; ``ru_maxrss`` where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if sys.platform == "darwin" else 1024.0)
    except (ImportError, OSError):
        return 0.0


def input_identity(path: Path) -> Optional[dict[str, Any]]:
    """What tells whether an input changed since it was scored: size, mtime and a hash.

    A file: its size, mtime (ns) and the sha256 of its first MiB. A folder
    (DICOM): the total size and latest mtime of its files, and the sha256 of
    their sorted relative names and sizes followed by the first MiB of the
    first file. None when the path cannot be read.
    """
    path = Path(path)
    try:
        h = hashlib.sha256()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            stats = [p.stat() for p in files]
            for p, st in zip(files, stats):
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\n".encode())
            if files:
                with open(files[0], "rb") as fh:
                    h.update(fh.read(_HASHED_BYTES))
            return {"size": sum(st.st_size for st in stats),
                    "mtime_ns": max((st.st_mtime_ns for st in stats), default=path.stat().st_mtime_ns),
                    "sha256_1mib": h.hexdigest()}
        st = path.stat()
        with open(path, "rb") as fh:
            h.update(fh.read(_HASHED_BYTES))
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_1mib": h.hexdigest()}
    except OSError:
        return None


def _skips(path: Path, options: ScoreOptions) -> bool:
    return bool(options.skip_existing and options.outdir is not None
                and (Path(options.outdir) / f"{scan_id(path)}.json").exists())


def error_outcome(index: int, path: Path, message: str, exit_code: int, internal: bool = False) -> ScanOutcome:
    """The outcome of a scan that failed: an error row with ``message`` and ``exit_code``."""
    return ScanOutcome(index=index, input=str(path), id=scan_id(path), status="error",
                       row=csv_row(None, input_path=path, status="error", error=message), error=message,
                       exit_code=exit_code, internal=internal)


def score_path(
    path: Path,
    ensemble: Ensemble,
    options: ScoreOptions,
    *,
    index: int = 0,
    prepared: Optional[Callable[[], PreparedScan]] = None,
    identify: bool = False,
) -> ScanOutcome:
    """Everything `cac score` does for one scan; never raises for a bad scan.

    Skips the scan (``options.skip_existing``) or scores it, writes its
    ``-o`` outputs, and returns its CSV row and ``--json`` object. A scan
    that cannot be read or scored gives an outcome with status ``error``
    (the error's exit code; 1 and ``internal`` for an unexpected error), so
    that a batch goes on.

    Parameters
    ----------
    path : path
        The scan (file or DICOM folder).
    ensemble : Ensemble
        Loaded once and reused.
    options : ScoreOptions
    index : int
        The scan's position among the run's inputs (kept in the outcome).
    prepared : callable, optional
        Returns the scan already read and preprocessed (or raises what
        reading it raised), e.g. the ``result`` of a background thread's
        :func:`cacnet.pipeline.prepare_scan`; the result is the same.
    identify : bool
        Record :func:`input_identity` of the input (for a run manifest).

    Returns
    -------
    ScanOutcome
    """
    start = time.perf_counter()
    path = Path(path)
    identity = input_identity(path) if identify else None
    try:
        if _skips(path, options):
            assert options.outdir is not None
            data = read_result(Path(options.outdir) / f"{scan_id(path)}.json")
            out = ScanOutcome(index=index, input=str(path), id=data["id"], status="skipped",
                              row=csv_row(data, input_path=path, status="skipped"), data=data)
        else:
            source = prepared() if prepared is not None else path
            res = score_scan(source, ensemble, calibration=options.calibration, series=options.series,
                             early_stop=options.early_stop, force=options.force)
            if options.outdir is not None:
                try:
                    write_outputs(res, Path(options.outdir), **dict(options.outputs))
                except OSError as exc:  # e.g. a full disk: an error of this scan, not an internal one
                    raise OutputError(f"{res.data['id']}: cannot write its outputs in {options.outdir} "
                                      f"({exc}).") from None
            out = ScanOutcome(index=index, input=str(path), id=res.data["id"], status="ok",
                              row=csv_row(res.data, input_path=path, status="ok"), data=res.data)
    except CacError as exc:
        out = error_outcome(index, path, str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - a batch must go on; the error row says what happened
        out = error_outcome(index, path, f"internal error: {exc!r}", 1, internal=True)
    out.identity = identity
    out.seconds = time.perf_counter() - start
    out.peak_rss_mb = peak_rss_mb()
    return out


def iter_serial(
    paths: Sequence[Path],
    ensemble: Ensemble | Callable[[], Ensemble],
    options: ScoreOptions,
    *,
    indices: Optional[Sequence[int]] = None,
    prefetch: bool = True,
    identify: bool = False,
) -> Iterator[ScanOutcome]:
    """Score scans one after another in this process, yielding each outcome in order.

    With ``prefetch``, a background thread reads and preprocesses the next
    scan (:func:`cacnet.pipeline.prepare_scan`) while the current one runs
    through the models: at most two scans are held at once, and every
    outcome is what the plain loop gives (:func:`score_path` either way).
    Stopping the iteration (e.g. at the first error) drops the scan being
    read.

    Parameters
    ----------
    paths : sequence of path
    ensemble : Ensemble, or a callable that loads one
        A callable is called once, after the first scan started being read
        (with ``prefetch``): loading the models and reading the first scan
        overlap, which is most of a one-scan process's set-up.
    options : ScoreOptions
    indices : sequence of int, optional
        The scans' positions among the run's inputs (default 0, 1, ...).
    prefetch : bool
        Read the next scan while the current one runs through the models.
    identify : bool
        Record each input's :func:`input_identity`.

    Yields
    ------
    ScanOutcome
    """
    paths = [Path(p) for p in paths]
    idx = list(range(len(paths))) if indices is None else list(indices)
    if not prefetch:
        ensemble = ensemble() if callable(ensemble) else ensemble
        for i, p in zip(idx, paths):
            yield score_path(p, ensemble, options, index=i, identify=identify)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cac-prefetch") as pool:

        def submit(k: int):
            if k >= len(paths) or _skips(paths[k], options):
                return None
            return pool.submit(prepare_scan, paths[k], series=options.series, force=options.force)

        upcoming = submit(0)
        if callable(ensemble):
            ensemble = ensemble()  # loads while the first scan is read
        try:
            for k, (i, p) in enumerate(zip(idx, paths)):
                current, upcoming = upcoming, submit(k + 1)  # the next scan is read while this one is scored
                yield score_path(p, ensemble, options, index=i, identify=identify,
                                 prepared=None if current is None else current.result)
                current = None  # let the scan go before the next one is waited for
        finally:
            if upcoming is not None:
                upcoming.cancel()
