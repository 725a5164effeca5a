"""The release number of the cac-toolkit distribution, which ships ``agatston`` and ``cacnet`` together.

The one place it is written: ``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``), and
``agatston.__version__`` and ``cacnet.__version__`` return it. It lives here because ``agatston`` never
imports ``cacnet``. Each release has its section in CHANGELOG.md; the shipped weights have a version of
their own (``"version"`` in weights/manifest.json).
"""

__version__ = "0.9.0"
