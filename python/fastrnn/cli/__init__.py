"""The ``fastrnn`` command line: ``info``, ``bench``, ``train``, ``gradflow``.

One module per command in this package (``fastrnn.cli.info``, ``.bench``, ``.train``,
``.gradflow``), each with ``add_arguments(parser)`` and ``run(args) -> int``; a command's
module is imported only when that command runs, so that ``fastrnn info`` stays fast and
needs nothing optional. The library modules hold no argparse.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import fastrnn

# name -> help. The module fastrnn.cli.<name> provides add_arguments(parser) and run(args).
SUBCOMMANDS: dict[str, str] = {
    "info": "backends, the active one, and how _core was built",
    "bench": "benchmark every backend (and PyTorch if installed)",
    "train": "train one of the course's example tasks",
    "gradflow": "plot gradient norm against lag for each cell",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the module of ``command`` (if given) is imported."""
    parser = argparse.ArgumentParser(
        prog="fastrnn", description=__doc__.splitlines()[0].replace("``", "")
    )
    parser.add_argument("--version", action="version", version=f"fastrnn {fastrnn.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name != command:
            continue
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:
            p.set_defaults(func=lambda a, n=name, e=exc: _missing(n, e))
            continue
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _missing(name: str, exc: ImportError) -> int:
    print(f"fastrnn {name}: not available in this installation ({exc})", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)
