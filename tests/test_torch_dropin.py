"""fastrnn.torch: the drop-in nn.RNN / nn.LSTM / nn.GRU against PyTorch's own modules.

Parity in the style of PyTorch's RNN tests: the same weights in ``torch.nn.*`` and in the
drop-in, every combination of cell x bias x bidirectional x batch_first x num_layers x
packing x given/None states; outputs, final states, the input's and states' gradients and
every parameter's ``.grad`` to 1e-10 relative in float64 (1e-5 in float32).
"""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402

MODES = {  # id -> (torch class, drop-in class, constructor keywords)
    "rnn-tanh": (torch.nn.RNN, ft.RNN, {}),
    "rnn-relu": (torch.nn.RNN, ft.RNN, {"nonlinearity": "relu"}),
    "lstm": (torch.nn.LSTM, ft.LSTM, {}),
    "gru": (torch.nn.GRU, ft.GRU, {}),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
D, H = 3, 4
LENGTHS = [7, 5, 5, 2, 1, 1]  # sorted, as in PyTorch's packed-sequence tests
UNSORTED = [5, 1, 7, 2, 5, 1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _on_torch_threads():
    """The kernels' workers on PyTorch's OpenMP team, as import fastrnn.torch sets them
    (the suite's conftest takes the team back after collection)."""
    ft._share_torch_threads()
    yield
    if "cpp" in fastrnn.available_backends():
        from fastrnn.backends import cpp_backend

        cpp_backend.set_thread_team(None)


def _pair(mode: str, dtype=torch.float64, seed: int = 0, input_size: int = D, hidden=H, **kw):
    """A torch.nn module and a drop-in with the same weights."""
    ref_cls, cls, extra = MODES[mode]
    torch.manual_seed(seed)
    ref = ref_cls(input_size, hidden, dtype=dtype, **extra, **kw)
    mod = cls(input_size, hidden, dtype=dtype, **extra, **kw)
    mod.load_state_dict(ref.state_dict())
    return ref, mod


def _close(got, want, tol: float, what: str) -> None:
    """``got`` equals ``want`` to ``tol`` relative to the largest entry of ``want``."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    scale = max(float(want.detach().abs().max()) if want.numel() else 0.0, 1.0)
    err = float((got - want).detach().abs().max()) if want.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def _states(out):
    """The final states as a tuple (h_n,) or (h_n, c_n)."""
    return out[1] if isinstance(out[1], tuple) else (out[1],)


def _run(module, x, hx, packing: str | None, batch_first: bool, weights):
    """Run ``module`` and backpropagate a fixed random weighting of every output; return the
    outputs, the gradients of x and hx, and the parameters' .grad."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_(True) for h in hx)
    inp = x
    if packing is not None:
        lengths = torch.tensor(LENGTHS if packing == "sorted" else UNSORTED)
        inp = pack_padded_sequence(
            x, lengths, batch_first=batch_first, enforce_sorted=packing == "sorted"
        )
    state = hx if hx is None or len(hx) == 2 else hx[0]
    out = module(inp, state)
    y = out[0].data if packing is not None else out[0]
    states = _states(out)
    loss = (y * weights[0][: y.numel()].view_as(y)).sum()
    for s, w in zip(states, weights[1:], strict=False):
        loss = loss + (s * w[: s.numel()].view_as(s)).sum()
    loss.backward()
    grads = {"x": x.grad}
    if hx is not None:
        grads.update({f"hx{i}": h.grad for i, h in enumerate(hx)})
    grads.update({n: p.grad for n, p in module.named_parameters()})
    return (y, *states), grads


PACKINGS = {"padded": None, "sorted": "sorted", "unsorted": "unsorted"}
COMBOS = list(itertools.product([True, False], [False, True], [False, True]))  # bias, bf, hx


SHAPES = [  # num_layers, bidirectional, dtype: float32 on the largest configuration only
    pytest.param(n, bi, torch.float64, id=f"{n}-{'bi' if bi else 'uni'}-f64")
    for n in (1, 2)
    for bi in (False, True)
] + [pytest.param(2, True, torch.float32, id="2-bi-f32")]


@pytest.mark.parametrize("packing", list(PACKINGS.values()), ids=list(PACKINGS))
@pytest.mark.parametrize(("num_layers", "bidirectional", "dtype"), SHAPES)
@pytest.mark.parametrize("mode", list(MODES))
def test_parity_with_torch_nn(mode, num_layers, bidirectional, packing, dtype):
    """Every combination of bias x batch_first x given/None states, inside the test."""
    T, B = max(LENGTHS), len(LENGTHS)
    dirs = 2 if bidirectional else 1
    for bias, batch_first, given in COMBOS:
        what = f"bias={bias} batch_first={batch_first} hx={'given' if given else None}"
        kw = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
        ref, mod = _pair(mode, dtype, batch_first=batch_first, **kw)
        gen = torch.Generator().manual_seed(1)
        shape = (B, T, D) if batch_first else (T, B, D)
        x = torch.randn(shape, generator=gen, dtype=dtype)
        n_states = 2 if mode == "lstm" else 1
        hx = None
        if given:
            hx = tuple(
                torch.randn(num_layers * dirs, B, H, generator=gen, dtype=dtype)
                for _ in range(n_states)
            )
        weights = [torch.randn(T * B * H * dirs, generator=gen, dtype=dtype) for _ in range(3)]
        want_out, want_grads = _run(ref, x, hx, packing, batch_first, weights)
        got_out, got_grads = _run(mod, x, hx, packing, batch_first, weights)
        for i, (g, w) in enumerate(zip(got_out, want_out, strict=True)):
            _close(g, w, TOL[dtype], f"{what}: output {i}")
        assert got_grads.keys() == want_grads.keys()
        for name, w in want_grads.items():
            _close(got_grads[name], w, TOL[dtype], f"{what}: gradient of {name}")


@pytest.mark.parametrize("mode", list(MODES))
def test_packed_output_keeps_the_packing(mode):
    ref, mod = _pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(7, 6, D, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(UNSORTED), enforce_sorted=False)
    out, _ = mod(packed)
    want, _ = ref(packed)
    assert isinstance(out, PackedSequence)
    for got_t, want_t in zip(out[1:], want[1:], strict=True):
        assert torch.equal(got_t, want_t)


BACKEND_CASES = [("lstm", b) for b in fastrnn.available_backends()]
BACKEND_CASES += [("rnn-relu", "numpy"), ("gru", "numpy")]  # numba compiles a cell for seconds


@pytest.mark.parametrize(("mode", "backend"), BACKEND_CASES)
def test_every_backend(mode, backend):
    """The drop-in runs on the configured backend, each to the same result."""
    x = torch.randn(max(LENGTHS), len(LENGTHS), D, dtype=torch.float64)
    ref, mod = _pair(mode, num_layers=2, bidirectional=True)
    weights = [torch.randn(x.shape[0] * x.shape[1] * 2 * H, dtype=torch.float64) for _ in range(3)]
    want_out, want_grads = _run(ref, x, None, "unsorted", False, weights)
    with fastrnn.use_backend(backend):
        got_out, got_grads = _run(mod, x, None, "unsorted", False, weights)
    for g, w in zip(got_out, want_out, strict=True):
        _close(g, w, 1e-10, f"{backend} output")
    for name, w in want_grads.items():
        _close(got_grads[name], w, 1e-10, f"{backend} gradient of {name}")


@pytest.mark.parametrize("mode", list(MODES))
def test_unbatched_input(mode):
    ref, mod = _pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(6, D, dtype=torch.float64)
    h = torch.randn(4, H, dtype=torch.float64)
    hx = (h, torch.randn(4, H, dtype=torch.float64)) if mode == "lstm" else h
    for state in (None, hx):
        got, want = mod(x, state), ref(x, state)
        _close(got[0], want[0], 1e-10, "output")
        for g, w in zip(_states(got), _states(want), strict=True):
            _close(g, w, 1e-10, "state")


@pytest.mark.parametrize("mode", ["rnn-tanh", "lstm", "gru"])
def test_gradcheck(mode):
    """torch.autograd.gradcheck in float64 through every parameter, the input and the
    states, packed and bidirectional with two layers (small: the numerical Jacobian runs
    two forwards per entry)."""
    _, mod = _pair(mode, input_size=2, hidden=2, num_layers=2, bidirectional=True)
    names = [n for n, _ in mod.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in mod.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h = [torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)]
    if mode == "lstm":
        h.append(torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True))
    lengths = torch.tensor([2, 3])

    def f(x, *rest):
        states, ps = rest[: len(h)], rest[len(h) :]
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, hn = torch.func.functional_call(
            mod,
            dict(zip(names, ps, strict=True)),
            (packed, tuple(states) if mode == "lstm" else states[0]),
        )
        return (out.data, *(hn if isinstance(hn, tuple) else (hn,)))

    assert torch.autograd.gradcheck(f, (x, *h, *params))


@pytest.mark.parametrize("mode", list(MODES))
def test_dropout(mode):
    """p=0 equals the module without dropout, p=1 zeroes the input of the next layer, the
    masks are PyTorch's for the same seed, and eval mode turns dropout off."""
    x = torch.randn(6, 3, D, dtype=torch.float64)
    _, plain = _pair(mode, num_layers=2)
    for p in (0.0, 0.5, 1.0):
        ref, mod = _pair(mode, num_layers=2, dropout=p)
        torch.manual_seed(7)
        want = ref(x)
        torch.manual_seed(7)
        got = mod(x)
        _close(got[0], want[0], 1e-10, f"training output, p={p}")
        packed = pack_padded_sequence(x, torch.tensor([4, 6, 1]), enforce_sorted=False)
        torch.manual_seed(8)
        want = ref(packed)
        torch.manual_seed(8)
        got_packed = mod(packed)
        _close(got_packed[0].data, want[0].data, 1e-10, f"packed training output, p={p}")
        if p == 0.0:
            _close(got[0], plain(x)[0], 1e-10, "p=0 against no dropout")
        if p == 1.0:  # the second layer sees zeros: its output is that of zero input
            _, second = _pair(mode, input_size=H)
            second.load_state_dict(
                {k.replace("_l1", "_l0"): v for k, v in mod.state_dict().items() if "_l1" in k}
            )
            _close(got[0], second(torch.zeros(6, 3, H, dtype=torch.float64))[0], 1e-10, "p=1")
        mod.eval()
        _close(mod(x)[0], plain(x)[0], 1e-10, f"eval mode, p={p}")


def test_state_dict_round_trips_both_ways():
    for mode in MODES:
        ref, mod = _pair(mode, num_layers=2, bidirectional=True, bias=False)
        assert list(mod.state_dict()) == list(ref.state_dict())
        other_ref, other = _pair(mode, seed=3, num_layers=2, bidirectional=True, bias=False)
        other_ref.load_state_dict(mod.state_dict())
        other.load_state_dict(ref.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(other.state_dict()[k], v)
            assert torch.equal(other_ref.state_dict()[k], v)


def test_module_identity_pickling_and_repr():
    ref, mod = _pair("lstm", num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    assert isinstance(mod, torch.nn.LSTM) and isinstance(mod, torch.nn.RNNBase)
    assert repr(mod) == repr(ref)
    back = pickle.loads(pickle.dumps(mod))
    assert type(back) is ft.LSTM
    x = torch.randn(3, 5, D, dtype=torch.float64)
    mod.eval(), back.eval()
    assert torch.equal(back(x)[0], mod(x)[0])


def test_convert_trains_like_the_unconverted_model():
    """An embedding, an LSTM and a linear head: 20 Adam steps in float64 give the same
    losses after convert, with the optimizer built before the call."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 5)
            self.rnn = torch.nn.LSTM(5, 8, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(8, 11)

        def forward(self, tokens):
            return self.head(self.rnn(self.emb(tokens))[0])

    def train(convert: bool) -> list[float]:
        torch.manual_seed(0)
        model = Model().double()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        if convert:
            before = list(model.parameters())
            assert ft.convert(model) is model
            assert type(model.rnn) is ft.LSTM
            assert all(a is b for a, b in zip(model.parameters(), before, strict=True))
        tokens = torch.randint(0, 11, (4, 9))
        losses = []
        for _ in range(20):
            opt.zero_grad()
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 11), tokens[:, 1:].flatten()
            )
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    want, got = train(False), train(True)
    assert want[-1] < want[0]
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) <= 1e-10 * abs(w)


def test_convert_leaves_subclasses_and_other_modules_alone():
    class Mine(torch.nn.GRU):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), Mine(2, 2), torch.nn.RNN(2, 2))
    ft.convert(model)
    assert [type(m) for m in model] == [torch.nn.Linear, Mine, ft.RNN]
    assert type(ft.convert(torch.nn.GRU(2, 3))) is ft.GRU
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ft.convert("model")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_opcheck(cell, packed, reverse):
    """torch.library.opcheck of fastrnn::layer_forward (and through its autograd formula,
    fastrnn::layer_backward): schema, fake tensors, autograd registration, AOT dispatch."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    gen = torch.Generator().manual_seed(2)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    x = rand(9, D) if packed else rand(4, 3, D)
    c0 = rand(3, H) if cell == "lstm" else None
    args = (x, rand(3, H), c0, rand(G * H, D), rand(G * H, H), rand(G * H), rand(G * H))
    args = (*args, batch_sizes, cell, "tanh", reverse, True)
    torch.library.opcheck(torch.ops.fastrnn.layer_forward.default, args)


def test_proj_size_falls_back_with_one_warning():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(D, H, proj_size=2, dtype=torch.float64)
    mod = ft.convert(torch.nn.LSTM(D, H, proj_size=2, dtype=torch.float64))
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, D, dtype=torch.float64)
    ft._warned.clear()
    with pytest.warns(RuntimeWarning, match="proj_size"):
        got = mod(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod(x)  # once only
    assert torch.equal(got[0], ref(x)[0])


@pytest.mark.parametrize(
    ("to", "match"), [(torch.bfloat16, "float32 and float64 only"), ("meta", "CPU only")]
)
def test_other_dtypes_and_devices_fall_back(to, match):
    mod = ft.GRU(D, H).to(to)
    x = torch.randn(5, 2, D).to(to)
    ft._warned.clear()
    with pytest.warns(RuntimeWarning, match=match) as record:
        out = mod(x)[0]
    assert record[0].filename == __file__  # points at the caller
    assert out.dtype == x.dtype and out.device == x.device and out.shape == (5, 2, H)


def test_double_backward_is_a_clear_error():
    _, mod = _pair("gru")
    x = torch.randn(4, 2, D, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(mod(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_bad_input_raises_as_torch_does():
    ref, mod = _pair("lstm")
    cases = [
        (torch.randn(2, 3, 4, 5, dtype=torch.float64), None),  # 4-D
        (torch.randn(4, 2, D + 1, dtype=torch.float64), None),  # wrong input size
        (torch.randn(4, 2, D), None),  # float32 input into float64 weights
        (torch.randn(4, 2, D, dtype=torch.float64), (torch.zeros(1, 3, H), torch.zeros(1, 3, H))),
    ]
    for x, hx in cases:
        hx = None if hx is None else tuple(h.double() for h in hx)
        with pytest.raises(Exception) as want:
            ref(x, hx)
        with pytest.raises(want.type, match=None) as got:
            mod(x, hx)
        assert str(got.value) == str(want.value)


def test_no_grad_saves_nothing_and_matches():
    ref, mod = _pair("lstm", num_layers=2)
    x = torch.randn(5, 2, D, dtype=torch.float64)
    with torch.no_grad():
        got, want = mod(x), ref(x)
    _close(got[0], want[0], 1e-10, "output")
    assert got[0].grad_fn is None


def test_torch_compile_runs_the_drop_in():
    """Dynamo skips RNN modules (a graph break, the module runs eagerly) unless
    allow_rnn=True; then the padded path is one graph with the operators as opaque nodes."""
    ref, mod = _pair("gru", num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, D, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(ref(x)[0].sum(), x)
    for allow_rnn in (False, True):
        torch._dynamo.reset()
        with torch._dynamo.config.patch(allow_rnn=allow_rnn):
            compiled = torch.compile(mod, backend="aot_eager", fullgraph=allow_rnn)
            out = compiled(x)[0]
            (gx,) = torch.autograd.grad(out.sum(), x)
        _close(out, ref(x)[0], 1e-10, f"compiled output, allow_rnn={allow_rnn}")
        _close(gx, want, 1e-10, f"compiled gradient, allow_rnn={allow_rnn}")
    torch._dynamo.reset()


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_import_fastrnn_never_imports_torch():
    code = (
        "import sys, fastrnn, fastrnn.layers, fastrnn.models\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr


def test_fastrnn_torch_without_torch_says_how_to_install():
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "try:\n    import fastrnn.torch\nexcept ImportError as e:\n    print(e)\n"
        "else:\n    raise SystemExit('no ImportError')\n"
    )
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    assert "pip install torch" in done.stdout
