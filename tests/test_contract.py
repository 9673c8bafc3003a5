"""The backend contract as code: every backend module has the signatures of the protocol
:class:`fastrnn.backends.Backend` (parameter names, kinds and defaults), and the registry
hands out modules typed as that protocol.

The argument and return types are checked statically: mypy (``.ci/run``) checks each
backend module against the protocol in ``fastrnn/backends/__init__.py``. This test checks
what a call site depends on at run time, and runs without a type checker.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from types import ModuleType

import pytest

from fastrnn import backends
from fastrnn.backends import BACKENDS, Backend

# the protocol's functions (its public methods); UNAVAILABLE_REASON is a property
FUNCTIONS: tuple[str, ...] = tuple(
    name
    for name, member in vars(Backend).items()
    if inspect.isfunction(member) and not name.startswith("_")
)


def _module(backend: str) -> ModuleType:
    """The backend's module, imported even where the backend cannot run (its signatures
    are there all the same: a backend reports why it cannot run in UNAVAILABLE_REASON)."""
    return importlib.import_module(f"fastrnn.backends.{backend}_backend")


def _parameters(function: typing.Callable[..., object], *, method: bool = False) -> list[str]:
    """``name, kind, default`` of each parameter, readable (without ``self`` for a method)."""
    params = list(inspect.signature(function).parameters.values())[1 if method else 0 :]
    return [
        f"{p.name} ({p.kind.description}"
        + ("" if p.default is inspect.Parameter.empty else f", default {p.default!r}")
        + ")"
        for p in params
    ]


def _mismatch(function: typing.Callable[..., object], name: str) -> list[str]:
    """How ``function``'s parameters differ from the protocol's ``name`` (empty: they agree)."""
    want = _parameters(getattr(Backend, name), method=True)
    got = _parameters(function)
    if got == want:
        return []
    return [f"expected {len(want)} parameters:", *want, f"got {len(got)}:", *got]


def test_the_protocol_has_the_functions_of_the_contract():
    """The list below is read from the protocol, so a function added there is checked too;
    these three must stay."""
    assert {"forward", "backward", "linear_cross_entropy"} <= set(FUNCTIONS)
    assert "training" in inspect.signature(Backend.forward).parameters
    for function in (Backend.forward, Backend.backward):  # recurrent dropout (issue 18)
        assert "recurrent_mask" in inspect.signature(function).parameters


def test_a_wrong_signature_is_reported():
    """The comparison is not vacuous: a forward without ``training`` and one with a
    positional ``activation`` both differ."""

    def no_training(cell, params, x, h0, c0, *, activation, negative_slope, lengths, num_threads):
        raise NotImplementedError

    def positional(cell, params, x, h0, c0, activation, *, negative_slope, lengths, num_threads):
        raise NotImplementedError

    assert _mismatch(no_training, "forward")
    assert _mismatch(positional, "forward")


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_signatures_match_the_protocol(backend: str, function: str):
    module = _module(backend)
    assert hasattr(module, function), f"{module.__name__} has no {function}()"
    problems = _mismatch(getattr(module, function), function)
    assert not problems, f"{module.__name__}.{function} differs from Backend.{function}:\n" + (
        "\n  ".join(problems)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_says_whether_it_runs(backend: str):
    """UNAVAILABLE_REASON: None, or why the backend cannot run here (and then the registry
    reports that reason)."""
    reason = _module(backend).UNAVAILABLE_REASON
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is not None:
        assert backends.unavailable_reasons()[backend] == reason


def test_load_is_typed_as_returning_the_protocol():
    hints = typing.get_type_hints(backends.load)
    assert hints["return"] is Backend
    assert hints["name"] is str


def test_load_returns_a_module_with_every_function_of_the_protocol():
    for name in backends.available():
        module = backends.load(name)
        assert all(callable(getattr(module, f, None)) for f in FUNCTIONS), name
