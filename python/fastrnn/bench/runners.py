"""The runners: a case (:mod:`fastrnn.bench.cases`) as a zero-argument workload for one
backend (``numpy``, ``numba``, ``cpp`` or the peer ``torch``), the check of each backend
against the NumPy reference, the thread limit every run happens under, and the GEMM
throughput the results are compared with.

The ``train`` step is written as a user writes it: ``fastrnn.RNN/LSTM/GRU`` and the head
``fastrnn.Linear`` with its softmax cross-entropy fused into the layer's backward
(:meth:`fastrnn.LSTM.backward_head`, as the per-step models run it: the head's dL/dh block
by block of steps, never for all steps; layer and head both run on the backend being
timed), and ``torch.nn.RNN/LSTM/GRU`` + ``torch.nn.Linear`` +
``torch.nn.functional.cross_entropy`` for torch.

The drop-in row ``fastrnn.torch`` is the torch peer with ``torch.nn.RNN/LSTM/GRU``
replaced by ``fastrnn.torch.RNN/LSTM/GRU`` (same model, same weights, autograd through
fastrnn's kernels on the configured backend): every workload the torch peer runs, and the
``packed`` step (a ``PackedSequence`` input), which only these two rows run.

The ``charlm`` step is one step of :class:`fastrnn.CharLanguageModel` exactly as its
``fit`` runs it (:func:`fastrnn.training.train` on one batch: the model's
``loss_and_grads``, the finite check, clipping by global norm, Adam), against the same
model in PyTorch: ``nn.LSTM``/``nn.GRU`` (batch first) + ``nn.Linear`` +
``nn.CrossEntropyLoss`` + ``torch.optim.Adam`` + ``clip_grad_norm_``, with the same
weights, learning rate (the model's default 0.01) and clipping norm (its default 5).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

import fastrnn
from fastrnn.functional import ForwardResult

from .cases import PACKED_BACKENDS, Case, check_what, make_case

PEERS: tuple[str, ...] = ("torch", "fastrnn.torch")
# fastrnn's short parameter names -> PyTorch's (and fastrnn.layers') names
_TORCH_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
LM_LR = 0.01  # CharLanguageModel's default learning rate
LM_CLIP = 5.0  # and its default clip_norm


def held_bytes(res: ForwardResult) -> int:
    """Bytes held for the backward pass: ``res.hs`` and the backend's ``res.saved``; after
    an inference forward (``training=False``, whose ``backward`` is refused) ``res.saved``
    only, which should be nothing (``hs`` is then the output, not kept for backward).

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

    if res.checkpoint is not None:  # the checkpoints, and a segment's buffer in backward
        T, B, H = res.hs.shape
        plan = fastrnn.checkpoint_plan(res.cell, T, B, H, res.hs.dtype, res.checkpoint)
        return res.hs.nbytes + plan.held_bytes
    if res.training:
        visit(res.hs)
    visit(res.saved)
    return sum(seen.values())


