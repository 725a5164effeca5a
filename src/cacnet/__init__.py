"""cacnet: reading scans, synthetic phantoms, the U-Net ensemble and the `cac` command.

Scores always come from the :mod:`agatston` package.
"""


def __getattr__(name: str):
    # ``__version__``: the distribution's release, written once in agatston/_version.py (agatston never imports
    # cacnet); looked up on first use, so that importing cacnet (and `cac --help`) does not import numpy and scipy.
    if name == "__version__":
        from agatston._version import __version__

        return __version__
    raise AttributeError(f"module 'cacnet' has no attribute {name!r}")


__all__ = ["__version__"]
