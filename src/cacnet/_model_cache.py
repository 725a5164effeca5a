"""OpenVINO's model cache: compile the models once, not in every process (private).

:func:`cache_root` (``$CAC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cac-toolkit``, else
``~/.cache/cac-toolkit``), :func:`model_cache_dir` (keyed by the OpenVINO version and the models'
sha256), :func:`cache_disabled` (``CAC_NO_MODEL_CACHE=1``) and :func:`compile_cached`, which checks every
blob against its ``.sha256`` sidecar and falls back to compiling in memory when the cache fails.

See docs/performance.md ("OpenVINO's model cache") for the layout and the integrity rule.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ._files import sha256_file, write_text_atomic

__all__ = ["CACHE_DIR_ENV", "NO_CACHE_ENV", "cache_root", "cache_disabled", "model_cache_dir", "compile_cached"]

#: The cache's root folder, when set (else the XDG user cache folder).
CACHE_DIR_ENV = "CAC_CACHE_DIR"
#: Set to 1 (true, yes, on) to compile the models in every process, without the cache.
NO_CACHE_ENV = "CAC_NO_MODEL_CACHE"


def cache_root() -> Path:
    """``$CAC_CACHE_DIR``, else ``$XDG_CACHE_HOME/cac-toolkit``, else ``~/.cache/cac-toolkit``."""
    own = os.environ.get(CACHE_DIR_ENV)
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "cac-toolkit"


def cache_disabled() -> bool:
    """Whether the environment switches the model cache off (``CAC_NO_MODEL_CACHE=1``)."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def model_cache_dir(model_sha256: Sequence[str], openvino_version: str, root: Optional[Path] = None) -> Path:
    """``<root>/openvino/<key>``: the key is the sha256 of the OpenVINO version and the models' sha256."""
    digest = hashlib.sha256("\n".join([f"openvino {openvino_version}", *model_sha256]).encode()).hexdigest()
    return (cache_root() if root is None else Path(root)) / "openvino" / digest[:16]


def _drop_bad_blobs(folder: Path) -> None:
    """Delete every blob of ``folder`` that has no sidecar or whose sha256 differs from it (and such sidecars)."""
    for blob in folder.glob("*.blob"):
        side = blob.with_name(blob.name + ".sha256")
        try:
            ok = side.read_text().strip() == sha256_file(blob)
        except OSError:
            ok = False
        if not ok:
            blob.unlink(missing_ok=True)
            side.unlink(missing_ok=True)
    for side in folder.glob("*.blob.sha256"):
        if not side.with_name(side.name[:-len(".sha256")]).exists():
            side.unlink(missing_ok=True)


def _record_new_blobs(folder: Path) -> None:
    """Write the sidecar of every blob that has none (OpenVINO wrote it while compiling just now)."""
    for blob in folder.glob("*.blob"):
        side = blob.with_name(blob.name + ".sha256")
        if not side.exists():
            write_text_atomic(side, sha256_file(blob) + "\n")


def compile_cached(core: Any, model: Any, config: dict, folder: Optional[Path]) -> Any:
    """``core.compile_model(model, "CPU", config)``, through the cache in ``folder`` (None: without a cache).

    Returns the compiled model; on any error of the cache, the model compiled without it.
    """
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _drop_bad_blobs(folder)
            compiled = core.compile_model(model, "CPU", {**config, "CACHE_DIR": str(folder)})
        except Exception:  # noqa: BLE001 - the cache is an optimisation: compile without it
            pass
        else:
            try:
                _record_new_blobs(folder)
            except OSError:
                pass
            return compiled
    return core.compile_model(model, "CPU", config)