class Runner:
    """A zero-argument workload :meth:`run` for one backend, and what to read off it."""

    name: str
    what: str  # one of WHATS: run() calls the subclass's _forward, _inference, ... _charlm

    def run(self) -> Any:
        """One run of the workload. (A method, not a bound method stored on the instance:
        that would be a reference cycle, and a runner and the results its layers keep
        would then wait for the garbage collector instead of going when dropped.)"""
        return getattr(self, f"_{self.what}")()

    def outputs(self, raw: Any) -> dict[str, np.ndarray]:
        """The arrays that the run that returned ``raw`` computed."""
        raise NotImplementedError

    def check_outputs(self) -> dict[str, np.ndarray]:
        """The arrays to compare against the reference: those of one run, except for
        ``charlm``, whose run moves the weights with Adam (a first Adam step is about
        ``lr * sign(gradient)`` whatever the gradient's size, so it would hide a wrong
        gradient): there, the loss and the gradients at the case's weights."""
        if self.what == "charlm":
            return self._charlm_gradients()
        return self.outputs(self.run())

    def _charlm_gradients(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def held_bytes(self, raw: Any) -> int | None:
        """Bytes kept for the backward pass by the run that returned ``raw``."""
        raise NotImplementedError


def _model_weights(case: Case) -> dict[str, np.ndarray]:
    """The case's weights under the names of a model's ``parameters()`` (layer ``rnn``,
    head ``head``: PyTorch's names inside each)."""
    layer = {f"rnn.{_TORCH_NAMES[k]}_l0": v for k, v in case.params.items()}
    return {**layer, "head.weight": case.V, "head.bias": case.c}


class FastrnnRunner(Runner):
    """A fastrnn backend. The kernels through :func:`fastrnn.forward`/:func:`fastrnn.backward`;
    the train step the way a user writes it: ``fastrnn.RNN/LSTM/GRU`` + ``fastrnn.Linear``,
    the head fused into the layer's backward (``backward_head``), on this backend; the
    charlm step through :class:`fastrnn.CharLanguageModel` and :func:`fastrnn.training.train`
    as ``fit`` runs it."""

    def __init__(self, case: Case, backend: str, what: str) -> None:
        self.name, self.case, self.what = backend, case, check_what(what)
        self._held: int | None = None
        D, H, K = case.sizes
        if what == "train":
            from fastrnn import layers

            layer = {"rnn": layers.RNN, "lstm": layers.LSTM, "gru": layers.GRU}[case.cell]
            self.layer = layer(D, H, dtype=case.dtype, checkpoint=case.checkpoint)
            self.layer.load_state_dict({f"{_TORCH_NAMES[k]}_l0": v for k, v in case.params.items()})
            self.head = layers.Linear(H, K, dtype=case.dtype)
            self.head.load_state_dict({"weight": case.V, "bias": case.c})
        elif what == "charlm":
            self._build_model(D, H)

    def _build_model(self, V: int, H: int) -> None:
        """A :class:`~fastrnn.CharLanguageModel` with the case's weights, its Adam, and the
        batch (the windows' character ids, next-character targets, lengths) as ``fit``
        holds them."""
        from fastrnn.datasets import CharCorpus
        from fastrnn.models import CharLanguageModel
        from fastrnn.optim import Adam

        case = self.case
        T, B = case.targets.shape
        vocab = tuple(chr(0x100 + i) for i in range(V))  # any V distinct characters
        self.model = CharLanguageModel(
            H,
            seq_len=T,
            cell=case.cell,
            epochs=1,
            batch_size=B,
            lr=LM_LR,
            clip_norm=LM_CLIP,
            dtype=case.dtype,
            seed=0,
            progress=False,
        )
        # fit on one window builds the model's parts; then the case's weights replace them
        text = "".join(vocab[i % V] for i in range(T + 1))
        with fastrnn.use_backend(self.name):
            self.model.fit(CharCorpus(text=text, vocab=vocab))
        params = self.model.parameters()
        for name, value in _model_weights(case).items():
            params[name][...] = value
        self.optimizer = Adam(params, lr=LM_LR)
        assert case.ids is not None, "a charlm case has ids (make_case)"
        self.batch = (
            np.ascontiguousarray(case.ids.T),  # samples first, as in fit
            np.ascontiguousarray(case.targets.T),
            np.full(B, T, dtype=np.int64),
        )

    def _forward(self) -> ForwardResult:
        c = self.case
        return fastrnn.forward(c.cell, c.params, c.x, backend=self.name, checkpoint=c.checkpoint)

    def _inference(self) -> ForwardResult:
        c = self.case
        return fastrnn.forward(c.cell, c.params, c.x, backend=self.name, training=False)

    def _fwdbwd(self) -> tuple[ForwardResult, Any]:
        c = self.case
        res = fastrnn.forward(c.cell, c.params, c.x, backend=self.name, checkpoint=c.checkpoint)
        return res, fastrnn.backward(res, dhs=c.dhs)

    def _train(self) -> tuple[np.ndarray, float, np.ndarray]:
        with fastrnn.use_backend(self.name):
            out, _ = self.layer(self.case.x)
            loss, dx, _ = self.layer.backward_head(self.head, self.case.targets)
        return out, loss, dx

    def _charlm(self) -> Any:
        """One step of ``fit``'s loop on the batch: the model's loss and gradients, the
        finite check, clipping, Adam. Returns the :class:`~fastrnn.training.History`."""
        from fastrnn import training

        B = len(self.batch[0])
        with fastrnn.use_backend(self.name):
            return training.train(
                self.model,
                self.batch,
                epochs=1,
                batch_size=B,
                optimizer=self.optimizer,
                clip_norm=LM_CLIP,
                shuffle=True,
                seed=0,
                progress=False,
            )

    def _charlm_gradients(self) -> dict[str, np.ndarray]:
        with fastrnn.use_backend(self.name):
            loss, grads = self.model.loss_and_grads(self.batch)
        return {"loss": np.asarray(loss), **{f"d{k}": g.copy() for k, g in grads.items()}}

    def outputs(self, raw: Any) -> dict[str, np.ndarray]:
        if self.what == "charlm":
            return {"loss": np.asarray(raw["step_loss"][-1])}
        if self.what in ("forward", "inference"):
            return {"hs": raw.hs, "h_n": raw.h_n}
        if self.what == "fwdbwd":
            res, g = raw
            return {"hs": res.hs, "dx": g.dx, **{f"d{k}": v for k, v in g.params.items()}}
        out, loss, dx = raw
        grads = {f"d{k}": self.layer.grads[f"{_TORCH_NAMES[k]}_l0"] for k in self.case.params}
        head = {"dV": self.head.grads["weight"], "dc": self.head.grads["bias"]}
        return {"hs": out, "loss": np.asarray(loss), "dx": dx, **grads, **head}

    def held_bytes(self, raw: Any) -> int:
        if self.what in ("forward", "inference", "fwdbwd"):
            return held_bytes(raw[0] if self.what == "fwdbwd" else raw)
        if self._held is None:  # the layer's forward holds what this fastrnn.forward holds
            self._held = held_bytes(self._forward())
        return self._held


class TorchRunner(Runner):
    """The PyTorch peer: torch.nn.RNN/LSTM/GRU + torch.nn.Linear + cross_entropy on the
    CPU, with the case's weights, autograd on (also for ``forward``, so that it saves
    what backward needs as fastrnn does; ``inference``: the same forward under
    ``torch.inference_mode()``) and the input's gradient computed too; for
    ``charlm`` the model as a PyTorch user writes it (batch first, one-hot input without a
    gradient, ``nn.CrossEntropyLoss``, ``torch.optim.Adam``, ``clip_grad_norm_``); for
    ``packed`` the ``train`` step on ``pack_padded_sequence(x, lengths,
    enforce_sorted=False)``, the head on the packed output's data.

    ``name="fastrnn.torch"``: the same model with fastrnn's drop-in modules
    (:mod:`fastrnn.torch`) in place of ``torch.nn``'s."""

    def __init__(self, case: Case, what: str, name: str = "torch") -> None:
        import torch
        import torch.nn.functional as F

        if name not in PACKED_BACKENDS:
            raise ValueError(f"name must be one of {PACKED_BACKENDS}, got {name!r}")
        self.name, self.case, self.what = name, case, check_what(what)
        self._torch, self._F = torch, F
        tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
        dt = tdt[case.dtype]
        D, H, K = case.sizes
        if name == "torch":
            modules = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
        else:
            import fastrnn.torch as ft

            modules = {"rnn": ft.RNN, "lstm": ft.LSTM, "gru": ft.GRU}
        module = modules[case.cell]
        lm = what == "charlm"
        self.rnn = module(D, H, batch_first=lm).to(dt)
        self.head = torch.nn.Linear(H, K).to(dt)
        with torch.no_grad():
            for name, value in _model_weights(case).items():
                self._parameter(name).copy_(torch.from_numpy(value))
        self._params = [*self.rnn.parameters(), *self.head.parameters()]
        self._held: int | None = None
        self.lengths = None  # packed: the case's lengths as a tensor
        if lm:
            self.x = torch.from_numpy(np.ascontiguousarray(case.x.transpose(1, 0, 2)))
            self.targets = torch.from_numpy(np.ascontiguousarray(case.targets.T))
            order = torch.Generator().manual_seed(0)  # fit takes a shuffled batch, too
            self.order = torch.randperm(len(self.x), generator=order)
            self.loss_fn = torch.nn.CrossEntropyLoss()
            self.optimizer = torch.optim.Adam(self._params, lr=LM_LR)
            return
        self.x = torch.from_numpy(case.x.copy()).requires_grad_(True)
        self.targets = torch.from_numpy(case.targets.reshape(-1))
        self.dhs = torch.from_numpy(case.dhs)
        if what == "packed":
            from torch.nn.utils.rnn import pack_padded_sequence

            assert case.lengths is not None, "a packed case has lengths (make_case)"
            self.lengths = torch.from_numpy(case.lengths)
            self._pack = pack_padded_sequence
            targets = torch.from_numpy(case.targets)
            self.targets = pack_padded_sequence(targets, self.lengths, enforce_sorted=False).data

    def _parameter(self, name: str) -> Any:
        """The parameter a :func:`_model_weights` name stands for."""
        part, _, attr = name.partition(".")
        return getattr(self.rnn if part == "rnn" else self.head, attr)

    def _zero(self) -> None:
        for p in self._params:
            p.grad = None
        self.x.grad = None

    def _input(self) -> Any:
        """The layer's input: ``x``, or for ``packed`` ``x`` packed with the case's lengths
        (packing is part of the timed step, as in a training loop)."""
        if self.lengths is None:
            return self.x
        return self._pack(self.x, self.lengths, enforce_sorted=False)

    def _forward(self) -> Any:
        return self.rnn(self._input())

    def _inference(self) -> Any:
        with self._torch.inference_mode():
            return self.rnn(self._input())

    def _fwdbwd(self) -> Any:
        self._zero()
        out, h = self.rnn(self.x)
        out.backward(self.dhs)
        return out, h

    def _train(self) -> Any:
        self._zero()
        out, h = self.rnn(self._input())
        if self.lengths is not None:  # the packed output's rows, in the targets' order
            out = out.data
        logits = self.head(out)
        loss = self._F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets)
        loss.backward()
        return out, h, loss

    _packed = _train

    def _lm_loss(self) -> Any:
        x, targets = self.x[self.order], self.targets[self.order]
        out, _ = self.rnn(x)
        logits = self.head(out)
        return self.loss_fn(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def _charlm(self) -> Any:
        self.optimizer.zero_grad()
        loss = self._lm_loss()
        loss.backward()
        self._torch.nn.utils.clip_grad_norm_(self._params, LM_CLIP)
        self.optimizer.step()
        return loss

    def _charlm_gradients(self) -> dict[str, np.ndarray]:
        self.optimizer.zero_grad()
        loss = self._lm_loss()
        loss.backward()
        grads = {f"d{k}": self._parameter(k).grad.numpy() for k in _model_weights(self.case)}
        return {"loss": loss.detach().numpy(), **grads}

    def outputs(self, raw: Any) -> dict[str, np.ndarray]:
        if self.what == "charlm":
            return {"loss": raw.detach().numpy()}
        out, h = raw[0], raw[1]
        out = getattr(out, "data", out)  # a PackedSequence: its rows
        h = h[0] if isinstance(h, tuple) else h  # lstm: (h_n, c_n)
        res = {"hs": out.detach().numpy(), "h_n": h[0].detach().numpy()}
        if self.what not in ("forward", "inference"):
            res["dx"] = self.x.grad.numpy()
            for ours, theirs in _TORCH_NAMES.items():
                res[f"d{ours}"] = getattr(self.rnn, f"{theirs}_l0").grad.numpy()
        if self.what in ("train", "packed"):
            res["loss"] = raw[2].detach().numpy()
            res["dV"] = self.head.weight.grad.numpy()
            res["dc"] = self.head.bias.grad.numpy()
        return res

    def held_bytes(self, raw: Any) -> int | None:
        """The output plus the tensors autograd saved in the layer's forward (not counting
        the input and the weights), measured once with saved-tensor hooks; ``inference``:
        what autograd saved under ``inference_mode`` (the output is not kept for backward)."""
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
            out, _ = self._inference() if self.what == "inference" else self._forward()
        if self.what == "inference":
            return sum(seen.values())
        storage = getattr(out, "data", out).untyped_storage()
        seen.setdefault(storage.data_ptr(), storage.nbytes())
        return sum(seen.values())


def torch_unavailable_reason(peer: str = "torch") -> str | None:
    """Why the peer ``peer`` (``"torch"`` or the drop-in ``"fastrnn.torch"``) cannot run
    (``None`` if it can). Imports torch (slow) once."""
    try:
        if peer == "torch":
            import torch  # noqa: F401
        else:
            import fastrnn.torch  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc}); pip install 'fastrnn[torch]'"
    return None


