"""A package's lazy public face (PEP 562), as scikit-image's ``lazy_loader.attach``: names load on first use."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence

__all__ = ["attach"]


def attach(package: str, homes: Mapping[str, Sequence[str]], namespace: dict,
           ) -> tuple[Callable[[str], Any], Callable[[], list], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` (its ``__name__``) serving each name from its home.

    ``homes`` maps a module, relative to the package (``"io"`` or ``"._data"``,
    ``"..phantom.insertion"``), to the names it serves. ``namespace``: the
    package's ``globals()``, where a loaded name is kept so it loads once.
    """
    home = {name: (module if module.startswith(".") else "." + module)
            for module, names in homes.items() for name in names}
    public = sorted(home)

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__, public
