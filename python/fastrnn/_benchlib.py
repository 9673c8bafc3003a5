"""The workloads that ``fastrnn bench`` and the pytest-benchmark suite time, in one place.

A *case* is one layer's input (cell, D, H, B, T, dtype) plus a linear softmax head with
``K`` classes and a target at every step. A *runner* turns a case into a zero-argument
function for one backend (``numpy``, ``numba``, ``cpp`` or the peer ``torch``) and one
of three workloads:

- ``forward``: the layer's forward pass (what backward needs is saved, as in training);
- ``fwdbwd``: forward and full BPTT of the layer, a random gradient entering at every step;
- ``train``: one training step end to end: layer forward, linear head, softmax
  cross-entropy averaged over all T*B steps, and the backward pass of all three.

FLOP count (multiply-adds count 2; element-wise work is not counted), per step and
sequence, with ``G`` gates (rnn 1, gru 3, lstm 4)::

    layer forward   F = 2*G*H*(D + H)
    forward         T*B*F
    fwdbwd          T*B*3*F                    (backward = 2 GEMMs per forward GEMM)
    train           T*B*3*(F + 2*H*K)          (the head: 2*H*K forward)

The train step is written as a user writes it: ``fastrnn.RNN/LSTM/GRU`` and the head
``fastrnn.Linear`` with its fused softmax cross-entropy
(:meth:`fastrnn.Linear.softmax_cross_entropy`; layer and head both run on the backend
being timed), and ``torch.nn.RNN/LSTM/GRU`` + ``torch.nn.Linear`` +
``torch.nn.functional.cross_entropy`` for torch.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import fastrnn
from fastrnn.functional import CELLS, GATES, ForwardResult

WHATS: tuple[str, ...] = ("forward", "fwdbwd", "train")
# fastrnn's short parameter names -> PyTorch's (and fastrnn.layers') names
_TORCH_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
PEERS: tuple[str, ...] = ("torch",)
CLASSES = 32  # the head's output size K by default

FLOP_FORMULA = (
    "FLOPs per step and sequence, multiply-add = 2, G gates (rnn 1, gru 3, lstm 4), "
    "K head classes: layer forward F = 2*G*H*(D+H); forward = T*B*F; "
    "forward+backward = T*B*3*F; train step = T*B*3*(F + 2*H*K)"
)


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: input size D, hidden size H, batch B, length T, and the cells
    it is defined for."""

    name: str
    D: int
    H: int
    B: int
    T: int
    cells: tuple[str, ...] = CELLS

    @property
    def dims(self) -> str:
        return f"D={self.D} H={self.H} B={self.B} T={self.T}"


# The named shapes of the C++ and Numba backend issues (S4 is defined for rnn).
NAMED_SHAPES: dict[str, Shape] = {
    "S1": Shape("S1", 32, 64, 1, 10_000),
    "S2": Shape("S2", 32, 64, 16, 10_000),
    "S3": Shape("S3", 128, 256, 32, 2_000),
    "S4": Shape("S4", 256, 1024, 64, 200, cells=("rnn",)),
}
# --quick: the same shapes, shorter (S1, S2 a tenth; S3 a twentieth, S4 a tenth), so that
# `fastrnn bench --quick` stays under a minute on 2 busy cores, numba's first compile included.
QUICK_SHAPES: dict[str, Shape] = {
    "S1/10": Shape("S1/10", 32, 64, 1, 1_000),
    "S2/10": Shape("S2/10", 32, 64, 16, 1_000),
    "S3/20": Shape("S3/20", 128, 256, 32, 100),
    "S4/10": Shape("S4/10", 256, 1024, 64, 20, cells=("rnn",)),
}


def flops(cell: str, D: int, H: int, B: int, T: int, what: str, classes: int = CLASSES) -> float:
    """The FLOP count of :data:`FLOP_FORMULA`."""
    layer = 2.0 * GATES[cell] * H * (D + H)
    if what == "forward":
        return T * B * layer
    if what == "fwdbwd":
        return T * B * 3 * layer
    if what == "train":
        return T * B * 3 * (layer + 2.0 * H * classes)
    raise ValueError(f"what must be one of {WHATS}, got {what!r}")


