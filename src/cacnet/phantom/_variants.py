"""The phantom generator variants: each name and its steps class (private).

The one place that knows every variant (as nibabel's ``imageclasses.py``
knows every image class): :func:`cacnet.phantom.generate_phantom` looks a
variant up here, so the generator imports no variant module, no variant
module imports the generator or another variant, and the base steps
(:class:`cacnet.phantom._base.PhantomSteps`, the default variant) import no
subclass. A new variant is a :class:`PhantomSteps` subclass with its own
``name`` in its own module, added to :data:`VARIANT_STEPS`.
"""

from __future__ import annotations

from ._base import PhantomSteps
from ._varied import VariedSteps

__all__ = ["VARIANT_STEPS", "VARIANTS", "variant_steps"]

#: Generator variants (see :func:`cacnet.phantom.generate_phantom`): name -> steps class.
VARIANT_STEPS: dict[str, type[PhantomSteps]] = {steps.name: steps for steps in (PhantomSteps, VariedSteps)}
#: Their names; the first is the default.
VARIANTS = tuple(VARIANT_STEPS)


def variant_steps(variant: str) -> PhantomSteps:
    """The steps of the variant named ``variant`` (a new instance).

    Raises
    ------
    ValueError
        When no variant has that name.
    """
    if variant not in VARIANT_STEPS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}.")
    return VARIANT_STEPS[variant]()
