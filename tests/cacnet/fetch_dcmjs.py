"""Fetch dcmjs (npm package dcmjs, MIT) for the dcmjs SEG test, without npm.

The version is the one OHIF 3.13 depends on (@ohif/app 3.13.2's package.json: ``"dcmjs": "0.52.0"``). Its
``build/dcmjs.js`` is a self-contained UMD bundle (its dependencies are bundled in), so Node loads it with
``require`` and nothing else is installed. It is downloaded once from the npm registry, checked against the
registry's sha512 integrity, and unpacked to ``$CAC_OHIF_CACHE`` (default ``~/.cache/cac-toolkit``)/dcmjs-<version>/
package, whose ``build/dcmjs.js`` :func:`dcmjs_path` returns (or ``$CAC_DCMJS`` when set). ``.ci/run`` runs this
file before the tests.

    python tests/cacnet/fetch_dcmjs.py        # prints the path of build/dcmjs.js
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

VERSION = "0.52.0"
TARBALL = f"https://registry.npmjs.org/dcmjs/-/dcmjs-{VERSION}.tgz"
INTEGRITY = "sha512-0/mT9NACKnwnOnkUx7JAqmWxRcUr7HiCoptw1KhN2StNYE0Hy6+tmpI7CU+lJuBc4rFpcMCalvI8QO6JkJ+7Fg=="


def cache_dir() -> Path:
    return Path(os.environ.get("CAC_OHIF_CACHE") or Path.home() / ".cache" / "cac-toolkit") / f"dcmjs-{VERSION}"


def dcmjs_path() -> Path:
    """Where dcmjs's UMD bundle is (it may not be there yet: see :func:`fetch`)."""
    if os.environ.get("CAC_DCMJS"):
        return Path(os.environ["CAC_DCMJS"])
    return cache_dir() / "package" / "build" / "dcmjs.js"


def fetch() -> Path:
    path = dcmjs_path()
    if path.is_file():
        return path
    with urllib.request.urlopen(TARBALL, timeout=300) as r:
        data = r.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{TARBALL}: sha512 {digest} is not the registry's {INTEGRITY}")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    return path


if __name__ == "__main__":
    print(fetch())
    sys.exit(0)