def estimate_bytes(
    cell: str,
    D: int,
    H: int,
    B: int,
    T: int,
    dtype: Any,
    what: str,
    classes: int = CLASSES,
    backend: str = "numpy",
) -> int:
    """An upper estimate of the peak memory of one run, to refuse runs that cannot fit.

    Per step and sequence: x and dx (2D), hs and dhs (2H), what backward saves (lstm
    and gru at most (G+1)H, rnn nothing beyond hs), the input projection and the
    pre-activation gradients (2GH), and for the train step the logits and their gradient
    (2K); a quarter more for temporaries. torch's autograd keeps a few small tensors and
    graph nodes for every time step: 8 KiB more per step (measured: about 7 KB per step
    at B=1, H=64 with torch 2.13).
    """
    G = GATES[cell]
    values = 2 * D + 2 * H + (0 if G == 1 else (G + 1) * H) + 2 * G * H
    if what == "train":
        values += 2 * classes
    total = 1.25 * values * T * B * np.dtype(dtype).itemsize
    if backend == "torch":
        total += 8192 * T
    return int(total)


def held_bytes(res: ForwardResult) -> int:
    """Bytes held for the backward pass: ``res.hs`` and the backend's ``res.saved``.

    Arrays are counted by the buffer they live in (a view counts its whole base, once);
    an object in ``saved`` that is not an array but has ``nbytes`` counts that.
    """
    seen: dict[int, int] = {}

    def visit(obj: Any) -> None:
        if obj is None:
            return
        if isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            seen[id(base)] = base.nbytes
        elif isinstance(obj, (tuple, list)):
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            for item in obj.values():
                visit(item)
        elif hasattr(obj, "nbytes"):
            seen[id(obj)] = int(obj.nbytes)
        elif hasattr(obj, "__dict__"):
            visit(vars(obj))

    visit(res.hs)
    visit(res.saved)
    return sum(seen.values())


@dataclass
class Case:
    """One layer's input, a linear head (V: (K, H), c: (K,)) and the targets/gradients."""

    cell: str
    dtype: np.dtype
    params: dict[str, np.ndarray]
    V: np.ndarray
    c: np.ndarray
    x: np.ndarray  # (T, B, D)
    targets: np.ndarray  # (T, B) class indices
    dhs: np.ndarray  # (T, B, H), for "fwdbwd"

    @property
    def T(self) -> int:
        return self.x.shape[0]


