"""Deprecated: the benchmark library is the package :mod:`fastrnn.bench` now."""

from __future__ import annotations

import warnings

from .bench import *  # noqa: F403
from .bench import __all__  # noqa: F401

warnings.warn(
    "fastrnn._benchlib is deprecated; use fastrnn.bench (cases, runners, report)",
    DeprecationWarning,
    stacklevel=2,
)
