"""Workers: how many model threads each gets, and the ensemble and the Dask tasks of a worker process."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from ..ensemble import DEFAULT_WEIGHTS, Ensemble, default_threads
from ..errors import CacError, UsageError
from ._scan import ScanOutcome, ScoreOptions, error_outcome, score_path

__all__ = ["EnsembleSpec", "plan_threads", "score_task", "warm_task", "worker_ensemble"]


@dataclass(frozen=True)
class EnsembleSpec:
    """How to load the ensemble: what a worker needs to load its own copy.

    Parameters
    ----------
    weights : path
        Weights folder (manifest.json and the ONNX files); absolute paths
        when the workers run elsewhere.
    device, backend, precision : str
        As for :class:`cacnet.ensemble.Ensemble`.
    model_cache : bool
        OpenVINO's model cache, as for :class:`cacnet.ensemble.Ensemble` (default on).
    second_stage : bool
        Use the weights' second stage when they have one (default), as
        :class:`cacnet.ensemble.Ensemble`.
    threads : int, optional
        Inference threads per model. None: the backend's default in a serial
        run; on a Dask worker, the worker's own thread count (``dask worker
        --nthreads``, dask-jobqueue's cores / processes).
    """

    weights: Path = DEFAULT_WEIGHTS
    device: str = "auto"
    backend: str = "auto"
    precision: str = "fp32"
    threads: Optional[int] = None
    second_stage: bool = True
    model_cache: bool = True

    def load(self) -> Ensemble:
        """Load and verify the ensemble (sha256 of every model file), compile each model once."""
        return Ensemble(Path(self.weights), device=self.device, threads=self.threads, backend=self.backend,
                        precision=self.precision, second_stage=self.second_stage, model_cache=self.model_cache)


def plan_threads(workers: int, threads: Optional[int] = None, cores: Optional[int] = None) -> int:
    """Model threads per worker so that workers x threads never exceed the cores.

    Parameters
    ----------
    workers : int
        Worker processes on this machine (1 for a serial run).
    threads : int, optional
        Threads asked for per worker; default: ``cores // workers``.
    cores : int, optional
        CPUs this process may use (default: its affinity mask).

    Returns
    -------
    int

    Raises
    ------
    UsageError
        More workers than cores, or ``workers * threads`` more than the cores.
    """
    cores = cores or default_threads()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1; got {workers}.")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1; got {threads}.")
    if workers > cores:
        raise UsageError(f"--workers {workers}: this process may use {cores} cores, and each worker needs one; "
                         f"use --workers {cores} or fewer.")
    if threads is None:
        return max(1, cores // workers)
    if workers * threads > cores:
        raise UsageError(f"--workers {workers} x --threads {threads} = {workers * threads} threads for {cores} "
                         f"cores; use --threads {max(1, cores // workers)} or fewer.")
    return threads


_ENSEMBLES: dict[EnsembleSpec, Ensemble] = {}
_ENSEMBLES_LOCK = threading.Lock()
_SCAN_LOCK = threading.Lock()  # one scan at a time per worker process: one scan's memory, no shared inference


def _set_up_process(threads: Optional[int]) -> None:
    """A worker process: freed large buffers go back to the OS; ITK's threads follow the model threads."""
    from .._memory import return_large_buffers_to_os

    return_large_buffers_to_os()
    if threads:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


def worker_ensemble(spec: EnsembleSpec) -> Ensemble:
    """The ensemble of this process for ``spec``: loaded and verified once, then reused.

    A process keeps one ensemble: another spec replaces it.
    """
    with _ENSEMBLES_LOCK:
        ensemble = _ENSEMBLES.get(spec)
        if ensemble is None:
            _ENSEMBLES.clear()
            _set_up_process(spec.threads)
            ensemble = _ENSEMBLES[spec] = spec.load()
        return ensemble


def _dask_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _on_worker(spec: EnsembleSpec) -> EnsembleSpec:
    """``spec`` with the threads of this worker filled in (its Dask thread count, at most its CPUs)."""
    if spec.threads is not None:
        return spec
    worker = _dask_worker()
    n = getattr(getattr(worker, "state", None), "nthreads", None) or getattr(worker, "nthreads", None) or 1
    return replace(spec, threads=max(1, min(int(n), default_threads())))


def warm_task(spec: EnsembleSpec) -> dict[str, Any]:
    """Dask task: load this worker's ensemble now; say what runs it, or the error (returned, not raised)."""
    worker = _dask_worker()
    try:
        ensemble = worker_ensemble(_on_worker(spec))
    except CacError as exc:
        return {"address": getattr(worker, "address", ""), "error": exc}
    return {"address": getattr(worker, "address", ""), "pid": os.getpid(), **ensemble.describe()}


def score_task(index: int, path: str, spec: EnsembleSpec, options: ScoreOptions, identify: bool) -> ScanOutcome:
    """Dask task: one scan, with this worker's ensemble (loaded on its first task)."""
    with _SCAN_LOCK:
        try:
            ensemble = worker_ensemble(_on_worker(spec))
        except CacError as exc:
            out = error_outcome(index, Path(path), f"this worker cannot load the models: {exc}", exc.exit_code)
        else:
            out = score_path(Path(path), ensemble, options, index=index, identify=identify)
    out.worker = str(getattr(_dask_worker(), "address", ""))
    return out