def make_case(
    cell: str, D: int, H: int, B: int, T: int, dtype: Any, classes: int = CLASSES, seed: int = 0
) -> Case:
    """A reproducible random :class:`Case`."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    params = fastrnn.init_params(cell, D, H, seed=seed, dtype=dt)
    k = 1 / math.sqrt(H)
    return Case(
        cell=cell,
        dtype=dt,
        params=params,
        V=rng.uniform(-k, k, (classes, H)).astype(dt),
        c=rng.uniform(-k, k, classes).astype(dt),
        x=rng.standard_normal((T, B, D), dtype=np.float32).astype(dt, copy=False),
        targets=rng.integers(0, classes, (T, B)),
        dhs=rng.standard_normal((T, B, H), dtype=np.float32).astype(dt, copy=False),
    )


class Runner:
    """A zero-argument workload :meth:`run` for one backend, and what to read off it."""

    name: str
    what: str  # one of WHATS: run() calls the subclass's _forward, _fwdbwd or _train

    def run(self) -> Any:
        """One run of the workload. (A method, not a bound method stored on the instance:
        that would be a reference cycle, and a runner and the results its layers keep
        would then wait for the garbage collector instead of going when dropped.)"""
        return getattr(self, f"_{self.what}")()

    def outputs(self, raw: Any) -> dict[str, np.ndarray]:
        """The arrays to compare against the reference."""
        raise NotImplementedError

    def held_bytes(self, raw: Any) -> int | None:
        """Bytes kept for the backward pass by the run that returned ``raw``."""
        raise NotImplementedError


class FastrnnRunner(Runner):
    """A fastrnn backend. The kernels through :func:`fastrnn.forward`/:func:`fastrnn.backward`;
    the train step the way a user writes it: ``fastrnn.RNN/LSTM/GRU`` + ``fastrnn.Linear``
    and its fused :meth:`~fastrnn.Linear.softmax_cross_entropy`, on this backend."""

    def __init__(self, case: Case, backend: str, what: str) -> None:
        if what not in WHATS:
            raise ValueError(f"what must be one of {WHATS}, got {what!r}")
        self.name, self.case, self.what = backend, case, what
        self._held: int | None = None
        if what == "train":
            from fastrnn import layers

            D, H = case.x.shape[2], case.params["W_hh"].shape[1]
            layer = {"rnn": layers.RNN, "lstm": layers.LSTM, "gru": layers.GRU}[case.cell]
            self.layer = layer(D, H, dtype=case.dtype)
            self.layer.load_state_dict({f"{_TORCH_NAMES[k]}_l0": v for k, v in case.params.items()})
            self.head = layers.Linear(H, case.V.shape[0], dtype=case.dtype)
            self.head.load_state_dict({"weight": case.V, "bias": case.c})

    def _forward(self) -> ForwardResult:
        c = self.case
        return fastrnn.forward(c.cell, c.params, c.x, backend=self.name)

    def _fwdbwd(self) -> tuple[ForwardResult, Any]:
        c = self.case
        res = fastrnn.forward(c.cell, c.params, c.x, backend=self.name)
        return res, fastrnn.backward(res, dhs=c.dhs)

    def _train(self) -> tuple[np.ndarray, float, np.ndarray]:
        with fastrnn.use_backend(self.name):
            out, _ = self.layer(self.case.x)
            loss, dh = self.head.softmax_cross_entropy(out, self.case.targets)
            dx, _ = self.layer.backward(dh)
        return out, loss, dx

    def outputs(self, raw: Any) -> dict[str, np.ndarray]:
        if self.what == "forward":
            return {"hs": raw.hs, "h_n": raw.h_n}
        if self.what == "fwdbwd":
            res, g = raw
            return {"hs": res.hs, "dx": g.dx, **{f"d{k}": v for k, v in g.params.items()}}
        out, loss, dx = raw
        grads = {f"d{k}": self.layer.grads[f"{_TORCH_NAMES[k]}_l0"] for k in self.case.params}
        head = {"dV": self.head.grads["weight"], "dc": self.head.grads["bias"]}
        return {"hs": out, "loss": np.asarray(loss), "dx": dx, **grads, **head}

    def held_bytes(self, raw: Any) -> int:
        if self.what != "train":
            return held_bytes(raw if self.what == "forward" else raw[0])
        if self._held is None:  # the layer's forward is this same call of fastrnn.forward
            self._held = held_bytes(self._forward())
        return self._held


class TorchRunner(Runner):
    """The PyTorch peer: torch.nn.RNN/LSTM/GRU + torch.nn.Linear + cross_entropy on the
    CPU, with the case's weights, autograd on (also for ``forward``, so that it saves
    what backward needs as fastrnn does) and the input's gradient computed too."""

    def __init__(self, case: Case, what: str) -> None:
        import torch
        import torch.nn.functional as F

        if what not in WHATS:
            raise ValueError(f"what must be one of {WHATS}, got {what!r}")
        self.name, self.case, self.what = "torch", case, what
        self._torch, self._F = torch, F
        tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
        dt = tdt[case.dtype]
        D, H, K = case.x.shape[2], case.params["W_hh"].shape[1], case.V.shape[0]
        module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell]
        self.rnn = module(D, H).to(dt)
        self.head = torch.nn.Linear(H, K).to(dt)
        with torch.no_grad():
            for ours, theirs in _TORCH_NAMES.items():
                getattr(self.rnn, f"{theirs}_l0").copy_(torch.from_numpy(case.params[ours]))
            self.head.weight.copy_(torch.from_numpy(case.V))
            self.head.bias.copy_(torch.from_numpy(case.c))
        self.x = torch.from_numpy(case.x.copy()).requires_grad_(True)
        self.targets = torch.from_numpy(case.targets.reshape(-1))
        self.dhs = torch.from_numpy(case.dhs)
        self._params = [*self.rnn.parameters(), *self.head.parameters()]
        self._held: int | None = None

    def _zero(self) -> None:
        for p in self._params:
            p.grad = None
        self.x.grad = None

    def _forward(self) -> Any:
        return self.rnn(self.x)

    def _fwdbwd(self) -> Any:
        self._zero()
        out, h = self.rnn(self.x)
        out.backward(self.dhs)
        return out, h

    def _train(self) -> Any:
        self._zero()
        out, h = self.rnn(self.x)
        logits = self.head(out)
        loss = self._F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets)
        loss.backward()
        return out, h, loss

    def outputs(self, raw: Any) -> dict[str, np.ndarray]:
        out, h = raw[0], raw[1]
        h = h[0] if isinstance(h, tuple) else h  # lstm: (h_n, c_n)
        res = {"hs": out.detach().numpy(), "h_n": h[0].detach().numpy()}
        if self.what != "forward":
            res["dx"] = self.x.grad.numpy()
            for ours, theirs in _TORCH_NAMES.items():
                res[f"d{ours}"] = getattr(self.rnn, f"{theirs}_l0").grad.numpy()
        if self.what == "train":
            res["loss"] = raw[2].detach().numpy()
            res["dV"] = self.head.weight.grad.numpy()
            res["dc"] = self.head.bias.grad.numpy()
        return res

    def held_bytes(self, raw: Any) -> int | None:
        """The output plus the tensors autograd saved in the layer's forward (not counting
        the input and the weights), measured once with saved-tensor hooks."""
        if self._held is None:
            self._held = self._measure_held()
        return self._held

    def _measure_held(self) -> int | None:
        torch = self._torch
        exclude = {p.untyped_storage().data_ptr() for p in self.rnn.parameters()}
        exclude.add(self.x.untyped_storage().data_ptr())
        seen: dict[int, int] = {}

        def pack(t: Any) -> Any:
            try:
                storage = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # e.g. opaque mkldnn tensors
                seen[id(t)] = t.numel() * t.element_size()
                return t
            if storage.data_ptr() not in exclude:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _ = self.rnn(self.x)
        storage = out.untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return sum(seen.values())


