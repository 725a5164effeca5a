"""Moved: calcium insertion to :mod:`cacnet.phantom.insertion`, the training cases made with it
(``inserted_cases``, ``iter_inserted_cases``) to :mod:`cacnet.train._backgrounds` (both served by
:mod:`cacnet.train`). This old path serves their names for one release, with a DeprecationWarning.
"""

from .._deprecated import moved

__all__ = ["InsertedCase", "insert_calcium", "load_tracing", "validate_tracing", "inserted_cases", "augment_scan",
           "resample_for_cac", "estimate_psf_sigma", "iter_inserted_cases", "decontrast_mask_of", "CORONARIES",
           "STRUCTURES"]

_HOMES = {"inserted_cases": "cacnet.train._backgrounds", "iter_inserted_cases": "cacnet.train._backgrounds"}

__getattr__ = moved(__name__, {name: _HOMES.get(name, "cacnet.phantom.insertion")
                               for name in [*__all__, "iter_inserted_scans"]})
