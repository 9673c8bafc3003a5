"""Deprecated: ``fastrnn train`` is :mod:`fastrnn.cli.train`, its tasks :mod:`fastrnn.tasks`."""

from __future__ import annotations

import warnings

from .cli.train import add_arguments, run  # noqa: F401
from .tasks import TASKS  # noqa: F401

warnings.warn(
    "fastrnn.examples_cli is deprecated; use fastrnn.cli.train (the command) and "
    "fastrnn.tasks (the example tasks)",
    DeprecationWarning,
    stacklevel=2,
)
