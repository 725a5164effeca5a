"""Fetch the built OHIF viewer (npm package @ohif/app, MIT) for the OHIF test, without npm.

The package ships its production build in ``dist/``. It is downloaded once from the npm registry, checked
against the registry's sha512 integrity, and unpacked to ``$CAC_OHIF_CACHE`` (default
``~/.cache/cac-toolkit``)/ohif-app-<version>/package/dist, which :func:`ohif_dist` returns (or
``$CAC_OHIF_DIST`` when set). ``.ci/run`` runs this file before the tests.

    python tests/cacnet/fetch_ohif.py        # prints the dist folder
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.13.2"
TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="


def cache_dir() -> Path:
    return Path(os.environ.get("CAC_OHIF_CACHE") or Path.home() / ".cache" / "cac-toolkit") / f"ohif-app-{VERSION}"


def ohif_dist() -> Path:
    """Where the built viewer is (it may not be there yet: see :func:`fetch`)."""
    if os.environ.get("CAC_OHIF_DIST"):
        return Path(os.environ["CAC_OHIF_DIST"])
    return cache_dir() / "package" / "dist"


def fetch() -> Path:
    dist = ohif_dist()
    if (dist / "index.html").is_file():
        return dist
    with urllib.request.urlopen(TARBALL, timeout=300) as r:
        data = r.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{TARBALL}: sha512 {digest} is not the registry's {INTEGRITY}")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    return dist


if __name__ == "__main__":
    print(fetch())
    sys.exit(0)
