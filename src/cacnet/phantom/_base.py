"""What every phantom variant shares: orientations, the acquisition and the steps base (private).

:class:`PhantomSteps` is the default generator's way of sampling and drawing a
case; a variant (:mod:`cacnet.phantom._varied`) subclasses it, and
:func:`cacnet.phantom.generate_phantom` picks the steps of a variant by name
from the registry :mod:`cacnet.phantom._variants`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ._anatomy import draw_anatomy, sample_anatomy
from ._calcium import LOOKALIKES, Calcification, sample_lookalikes
from ._canvas import Canvas

__all__ = ["ORIENTATIONS", "Acquisition", "PhantomSteps", "sample_acquisition", "blur"]

#: How the case is stored on disk: (order of canonical axes, flipped written axes).
#: Canonical is (z, y, x) with identity direction; all keep slices axial.
ORIENTATIONS: dict[str, tuple[tuple[int, int, int], tuple[int, ...]]] = {
    "identity": ((0, 1, 2), ()),
    "flip_x": ((0, 1, 2), (2,)),
    "flip_y": ((0, 1, 2), (1,)),
    "flip_z": ((0, 1, 2), (0,)),
    "swap_xy": ((0, 2, 1), ()),
    "swap_xy_flip": ((0, 2, 1), (1, 0)),
}


@dataclass
class Acquisition:
    """Scanner settings of a case (mm and HU)."""

    pixel_mm: float
    thickness_mm: float
    increment_mm: float
    n_slices: int
    psf_mm: float  # Gaussian sigma of the in-plane point-spread function
    kernel: str  # "soft" or "sharp"
    sharpen: float  # edge overshoot of a sharp kernel
    noise_sd: float  # HU, after the kernel
    hu_offset: float  # calibration offset of the "vendor"
    orientation: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    thickness = float(rng.choice([2.5, 3.0]))
    overlap = rng.random() < 0.2
    increment = thickness / 2 if overlap else thickness
    n = int(rng.integers(60, 71)) if overlap else int(rng.integers(40, 71))
    sharp = rng.random() < 0.3
    names = list(ORIENTATIONS)
    orientation = "identity" if rng.random() < 0.6 else str(rng.choice(names[1:]))
    return Acquisition(
        # NIfTI stores spacing as float32: use a float32 value so that the
        # written file carries exactly the spacing the truth was scored with.
        pixel_mm=float(np.float32(round(float(rng.uniform(0.3, 0.5)), 4))),
        thickness_mm=thickness,
        increment_mm=increment,
        n_slices=n,
        psf_mm=float(rng.uniform(0.3, 0.75)),
        kernel="sharp" if sharp else "soft",
        sharpen=float(rng.uniform(0.2, 0.5)) if sharp else 0.0,
        noise_sd=float(rng.uniform(10, 30)),
        hu_offset=float(rng.uniform(-6, 6)),
        orientation=orientation,
    )


def blur(vol: np.ndarray, acq: Acquisition) -> np.ndarray:
    """The in-plane kernel: Gaussian PSF, with overshoot for a sharp kernel."""
    s = acq.psf_mm / acq.pixel_mm
    out = ndimage.gaussian_filter(vol, sigma=(0, s, s), truncate=3.5)
    if acq.sharpen:
        wide = ndimage.gaussian_filter(out, sigma=(0, 1.5 * s, 1.5 * s), truncate=3.0)
        out = out + np.float32(acq.sharpen) * (out - wide)
    return out


def _noise_gain(acq: Acquisition) -> float:
    """Standard deviation of the kernel's response to unit white noise."""
    impulse = np.zeros((1, 41, 41), dtype=np.float64)
    impulse[0, 20, 20] = 1.0
    return float(np.sqrt((blur(impulse, acq) ** 2).sum()))


class PhantomSteps:
    """How a generator variant samples and draws a case, step by step.

    :func:`cacnet.phantom.generate_phantom` calls the steps in this order with one random
    generator; everything after them (coronary plaques, the category loop,
    the truth rule, annotation points) is shared by all variants. This class
    is the default generator; :mod:`cacnet.phantom._varied` overrides steps.
    """

    name = "default"

    def acquisition(self, rng: np.random.Generator, size: int) -> Acquisition:
        """Scanner settings of the case (``size``: in-plane matrix)."""
        return sample_acquisition(rng)

    def lookalike_kinds(self, rng: np.random.Generator, target: str, hard_fraction: float,
                        lookalike_rate: float) -> tuple[bool, bool, list[str]]:
        """(faint coronary lesion, mitral annulus calcification, look-alike kinds)."""
        faint = target != "A" and rng.random() < hard_fraction
        mac = rng.random() < hard_fraction
        kinds = [k for k in LOOKALIKES if k != "mitral_annulus" and rng.random() < lookalike_rate]
        if mac:
            kinds.append("mitral_annulus")
        return faint, mac, kinds

    def geometry(self, rng: np.random.Generator, acq: Acquisition,
                 size: int) -> tuple[tuple[int, int, int], tuple[float, float, float], tuple[float, float, float]]:
        """(shape, spacing, origin) of the volume; the heart is sampled near the origin."""
        spacing = (acq.increment_mm, acq.pixel_mm, acq.pixel_mm)
        shape = (acq.n_slices, size, size)
        center = np.array([rng.normal(-5, 6), rng.normal(0, 6), rng.normal(0, 6)])
        origin = tuple(float(np.float32(c - (n - 1) / 2 * s)) for c, n, s in zip(center, shape, spacing))
        return shape, spacing, origin  # type: ignore[return-value]

    def anatomy(self, rng: np.random.Generator, canvas: Canvas) -> Any:
        """Sample the anatomy and draw its tissues into ``canvas``."""
        anat = sample_anatomy(rng, (canvas.axes[0][0], canvas.axes[0][-1]))
        draw_anatomy(canvas, anat, rng)
        return anat

    def lookalikes(self, rng: np.random.Generator, anat: Any, kinds: list[str]) -> list[Calcification]:
        """The look-alike calcifications of ``kinds``."""
        return sample_lookalikes(rng, anat, kinds)

    def extra_meta(self, anat: Any, lookalikes: list[Calcification]) -> dict[str, Any]:
        """Variant-specific entries of ``PhantomCase.meta`` (none for the default)."""
        return {}

    def lookalike_id(self, kind: str) -> int:
        """The (negative) calcium-layer id of a look-alike kind (see :data:`LOOKALIKES`)."""
        return LOOKALIKES[kind]

    def background(self, rng: np.random.Generator, canvas: Canvas, clean: np.ndarray, acq: Acquisition,
                   anat: Any, lookalikes: list[Calcification]) -> np.ndarray:
        """The scanned image without coronary calcium: kernel, noise through the kernel, HU offset."""
        noise = rng.standard_normal(canvas.shape, dtype=np.float32)
        noise *= np.float32(acq.noise_sd / _noise_gain(acq))
        noise += clean
        base = blur(noise, acq)
        base += np.float32(acq.hu_offset)
        return base
