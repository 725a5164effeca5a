"""Fetch the built OHIF viewer (npm package @ohif/app, MIT) for the OHIF test, without npm.

The package ships its production build in ``dist/``. It is downloaded once from the npm registry, checked
against the registry's sha512 integrity, and unpacked to ``$CAC_OHIF_CACHE`` (default
``~/.cache/cac-toolkit``)/ohif-app-<version>/package/dist, which :func:`ohif_dist` returns (or
``$CAC_OHIF_DIST`` when set). ``.ci/run`` runs this file before the tests.

    python tests/cacnet/fetch_ohif.py        # prints the dist folder
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__:
    from .npm_tarball import cache_root, fetch_npm_tarball
else:  # run as a script (.ci/run): this folder is on sys.path
    from npm_tarball import cache_root, fetch_npm_tarball

VERSION = "3.13.2"
TARBALL = f"https://registry.npmjs.org/@ohif/app/-/app-{VERSION}.tgz"
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="


def cache_dir() -> Path:
    return cache_root() / f"ohif-app-{VERSION}"


def ohif_dist() -> Path:
    """Where the built viewer is (it may not be there yet: see :func:`fetch`)."""
    if os.environ.get("CAC_OHIF_DIST"):
        return Path(os.environ["CAC_OHIF_DIST"])
    return cache_dir() / "package" / "dist"


def fetch() -> Path:
    dist = ohif_dist()
    if (dist / "index.html").is_file():
        return dist
    fetch_npm_tarball(TARBALL, INTEGRITY, cache_dir())
    return dist


if __name__ == "__main__":
    print(fetch())
    sys.exit(0)
