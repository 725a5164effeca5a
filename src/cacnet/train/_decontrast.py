"""Moved to :mod:`cacnet.phantom.decontrast`: this old path serves its names for one release, with a DeprecationWarning."""

from .._deprecated import moved

__getattr__ = moved(__name__, "cacnet.phantom.decontrast")
