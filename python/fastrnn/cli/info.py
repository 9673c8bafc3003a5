"""``fastrnn info``: the version, the backends (available, unavailable and why, the
active one, what ``"auto"`` resolves to and why), the thread setting, the C++ backend's
output cache, the BLAS the numba kernels call and how the extension was built."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastrnn info``."""
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Print what ``fastrnn info`` reports; 0."""
    import fastrnn
    from fastrnn import _config

    available = fastrnn.available_backends()
    unavailable = fastrnn.unavailable_backends()
    build = fastrnn.build_info()
    auto, auto_why = _config.explain_auto()
    info: dict[str, object] = {
        "version": fastrnn.__version__,
        "available_backends": available,
        "unavailable_backends": unavailable,
        "active_backend": fastrnn.get_backend(),
        "auto_backend": auto,
        "auto_rule": auto_why,
        "num_threads": fastrnn.get_num_threads(),
        "build_info": build,
    }
    if "numba" in available:
        from fastrnn.backends import numba_backend

        info["numba_blas"] = numba_backend.blas_name()
    caches = fastrnn.output_cache_info()
    info["output_cache"] = caches
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastrnn {info['version']}")
    print(f"active backend:     {info['active_backend']}")
    print(f"auto resolves to:   {auto}: {auto_why}")
    print(f"available backends: {', '.join(available)}")
    for name, why in unavailable.items():
        print(f"unavailable:        {name} ({why})")
    print(f"threads:            {info['num_threads']}")
    if "threads" in build:  # where the C++ kernels' workers run, in this process
        print(
            f"kernel workers:     {build['threads']} (under `import fastrnn.torch`: "
            "PyTorch's OpenMP threads)"
        )
    if "numba" in available:
        print(f"numba BLAS:         {info['numba_blas']} (FASTRNN_BLAS=scipy: SciPy's)")
    for name, cache in caches.items():
        print(
            f"output cache:       {name}: keeps up to {cache['limit'] / 2**20:.0f} MiB of "
            f"large outputs between calls, holds {cache['held'] / 2**20:.0f} MiB "
            "(fastrnn.set_output_cache)"
        )
    print("build_info:")
    for key, value in build.items():
        print(f"  {key}: {value}")
    return 0
