"""Synthetic non-contrast cardiac CT with exact coronary calcium ground truth."""

from ._calcium import LOOKALIKES
from ._batch import case_seed, make_phantoms
from ._base import ORIENTATIONS, Acquisition
from ._generate import PhantomCase, generate_phantom
from ._truth import CATEGORY_TARGETS
from ._variants import VARIANTS

from ._write import oriented_image, write_case

__all__ = ["generate_phantom", "make_phantoms", "write_case", "oriented_image", "case_seed", "PhantomCase", "Acquisition", "LOOKALIKES", "ORIENTATIONS", "CATEGORY_TARGETS",
           "VARIANTS"]
