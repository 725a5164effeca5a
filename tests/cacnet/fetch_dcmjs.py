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

import os
import sys
from pathlib import Path

if __package__:
    from .npm_tarball import cache_root, fetch_npm_tarball
else:  # run as a script (.ci/run): this folder is on sys.path
    from npm_tarball import cache_root, fetch_npm_tarball

VERSION = "0.52.0"
TARBALL = f"https://registry.npmjs.org/dcmjs/-/dcmjs-{VERSION}.tgz"
INTEGRITY = "sha512-0/mT9NACKnwnOnkUx7JAqmWxRcUr7HiCoptw1KhN2StNYE0Hy6+tmpI7CU+lJuBc4rFpcMCalvI8QO6JkJ+7Fg=="


def cache_dir() -> Path:
    return cache_root() / f"dcmjs-{VERSION}"


def dcmjs_path() -> Path:
    """Where dcmjs's UMD bundle is (it may not be there yet: see :func:`fetch`)."""
    if os.environ.get("CAC_DCMJS"):
        return Path(os.environ["CAC_DCMJS"])
    return cache_dir() / "package" / "build" / "dcmjs.js"


def fetch() -> Path:
    path = dcmjs_path()
    if path.is_file():
        return path
    fetch_npm_tarball(TARBALL, INTEGRITY, cache_dir())
    return path


if __name__ == "__main__":
    print(fetch())
    sys.exit(0)