def torch_unavailable_reason() -> str | None:
    """Why the torch peer cannot run (``None`` if it can). Imports torch (slow) once."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc}); pip install 'fastrnn[torch]'"
    return None


def make_runner(case: Case, backend: str, what: str) -> Runner:
    """The runner of ``what`` on ``backend`` (a fastrnn backend or ``"torch"``)."""
    if backend == "torch":
        return TorchRunner(case, what)
    return FastrnnRunner(case, backend, what)


@contextlib.contextmanager
def thread_limit(n: int) -> Iterator[None]:
    """Run with ``n`` threads everywhere: fastrnn's setting (numba, cpp), numpy's BLAS
    (threadpoolctl) and torch (if imported); the previous values are restored on exit."""
    from threadpoolctl import threadpool_limits

    previous = fastrnn.get_num_threads()
    torch = sys.modules.get("torch")
    torch_previous = torch.get_num_threads() if torch is not None else None
    fastrnn.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        fastrnn.set_num_threads(previous)
        if torch is not None:
            torch.set_num_threads(torch_previous)


def gemm_gflops(dtype: Any, n: int = 1024, threads: int = 1, repeat: int = 5) -> float:
    """GFLOP/s of numpy's ``(n, n) @ (n, n)`` (sgemm or dgemm; 2*n^3 FLOPs) with ``threads``
    BLAS threads: the best of ``repeat`` runs after one warm-up (a peak, so that other
    work on the machine lowers it as little as possible)."""
    import time

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    best = math.inf
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        for _ in range(repeat):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


# --- checking a backend against the reference -----------------------------------------

CHECK_SHAPE = {"D": 5, "H": 6, "B": 3, "T": 7}
CHECK_CLASSES = 4
CHECK_TOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-9}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max(max |want|, 1)."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    if not want.size:
        return 0.0
    scale = max(float(np.max(np.abs(want))), 1.0)
    return float(np.max(np.abs(got - want))) / scale


def check_against_reference(backend: str, cell: str, dtype: Any, what: str) -> str | None:
    """Run ``what`` on a small case with ``backend`` and with the NumPy reference in
    float64; ``None`` if every output agrees within the dtype's tolerance, else a message
    naming the worst output and its relative error."""
    dt = np.dtype(dtype)
    case = make_case(cell, dtype=dt, classes=CHECK_CLASSES, seed=3, **CHECK_SHAPE)
    case64 = make_case(cell, dtype=np.float64, classes=CHECK_CLASSES, seed=3, **CHECK_SHAPE)
    # the same numbers in both dtypes: the float64 reference sees the rounded inputs
    for name in ("V", "c", "x", "dhs"):
        setattr(case64, name, getattr(case, name).astype(np.float64))
    case64.params = {k: v.astype(np.float64) for k, v in case.params.items()}
    ref = FastrnnRunner(case64, "numpy", what)
    want = ref.outputs(ref.run())
    runner = make_runner(case, backend, what)
    got = runner.outputs(runner.run())
    errors = {k: relative_error(got[k], want[k]) for k in want}
    worst = max(errors, key=errors.__getitem__)
    if errors[worst] <= CHECK_TOL[dt]:
        return None
    return (
        f"{backend} {cell} {dt} {what}: {worst} differs from the reference by "
        f"{errors[worst]:.2e} (relative; tolerance {CHECK_TOL[dt]:.0e})"
    )
