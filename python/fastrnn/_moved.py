"""Names that moved to another module keep working, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module`` that finds each name of ``moved`` in the
    module ``moved[name]`` (imported on first use) and warns that it moved there."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {moved[name]}.{name}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
