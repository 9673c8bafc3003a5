"""Smoke test of an installed fastrnn (a wheel or an sdist install), run outside the source tree.

CI (.ci/run) installs the repaired wheel and the sdist into fresh virtual environments
and runs this file there; cibuildwheel runs it as its test command on every wheel it
builds. It checks, and fails loudly (exit code 1, the reason on stderr) otherwise:

1. ``import fastrnn`` comes from the installed package, not from a source checkout;
2. every backend loads (numpy, numba, cpp) and agrees with the NumPy reference on a
   small forward and backward, for every cell;
3. every instruction-set level of the C++ kernels that the wheel carries and this CPU
   runs imports and gives the same result;
4. one short training of a model lowers its loss (cpp backend);
5. the ``fastrnn info`` command (the installed console script) runs and names the
   backends.

Usage: ``python tools/smoke_test.py [--source-tree PATH]``; with ``--source-tree`` the
test also fails if fastrnn was imported from under that directory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

BACKENDS = ("numpy", "numba", "cpp")
CELLS = ("rnn", "lstm", "gru")


def check_location(source_tree: Path | None) -> str:
    import fastrnn

    where = Path(fastrnn.__file__).resolve().parent
    if source_tree is not None and where.is_relative_to(source_tree.resolve()):
        raise AssertionError(
            f"fastrnn was imported from {where}, inside the source tree {source_tree}: "
            "the smoke test must run against the installed package"
        )
    return f"fastrnn {fastrnn.__version__} from {where}"


def check_backends() -> str:
    import fastrnn

    missing = fastrnn.unavailable_backends()
    if missing:
        raise AssertionError(f"backends that do not load: {missing}")
    if set(fastrnn.available_backends()) != set(BACKENDS):
        raise AssertionError(
            f"available backends {fastrnn.available_backends()}, expected {list(BACKENDS)}"
        )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    for cell in CELLS:
        params = fastrnn.init_params(cell, 4, 6, seed=1, dtype=np.float32)
        ref = fastrnn.forward(cell, params, x, backend="numpy")
        ref_g = fastrnn.backward(ref, dhs=np.ones_like(ref.hs))
        for backend in BACKENDS[1:]:
            res = fastrnn.forward(cell, params, x, backend=backend)
            g = fastrnn.backward(res, dhs=np.ones_like(res.hs))
            np.testing.assert_allclose(res.hs, ref.hs, rtol=1e-4, atol=1e-5, err_msg=backend)
            np.testing.assert_allclose(g.dx, ref_g.dx, rtol=1e-4, atol=1e-5, err_msg=backend)
    return f"backends {BACKENDS} agree on {CELLS}"


def check_isa_levels() -> str:
    """Each level the wheel carries and this CPU runs: import it and run a forward."""
    import fastrnn
    from fastrnn import _core

    info = fastrnn.build_info()
    built = [str(level) for level in info["kernel_isas_built"]]  # type: ignore[attr-defined]
    if "generic" not in built:
        raise AssertionError(f"the generic kernels are missing; built: {built}")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2, 3))
    params = fastrnn.init_params("lstm", 3, 5, seed=3, dtype=np.float64)
    ref = fastrnn.forward("lstm", params, x, backend="numpy").hs
    ran = []
    for level in built:
        if not _core.cpu_supports(level):
            continue
        module = importlib.import_module(f"fastrnn._kernels_{level}")
        if module.ISA != level:
            raise AssertionError(f"fastrnn._kernels_{level}.ISA is {module.ISA!r}")
        hs = module.forward(
            "lstm", "tanh", 0.01, params["W_ih"], params["W_hh"], params["b_ih"],
            params["b_hh"], np.ascontiguousarray(x), np.zeros((2, 5)), np.zeros((2, 5)),
        )[0]  # fmt: skip
        np.testing.assert_allclose(hs, ref, rtol=1e-10, atol=1e-12, err_msg=level)
        ran.append(level)
    return f"kernel levels built {built}, ran {ran}, in use {_core.kernel_isa()}"


def check_training() -> str:
    import fastrnn

    rng = np.random.default_rng(4)
    X = rng.standard_normal((64, 8, 2)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    model = fastrnn.SequenceClassifier(8, cell="gru", epochs=15, batch_size=16, lr=0.02, seed=0)
    with fastrnn.use_backend("cpp"):
        model.fit(X, y)
    losses = list(model.history_["loss"])
    if not (np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0]):
        raise AssertionError(f"training did not lower the loss: {losses}")
    return f"trained: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def check_info_command() -> str:
    exe = shutil.which("fastrnn", path=str(Path(sys.executable).parent))
    if exe is None:
        raise AssertionError(f"no `fastrnn` console script beside {sys.executable}")
    proc = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"`fastrnn info` exited {proc.returncode}: {proc.stderr}")
    info = json.loads(proc.stdout)
    if info["unavailable_backends"]:
        raise AssertionError(f"`fastrnn info`: unavailable {info['unavailable_backends']}")
    return f"`fastrnn info`: available {info['available_backends']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source-tree", type=Path, default=None)
    args = parser.parse_args(argv)
    checks = [
        lambda: check_location(args.source_tree),
        check_backends,
        check_isa_levels,
        check_training,
        check_info_command,
    ]
    for check in checks:
        try:
            print("smoke:", check(), flush=True)
        except Exception as exc:  # report which check failed, then fail
            print(f"smoke test FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
