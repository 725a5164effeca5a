"""Build hook: the shipped weights (``weights/`` at the repository root) go into the package as ``cacnet/weights``.

Everything else is configured in pyproject.toml. The weights live once, in ``weights/``; no symlink in
``src/`` (it breaks on checkouts without symlinks). A wheel (``pip install .``) gets a copy in
``cacnet/weights/``; an editable install (``pip install -e .``) copies nothing and finds ``weights/`` in the
checkout (:func:`cacnet.ensemble._default_weights`). The sdist carries ``weights/`` (MANIFEST.in).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHTS = Path(__file__).resolve().parent / "weights"
#: The files of ``weights/`` that ship (checkpoints and caches that training may leave there do not).
SHIPPED = ("*.onnx", "*.npz", "*.json", "*.md")


class BuildWithWeights(build_py):
    """build_py, then ``weights/`` copied into the built package as ``cacnet/weights``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # the checkout's weights/ is found where it is
            return
        if not (WEIGHTS / "manifest.json").is_file():
            raise FileNotFoundError(f"{WEIGHTS}/manifest.json: the shipped weights are missing from the source tree")
        target = Path(self.build_lib) / "cacnet" / "weights"
        target.mkdir(parents=True, exist_ok=True)
        for pattern in SHIPPED:
            for f in sorted(WEIGHTS.glob(pattern)):
                shutil.copyfile(f, target / f.name)


setup(cmdclass={"build_py": BuildWithWeights})
