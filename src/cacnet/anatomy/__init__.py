"""Where coronary calcium can be: the anatomical map of a chest CT, from the image alone.

See docs/anatomy.md for the rules, their thresholds and what they were measured against.
"""

from ._aorta import AORTA_RADII_MM, AortaTrack, find_aortas
from ._map import (ANATOMY_FEATURES, AORTA_MEASURES, HEART_HU, MAP_VERSION, MIN_HEART_ML, SAC_MARGIN_MM, AnatomyMap,
                   anatomical_map)

__all__ = ["AnatomyMap", "anatomical_map", "ANATOMY_FEATURES", "AORTA_MEASURES", "MAP_VERSION", "SAC_MARGIN_MM",
           "MIN_HEART_ML", "HEART_HU", "AortaTrack", "find_aortas", "AORTA_RADII_MM"]
