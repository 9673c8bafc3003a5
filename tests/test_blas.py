"""The C++ kernels' hand-off to SciPy's OpenBLAS (src/cpp/fastrnn/blas.hpp).

Shapes that send products to BLAS by the rules of blas.hpp and shapes that keep them on
the in-house kernels, float32 and float64, sizes that are no whole number of SIMD packets,
lengths (ragged sequences), 1 and 2 threads (2 threads gather each worker's batch chunk),
at every instruction-set level this CPU runs: against the NumPy reference, and the same
without any BLAS handed over (the fallback).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import fastrnn
from conftest import make_case

if "cpp" not in fastrnn.available_backends():
    pytest.skip(
        f"backend 'cpp' unavailable: {fastrnn.unavailable_backends().get('cpp')}",
        allow_module_level=True,
    )

from test_cpp_backend import assert_close_to, raw_forward_backward, reference_forward_backward

from fastrnn import _core
from fastrnn.backends import cpp_backend

BLAS = cpp_backend.blas_functions()
# the two OpenBLAS builds the kernels can call: NumPy's (ILP64) and SciPy's (LP64)
SOURCES = {s: cpp_backend.blas_functions(s) for s in ("numpy", "scipy")}
NO_BLAS = (0, 0, 0, 0, "none: withdrawn by the test")
# sums over up to 512 terms (H) per product in float32
RTOL = {np.float32: 2e-4, np.float64: 1e-10}
LEVELS = [
    level
    for level in ("generic", "avx2", "avx512")
    if level in _core.build_info()["kernel_isas_built"] and _core.cpu_supports(level)
]

# (cell, T, B, D, H, whether products go to BLAS, at 1 and 2 threads): by blas.hpp's rules
SHAPES = {
    # lstm: input projection (GH=512, D=129, 2112 columns), the backward's wide blocks
    # (dW_hh, dW_ih, dx); the per-step product (512 x 128 x 33: 2^21) in-house (33 columns)
    "lstm-blocks": ("lstm", 64, 33, 129, 128, True),
    # rnn: the per-step products too (512 x 512 x 65 columns per worker at 2 threads)
    "rnn-steps": ("rnn", 8, 130, 70, 512, True),
    # gru, odd sizes, every product in-house
    "gru-small": ("gru", 9, 5, 7, 33, False),
    # rnn, one step: the per-step products alone (the step's block products are at most
    # 256 x 256 x 160, below the block thresholds but at generic, and D = 32 keeps the
    # projection, dW_ih and dx in-house), 256 x 256 x 80 or 160 columns per worker (2^22.3
    # to 2^23.3): BLAS from 2^21 at generic; at avx2 from 64 columns and 2^21 beside BLAS
    # kernels that run twice as wide, else from 256 columns and 2^24, as at avx512
    "rnn-steps-mid": ("rnn", 1, 160, 32, 256, "mid steps"),
    # rnn: the projection and the block products (128 x 128 x 256 or 512 columns: 2^22 to
    # 2^23) from 2^21 multiply-adds at generic (avx2 2^24, avx512 2^25); the per-step
    # products (at most 128 x 128 x 8 = 2^17) in-house
    "rnn-blocks-generic": ("rnn", 64, 8, 128, 128, "generic"),
}


WIDTH = {"generic": 0, "avx2": 1, "avx512": 2}


def takes_blas_at(level: str, rule: bool | str, blas_isa: str) -> bool:
    """Whether a shape's products go to BLAS at a level, with a BLAS whose kernels run as
    wide as level blas_isa (blas.hpp's use_blas, step_uses_blas and blas_takes_all)."""
    if level == "generic" and blas_isa != "generic":
        return True  # every product
    if rule == "mid steps":
        return level == "generic" or WIDTH[blas_isa] > WIDTH[level]
    if rule == "generic":
        return level == "generic"
    return bool(rule)


@pytest.fixture
def kernels_at(request):
    """The kernel module of a level, with BLAS handed over; handed over again afterwards
    (a test may withdraw it)."""
    modules = []

    def load(level, blas=BLAS):
        module = importlib.import_module(f"fastrnn._kernels_{level}")
        module.set_blas(*blas)
        modules.append(module)
        return module

    yield load
    for module in modules:
        module.set_blas(*BLAS)


@pytest.mark.skipif(BLAS[0] == 0, reason=f"no BLAS to hand over: {BLAS[4]}")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("source", list(SOURCES))
def test_blas_and_in_house_products_match_the_reference(
    kernels_at, source, level, shape, dtype, threads
):
    if not SOURCES[source][0]:
        pytest.skip(f"no {source} BLAS: {SOURCES[source][4]}")
    cell, T, B, D, H, rule = SHAPES[shape]
    case = make_case(cell, T=T, B=B, D=D, H=H, lengths=True, h0=True, seed=5, dtype=dtype)
    want = reference_forward_backward(cell, case)
    found = SOURCES[source]
    # the BLAS as found, and as if its kernels ran as wide as SSE2 or AVX-512 (the rules)
    for blas_isa in dict.fromkeys([found[6], "generic", "avx512"]):
        kernels = kernels_at(level, (*found[:6], blas_isa))
        assert kernels.blas() == found[4]
        assert kernels.blas_width() == blas_isa
        assert kernels.blas_takes_all() == (level == "generic" and blas_isa != "generic")
        before = kernels.blas_calls()
        got = raw_forward_backward(kernels, cell, case, threads)
        assert (kernels.blas_calls() > before) == takes_blas_at(level, rule, blas_isa), blas_isa
        assert_close_to(got, want, dtype, RTOL[dtype])
    kernels.set_blas(*NO_BLAS)  # the fallback: every product in-house
    before = kernels.blas_calls()
    assert_close_to(raw_forward_backward(kernels, cell, case, threads), want, dtype, RTOL[dtype])
    assert kernels.blas_calls() == before
    assert kernels.blas().startswith("none")


def step_takes_blas(level: str, blas_isa: str, GH: int, H: int, nb: int) -> bool:
    """blas.hpp's step_uses_blas restated: whether a worker's per-step product of GH x H
    weights and nb columns goes to BLAS at a level, beside BLAS kernels as wide as blas_isa."""
    if level == "generic" and blas_isa != "generic":  # BLAS takes all ...
        return blas_isa == "avx512" or nb >= 4  # ... but 1 to 3 columns beside AVX2 kernels
    if WIDTH[blas_isa] > WIDTH[level]:
        return nb >= 64 and GH * H * nb >= 2**21
    if level == "generic":
        return GH * H * nb >= 2**21
    return nb >= 256 and GH * H * nb >= 2**24


@pytest.mark.skipif(BLAS[0] == 0, reason=f"no BLAS to hand over: {BLAS[4]}")
@pytest.mark.parametrize("level", LEVELS)
def test_the_per_step_product_rule(kernels_at, level):
    """Which per-step products go to BLAS, by level and BLAS width, on both sides of each
    threshold (columns, multiply-adds, the generic module's 4 columns beside AVX2 kernels)."""
    sizes = [(64, 64, n) for n in (1, 2, 3, 4, 16, 512)]
    sizes += [(1024, 256, n) for n in (8, 63, 64, 255, 256)] + [(4096, 1024, 256)]
    for blas_isa in ("generic", "avx2", "avx512"):
        kernels = kernels_at(level, (*BLAS[:6], blas_isa))
        got = {s: kernels.step_uses_blas(*s) for s in sizes}
        assert got == {s: step_takes_blas(level, blas_isa, *s) for s in sizes}, blas_isa
    kernels.set_blas(*NO_BLAS)
    assert not any(kernels.step_uses_blas(*s) for s in sizes)


@pytest.mark.skipif(BLAS[0] == 0, reason=f"no BLAS to hand over: {BLAS[4]}")
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_generic_kernels_keep_narrow_step_products_beside_avx2_blas(kernels_at, cell):
    """The generic module beside AVX2 BLAS kernels sends every product to BLAS but the
    per-step products of 1 to 3 columns: with 4 sequences the forward's and the backward's
    step products add a BLAS call each a step, with 3 none; both match the reference."""
    if "generic" not in LEVELS:
        pytest.skip("the generic kernels are not built here")
    kernels = kernels_at("generic", (*BLAS[:6], "avx2"))
    T, calls = 64, {}
    for B in (3, 4):
        case = make_case(cell, T=T, B=B, D=9, H=20, lengths=True, h0=True, seed=B)
        before = kernels.blas_calls()
        got = raw_forward_backward(kernels, cell, case, 1)
        calls[B] = kernels.blas_calls() - before
        want = reference_forward_backward(cell, case)
        assert_close_to(got, want, np.float64, RTOL[np.float64])
    assert calls[3] > 0  # the projection and the block products
    assert calls[4] - calls[3] == 2 * T, calls


@pytest.mark.skipif(BLAS[0] == 0, reason=f"no BLAS to hand over: {BLAS[4]}")
def test_openblas_thread_count_is_restored_after_a_kernel():
    from threadpoolctl import threadpool_info

    def handed_over_threads():  # the OpenBLAS whose functions the kernels call
        path = BLAS[4].rsplit(", ", 1)[-1]
        lib = next(i for i in threadpool_info() if i["filepath"].endswith(path))
        return lib["num_threads"]

    before = handed_over_threads()
    case = make_case("rnn", T=8, B=130, D=70, H=512, lengths=True, h0=True, dtype=np.float32)
    calls = cpp_backend._kernels.blas_calls()
    raw_forward_backward(cpp_backend._kernels, "rnn", case, 2)
    assert cpp_backend._kernels.blas_calls() > calls
    assert handed_over_threads() == before


def test_numpys_openblas_is_handed_over_by_default_scipys_on_request(monkeypatch):
    """NumPy's own OpenBLAS (ILP64) measured faster here than SciPy's (S4 rnn 1.3x);
    FASTRNN_BLAS=scipy picks SciPy's, and either falls back to the other."""
    if SOURCES["numpy"][0]:
        assert cpp_backend.blas_functions()[4:6] == (SOURCES["numpy"][4], True)
        assert "via NumPy, ILP64" in SOURCES["numpy"][4]
    if SOURCES["scipy"][0]:
        assert SOURCES["scipy"][5] is False and "via SciPy" in SOURCES["scipy"][4]
        monkeypatch.setenv("FASTRNN_BLAS", "scipy")
        assert cpp_backend.blas_functions()[4] == SOURCES["scipy"][4]


def test_build_info_names_the_blas():
    info = fastrnn.build_info()
    assert info["blas"] == cpp_backend._kernels.blas()
    every = cpp_backend._kernels.blas_takes_all()
    assert str(info["blas_products"]).startswith("every" if every else "large")
    assert f"as wide as {BLAS[6]}" in str(info["blas_products"])
    if BLAS[0]:
        assert "openblas" in str(info["blas"])
    else:
        assert str(info["blas"]).startswith("none")


def test_the_blas_kernels_level_comes_from_openblas_core_name():
    """The level handed over with the BLAS (which decides blas_takes_all and the per-step
    thresholds) is read off the OpenBLAS core that threadpoolctl reports, unknown cores
    counting as generic, and AVX-512 kernels as avx2 where the CPU splits 512-bit vectors."""
    from threadpoolctl import threadpool_info

    from fastrnn._sysinfo import blas_width_isa, openblas_kernel_isa

    assert openblas_kernel_isa("SkylakeX") == "avx512"
    assert openblas_kernel_isa("Haswell") == "avx2"
    assert openblas_kernel_isa("Zen") == "avx2"
    for other in ("Sandybridge", "Nehalem", "Prescott", "neoversen1", None):
        assert openblas_kernel_isa(other) == "generic"
    for source, found in SOURCES.items():
        if found[0]:
            core = next(
                i["architecture"]
                for i in threadpool_info()
                if i["filepath"].endswith(found[4].rsplit(", ", 1)[-1])
            )
            assert found[6] == blas_width_isa(core), source


@pytest.mark.parametrize(
    ("vendor", "family", "flags", "splits"),
    [
        ("AuthenticAMD", "25", "sse2 avx2 avx512f avx512bw", True),  # Zen 4
        ("AuthenticAMD", "25", "sse2 avx2", False),  # Zen 3
        ("AuthenticAMD", "26", "sse2 avx2 avx512f avx512bw", False),  # Zen 5
        ("GenuineIntel", "6", "sse2 avx2 avx512f avx512bw", False),
        (None, None, None, False),  # no /proc/cpuinfo
    ],
)
def test_avx512_kernels_count_as_avx2_where_the_cpu_splits_them(
    monkeypatch, vendor, family, flags, splits
):
    from fastrnn import _sysinfo

    info = {"vendor_id": vendor, "cpu family": family, "flags": flags}
    monkeypatch.setattr(_sysinfo, "_cpuinfo", lambda: {k: v for k, v in info.items() if v})
    assert _sysinfo.splits_512bit_vectors() is splits
    assert _sysinfo.blas_width_isa("SkylakeX") == ("avx2" if splits else "avx512")
    assert _sysinfo.blas_width_isa("Haswell") == "avx2"
    assert _sysinfo.blas_width_isa("Nehalem") == "generic"


def test_set_blas_names_a_bad_kernel_level():
    with pytest.raises(ValueError, match=r"kernel_isa must be .*got 'sse9'"):
        cpp_backend._kernels.set_blas(*BLAS[:6], "sse9")
    assert cpp_backend._kernels.blas() == BLAS[4]


@pytest.mark.skipif(BLAS[0] == 0, reason=f"no BLAS to hand over: {BLAS[4]}")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("H", [48, 37], ids=["packets", "ragged"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("level", LEVELS)
def test_the_head_goes_to_blas_when_blas_takes_every_product(kernels_at, level, dtype, H, threads):
    """The fused head's three products per block of rows (logits, dW, dh) go to BLAS only
    where every product does (the generic module beside AVX2 or wider BLAS kernels), else
    in-house; either way the reference's results (rows weighted, some with weight 0)."""
    from fastrnn.backends import numpy_backend

    rng = np.random.default_rng(7)
    N, K = 1100, 13
    h = rng.normal(size=(N, H)).astype(dtype)
    weight, bias = rng.normal(size=(K, H)).astype(dtype), rng.normal(size=K).astype(dtype)
    targets = rng.integers(0, K, size=N)
    row_weights = (rng.random(N) > 0.2).astype(dtype)
    want = numpy_backend.linear_cross_entropy(
        h, weight, bias, targets, row_weights, scale=0.5, num_threads=1
    )
    for blas_isa in dict.fromkeys([BLAS[6], "generic"]):
        kernels = kernels_at(level, (*BLAS[:6], blas_isa))
        before = kernels.blas_calls()
        got = kernels.linear_cross_entropy(h, weight, bias, targets, row_weights, 0.5, threads)
        takes_all = level == "generic" and blas_isa != "generic"
        assert (kernels.blas_calls() > before) == takes_all, blas_isa
        rtol = RTOL[dtype]
        assert got[0] == pytest.approx(want[0], rel=rtol)
        for a, b in zip(got[1:], want[1:], strict=True):
            assert float(np.abs(a - b).max()) <= rtol * float(np.abs(b).max())
