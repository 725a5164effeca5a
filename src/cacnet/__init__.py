"""cacnet: reading scans, synthetic phantoms, the U-Net ensemble and the `cac` command.

Scores always come from the :mod:`agatston` package.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