def make_runner(case: Case, backend: str, what: str) -> Runner:
    """The runner of ``what`` on ``backend`` (a fastrnn backend, ``"torch"`` or the drop-in
    ``"fastrnn.torch"``)."""
    if backend in PACKED_BACKENDS:
        return TorchRunner(case, what, backend)
    if what == "packed":
        raise ValueError(f"the packed workload runs on {PACKED_BACKENDS} only, not {backend!r}")
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
    float64 (``inference``: against the reference's training forward; ``packed``: against
    ``torch.nn`` in float64); ``None`` if every
    output agrees within the dtype's tolerance, else a message naming the worst output and
    its relative error."""
    dt = np.dtype(dtype)
    D, H, B, T = (CHECK_SHAPE[d] for d in "DHBT")
    case = make_case(cell, D, H, B, T, dt, CHECK_CLASSES, 3, what=what)
    case64 = make_case(cell, D, H, B, T, np.float64, CHECK_CLASSES, 3, what=what)
    # the same numbers in both dtypes: the float64 reference sees the rounded inputs
    for name in ("V", "c", "x", "dhs"):
        setattr(case64, name, getattr(case, name).astype(np.float64))
    case64.params = {k: v.astype(np.float64) for k, v in case.params.items()}
    case64.lengths = case.lengths
    if what == "packed":  # the reference of the packed step: torch.nn's, in float64
        want = TorchRunner(case64, what).check_outputs()
    else:
        reference = "forward" if what == "inference" else what
        want = FastrnnRunner(case64, "numpy", reference).check_outputs()
    got = make_runner(case, backend, what).check_outputs()
    errors = {k: relative_error(got[k], want[k]) for k in want}
    worst = max(errors, key=errors.__getitem__)
    if errors[worst] <= CHECK_TOL[dt]:
        return None
    return (
        f"{backend} {cell} {dt} {what}: {worst} differs from the reference by "
        f"{errors[worst]:.2e} (relative; tolerance {CHECK_TOL[dt]:.0e})"
    )
