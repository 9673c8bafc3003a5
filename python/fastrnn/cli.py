"""The ``fastrnn`` command line: ``info``, ``bench``, ``train``, ``gradflow``.

Each subcommand lives in its own module and is imported only when it runs, so that
``fastrnn info`` stays fast and needs nothing optional.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

# name -> (module, help). Each module provides add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("fastrnn.bench", "benchmark every backend (and PyTorch if installed)"),
    "train": ("fastrnn.examples_cli", "train one of the course's example tasks"),
    "gradflow": ("fastrnn.diagnostics", "plot gradient norm against lag for each cell"),
}


def _info(args: argparse.Namespace) -> int:
    import fastrnn

    info = {
        "version": fastrnn.__version__,
        "available_backends": fastrnn.available_backends(),
        "unavailable_backends": fastrnn.unavailable_backends(),
        "active_backend": fastrnn.get_backend(),
        "num_threads": fastrnn.get_num_threads(),
        "build_info": fastrnn.build_info(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastrnn {info['version']}")
    print(f"active backend:     {info['active_backend']}")
    print(f"available backends: {', '.join(info['available_backends'])}")
    for name, why in info["unavailable_backends"].items():
        print(f"unavailable:        {name} ({why})")
    print(f"threads:            {info['num_threads']}")
    print("build_info:")
    for key, value in info["build_info"].items():
        print(f"  {key}: {value}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the module of ``command`` (if given) is imported."""
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="backends, the active one, and how _core was built")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name != command:
            continue
        try:
            module = importlib.import_module(module_name)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)
