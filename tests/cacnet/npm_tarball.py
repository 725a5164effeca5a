"""Download an npm package's tarball without npm: checked against the registry's sha512 integrity, unpacked."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path


def cache_root() -> Path:
    """``$CAC_OHIF_CACHE``, else ``~/.cache/cac-toolkit``: where the fetched packages are unpacked."""
    return Path(os.environ.get("CAC_OHIF_CACHE") or Path.home() / ".cache" / "cac-toolkit")


def fetch_npm_tarball(url: str, integrity: str, target: Path) -> None:
    """Download ``url``, refuse it unless its sha512 is ``integrity`` (npm's ``sha512-<base64>``), unpack it.

    The tarball's ``package/`` folder lands in ``target``.
    """
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{url}: sha512 {digest} is not the registry's {integrity}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
