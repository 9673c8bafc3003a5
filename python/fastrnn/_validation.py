"""Argument checks for the whole package: the one place that decides what is accepted.

Policy, the same for every function here and every public entry point that uses them:

- **TypeError** for a value of the wrong *type* (a float where an int is expected, a
  string where a number is, an integer array where a float array is);
- **ValueError** for a value of the right type but a wrong *value* (out of range, NaN,
  wrong shape, not one of the choices);
- **MemoryError** (:func:`check_memory`) for a request that cannot fit, before allocating.

Every message names the argument, what it got and what was expected.

Arrays (:func:`as_float_array`): anything NumPy considers float32/float64 is accepted,
however it was made (pickled, memory-mapped, read-only, ``np.frombuffer``, a PyTorch
tensor, non-native byte order); it is used as is when it can be, converted once otherwise
(a non-native byte order is swapped to native, a non-contiguous view is copied), so the
backends only ever see native, C-contiguous arrays whose dtype is the canonical
``np.dtype(np.float32)`` / ``np.dtype(np.float64)`` object. Dtypes are compared by value.

Python lists, tuples and scalars are converted the way NumPy functions convert them,
directly to the dtype they must have (``forward(..., x=[[...]])`` with float32 parameters
gets a float32 ``x``): a list carries no dtype of its own, so there is nothing to disagree
with. NumPy arrays (and tensors) keep theirs: an array of the other float dtype is a
TypeError that names both dtypes, because silently converting a whole array (and
returning gradients of another dtype) hides a real mistake.

The names here are public *inside* the package (``from . import _validation as V``); no
module imports another module's private ``_check_*`` helpers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "CELLS",
    "DTYPES",
    "GATES",
    "PARAM_NAMES",
    "as_array",
    "as_float_array",
    "as_int_array",
    "as_numeric_array",
    "as_token_ids",
    "available_memory",
    "check_bool",
    "check_choice",
    "check_dropout",
    "check_dropout_mask",
    "check_finite",
    "check_float",
    "check_float_dtype",
    "check_fraction",
    "check_int",
    "check_lengths",
    "check_mask",
    "check_memory",
    "check_non_negative_float",
    "check_non_negative_int",
    "check_params",
    "check_positive_float",
    "check_positive_int",
    "check_shape",
    "check_targets",
    "describe",
]

CELLS: tuple[str, ...] = ("rnn", "lstm", "gru")
PARAM_NAMES: tuple[str, ...] = ("W_ih", "W_hh", "b_ih", "b_hh")
GATES: dict[str, int] = {"rnn": 1, "lstm": 4, "gru": 3}
DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))

# Below this many bytes check_memory reads nothing, so that small calls pay nothing.
_MEMORY_CHECK_FLOOR = 2**28


def describe(value: object) -> str:
    """A short name for ``value``'s type in a message: ``"a list"``, ``"a torch Tensor"``."""
    t = type(value)
    name = t.__name__
    module = t.__module__.split(".")[0]
    if module not in ("builtins", "numpy"):
        name = f"{module} {name}"
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


# --- scalars ---------------------------------------------------------------------------------


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool; TypeError for anything but a bool (or NumPy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)} ({value!r})")
    return bool(value)


def check_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int >= ``minimum``. A bool, a float (even ``3.0``) or a string is a
    TypeError; an int below ``minimum`` a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {describe(value)} ({value!r})")
    if minimum is not None and value < minimum:
        what = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1 (see :func:`check_int`)."""
    return check_int(name, value, 1)


def check_non_negative_int(name: str, value: object) -> int:
    """``value`` as an int >= 0 (see :func:`check_int`)."""
    return check_int(name, value, 0)


def check_float(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` (an int or float, Python or NumPy, not a bool) as a finite float in the
    given range. Wrong type: TypeError; NaN, inf or out of range: ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name} must be a number, got {describe(value)} ({value!r})")
    v = float(value)
    lo_ok = minimum is None or (v >= minimum if min_inclusive else v > minimum)
    hi_ok = maximum is None or (v <= maximum if max_inclusive else v < maximum)
    if not math.isfinite(v) or not lo_ok or not hi_ok:
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>=' if min_inclusive else '>'} {minimum:g}")
        if maximum is not None:
            bounds.append(f"{'<=' if max_inclusive else '<'} {maximum:g}")
        rng = f" and {' and '.join(bounds)}" if bounds else ""
        raise ValueError(f"{name} must be finite{rng}, got {value!r}")
    return v


def check_positive_float(name: str, value: object) -> float:
    """A finite float > 0 (see :func:`check_float`)."""
    return check_float(name, value, minimum=0.0, min_inclusive=False)


def check_non_negative_float(name: str, value: object) -> float:
    """A finite float >= 0 (see :func:`check_float`)."""
    return check_float(name, value, minimum=0.0)


def check_fraction(name: str, value: object) -> float:
    """A float in [0, 1) (a momentum, a beta, a dropout probability)."""
    return check_float(name, value, minimum=0.0, maximum=1.0, max_inclusive=False)


def check_dropout(name: str, value: object) -> float:
    """A dropout probability: a float in [0, 1], as PyTorch's ``dropout`` (1 drops
    everything: the mask is all zeros). Not a number: TypeError; else ValueError."""
    try:
        return check_float(name, value, minimum=0.0, maximum=1.0)
    except ValueError:
        raise ValueError(
            f"{name} must be a probability in [0, 1] (the fraction of units dropped), got {value!r}"
        ) from None


def check_dropout_mask(
    name: str, mask: object, dtype: np.dtype, shape: tuple[int, ...], meaning: str
) -> np.ndarray | None:
    """A dropout mask of the functional core: ``None``, or a finite float array of
    ``dtype`` (the parameters') and exactly ``shape`` (``meaning`` explains it), made
    native and C-contiguous. Any finite values are accepted (the layers pass 0 and
    1/(1-p), inverted dropout); the mask is a multiplier, not a probability."""
    if mask is None:
        return None
    arr = as_float_array(name, mask, dtype, finite=True)
    check_shape(name, arr, shape, meaning)
    return arr


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the string ``choices``; otherwise a ValueError listing
    them (also for a non-string: the question is only ever "which one")."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_float_dtype(name: str, dtype: Any) -> np.dtype:
    """``dtype`` (anything ``np.dtype`` accepts) as float32 or float64, else TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return DTYPES[DTYPES.index(dt)]


# --- arrays ----------------------------------------------------------------------------------


def _to_numpy(name: str, value: object, dtype: np.dtype | None) -> np.ndarray:
    """``value`` as a base-class ndarray, without a copy when it already is one."""
    if isinstance(value, np.ndarray):
        return np.asarray(value)  # a memmap or other subclass -> a plain view
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        return np.asarray(value.detach().cpu())
    if isinstance(value, (list, tuple, int, float, np.generic)) and dtype is not None:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise TypeError(
                f"{name} is {describe(value)} that NumPy cannot turn into an array: {exc}"
            ) from None
        if arr.dtype.kind in "iuf":  # a list has no dtype of its own: take the needed one
            return arr.astype(dtype)
        return arr
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got {describe(value)} that NumPy "
            f"cannot turn into an array: {exc}"
        ) from None


def as_float_array(
    name: str,
    value: object,
    dtype: np.dtype | None = None,
    *,
    dtype_of: str = "the parameters",
    finite: bool = False,
    contiguous: bool = True,
) -> np.ndarray:
    """``value`` as a native, C-contiguous float32/float64 ndarray (see the module notes).

    ``dtype``: the dtype it must have (``dtype_of`` says where that dtype comes from, for
    the message); lists, tuples and scalars are converted to it. ``finite``: refuse NaN and
    inf with :func:`check_finite`. ``contiguous=False`` skips the contiguous copy (for
    callers that only read the array through NumPy). A 0-d array stays 0-d.
    """
    arr = _to_numpy(name, value, dtype)
    if arr.dtype not in DTYPES and arr.dtype.kind == "f" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))  # byte-swapped: converted once
    if arr.dtype not in DTYPES:
        hint = ""
        if arr.dtype.kind in "biuf":
            hint = f"; cast it first, e.g. {name}.astype(np.float32)"
        src = "" if isinstance(value, np.ndarray) else f" ({describe(value)})"
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}{src}{hint}")
    if dtype is not None and arr.dtype != dtype:
        src = "" if isinstance(value, np.ndarray) else f" ({describe(value)})"
        raise TypeError(
            f"{name}{src} has dtype {arr.dtype} but {dtype_of} are {dtype}; "
            f"use one dtype for all arrays (e.g. {name}.astype(np.{dtype}))"
        )
    if not arr.dtype.isnative:  # '>f8' compares unequal to float64, but be safe
        arr = arr.astype(arr.dtype.newbyteorder("="))
    canonical = DTYPES[DTYPES.index(arr.dtype)]
    if arr.dtype is not canonical:  # e.g. an unpickled array: same dtype, another object
        arr = arr.view(canonical)
    if contiguous and not arr.flags.c_contiguous:  # a strided or broadcast view is copied
        check_memory(arr.nbytes, f"a C-contiguous copy of {name} with shape {arr.shape}")
        arr = np.ascontiguousarray(arr).reshape(arr.shape)
    if finite:
        check_finite(name, arr)
    return arr


def as_array(name: str, value: object) -> np.ndarray:
    """``value`` as an ndarray of whatever dtype NumPy gives it (no copy for an ndarray);
    a TypeError naming ``name`` for what NumPy cannot turn into an array (ragged lists)."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array, got {describe(value)}: {exc}") from None


def as_numeric_array(
    name: str, value: object, dtype: np.dtype, *, finite: bool = True
) -> np.ndarray:
    """``value`` (any array of numbers: bool, int or float, or what NumPy turns into one)
    converted once to a C-contiguous array of ``dtype``, as scikit-learn's ``check_array``
    does for an estimator's input. With ``finite`` (the default) NaN and inf are refused by
    :func:`check_finite`, in the input itself and, when the conversion narrows the dtype,
    as overflow of the converted values."""
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        value = value.detach().cpu()
    arr = as_array(name, value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must be an array of numbers, got dtype {arr.dtype}"
            + ("" if isinstance(value, np.ndarray) else f" ({describe(value)})")
        )
    if finite:
        check_finite(name, arr)
    with np.errstate(over="ignore"):  # an overflow is reported below, by position
        out = np.ascontiguousarray(arr, dtype=dtype)
    if finite and arr.dtype.kind == "f" and arr.dtype.itemsize > out.dtype.itemsize:
        check_finite(f"{name} converted to {out.dtype}", out)
    return out


def as_int_array(
    name: str,
    value: object,
    shape: tuple[int, ...] | None = None,
    *,
    expected: str = "an integer array",
) -> np.ndarray:
    """``value`` as an int64 array (of ``shape`` if given): TypeError unless its dtype is an
    integer dtype (floats, even integral ones, and bools are refused); ``expected`` words
    what was expected in the message."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be {expected}: {exc}") from None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be {expected}, got dtype {arr.dtype}")
    if shape is not None:
        check_shape(name, arr, shape)
    return arr.astype(np.int64, copy=False)


def as_token_ids(
    name: str, value: object, size: int, layout: str, source: str
) -> np.ndarray | None:
    """``value`` as token ids: a C-contiguous int64 array of 2 dimensions (``layout``, e.g.
    ``"(T, B)"``) with every id in 0..size-1 (``source`` says where ``size`` comes from,
    for the messages), if ``value`` is an integer array (NumPy or a tensor); ``None`` if it
    is anything else (a float array, a list: features, for :func:`as_float_array`).

    A boolean array is a TypeError (neither ids nor features), and so is an integer array
    of 3 dimensions (features of an integer dtype); an integer array of another number of
    dimensions, or with an id out of range, a ValueError naming the argument."""
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        tensor: Any = value
        if tensor.is_floating_point() or tensor.is_complex():
            return None
        value = tensor.detach().cpu().numpy()
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biu":
        return None
    if value.dtype.kind == "b":
        raise TypeError(
            f"{name} must have dtype float32 or float64 (features) or an integer dtype (token "
            f"ids {layout}), got bool (shape {value.shape}); cast it, e.g. "
            f"{name}.astype(np.int64) for ids"
        )
    if value.ndim == 3:  # features (one-hot rows?) of an integer dtype: the wrong type
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {value.dtype}; cast it first, "
            f"e.g. {name}.astype(np.float32) (an integer array of shape {value.shape}, the "
            f"shape of features; token ids are an integer array {layout})"
        )
    if value.ndim != 2:
        raise ValueError(
            f"{name} is an integer array of shape {value.shape}, read as token ids: expected "
            f"{layout} of ids in 0..{size - 1} ({source})"
        )
    check_index_range(name, value, size, f"token id ({source})")
    if value.dtype == np.int64 and value.dtype.isnative and value.flags.c_contiguous:
        return value
    return np.ascontiguousarray(value, dtype=np.int64)


def check_index_range(name: str, ids: np.ndarray, size: int, what: str = "index") -> None:
    """ValueError unless every entry of the integer array ``ids`` is in 0..size-1, naming
    the first bad position (in C order) and its value."""
    bad = (ids < 0) | (ids >= size)
    if not bad.any():
        return
    pos = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), ids.shape))
    where = f"{name}[{', '.join(map(str, pos))}]" if pos else name
    raise ValueError(
        f"{where} = {int(ids[pos])} is out of range: every {what} must be in 0..{size - 1} "
        f"({int(bad.sum())} of {ids.size} entries are outside)"
    )


def check_finite(name: str, arr: np.ndarray) -> None:
    """ValueError if ``arr`` holds NaN or inf, naming the first bad position (as
    scikit-learn's ``check_array``), before anything is computed from it."""
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    ok = np.isfinite(arr)
    if ok.all():
        return
    pos = tuple(int(i) for i in np.unravel_index(int(np.argmin(ok)), arr.shape))
    bad = arr[pos]
    what = "NaN" if np.isnan(bad) else "infinity"
    count = int(arr.size - np.count_nonzero(ok))
    at = f"index {pos}" if len(pos) != 1 else f"index {pos[0]}"
    raise ValueError(
        f"{name} contains {what} at {at} ({count} non-finite value{'s' * (count != 1)} in "
        f"all); remove or impute missing values first"
    )


def check_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], meaning: str = "") -> None:
    """ValueError unless ``arr.shape == expected``; ``meaning`` explains the expected shape."""
    if arr.shape != expected:
        sep = " " if meaning else ""
        raise ValueError(f"{name} has shape {arr.shape}, expected {expected}{sep}{meaning}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping, if known.

    ``MemAvailable`` from /proc/meminfo (what the kernel can hand out, page cache
    included), else free physical pages from ``os.sysconf``; ``None`` when neither exists.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes: int, what: str) -> None:
    """Refuse with a MemoryError, before allocating, ``nbytes`` for ``what`` that would not
    fit in the memory available now (:func:`available_memory`; unchecked
    if unknown). Below 256 MiB nothing is read, so that small calls pay nothing."""
    if nbytes < _MEMORY_CHECK_FLOOR:
        return
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise MemoryError(
            f"{what} needs about {nbytes / 2**30:.3g} GiB but only {avail / 2**30:.3g} GiB of "
            "memory is available (refused before allocating); use smaller sizes, float32, or "
            "for long sequences truncated BPTT"
        )


# --- the functional core's domain ------------------------------------------------------------


def check_params(cell: str, params: object) -> tuple[dict[str, np.ndarray], int, int]:
    """Validate a params dict of ``cell``; return it normalised, with (input_size, hidden_size)."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict with keys {list(PARAM_NAMES)}, got {type(params).__name__}"
        )
    missing = [k for k in PARAM_NAMES if k not in params]
    extra = [k for k in params if k not in PARAM_NAMES]
    if missing or extra:
        raise ValueError(
            f"params must have exactly the keys {list(PARAM_NAMES)}; "
            f"missing {missing}, unexpected {extra}"
        )
    W_hh = as_float_array("params['W_hh']", params["W_hh"])
    dtype = W_hh.dtype
    G = GATES[cell]
    if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1] or W_hh.shape[1] == 0:
        raise ValueError(
            f"params['W_hh'] has shape {W_hh.shape}, expected ({G}*H, H) = ({G}H, H) with "
            f"H >= 1 for cell {cell!r} ({G} gate{'s' if G > 1 else ''}); "
            "are these params for another cell?"
        )
    H = W_hh.shape[1]
    of = "params['W_hh'] and the other parameters"
    W_ih = as_float_array("params['W_ih']", params["W_ih"], dtype, dtype_of=of)
    if W_ih.ndim != 2 or W_ih.shape[0] != G * H:
        raise ValueError(
            f"params['W_ih'] has shape {W_ih.shape}, expected ({G * H}, input_size) "
            f"for cell {cell!r} with hidden size {H}"
        )
    out = {"W_ih": W_ih, "W_hh": W_hh}
    for key in ("b_ih", "b_hh"):
        b = as_float_array(f"params[{key!r}]", params[key], dtype, dtype_of=of)
        check_shape(f"params[{key!r}]", b, (G * H,), f"for cell {cell!r} with hidden size {H}")
        out[key] = b
    return out, W_ih.shape[1], H


def check_lengths(lengths: object, T: int, B: int) -> np.ndarray | None:
    """Validate ``lengths`` (B,) in 1..T; ``None`` when absent or when every sequence has
    length T, else a C-contiguous int64 array."""
    if lengths is None:
        return None
    arr = as_int_array("lengths", lengths, expected=f"an integer array of shape ({B},)")
    check_shape("lengths", arr, (B,), "(one length per sequence in the batch)")
    if B and (arr.min() < 1 or arr.max() > T):
        bad = arr[(arr < 1) | (arr > T)]
        raise ValueError(f"lengths must be in 1..T = 1..{T}, got values {bad[:5].tolist()}")
    if B == 0 or arr.min() == T:
        return None
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_mask(mask: object, lead: tuple[int, ...], what: str) -> np.ndarray | None:
    """``mask`` as a bool array whose shape is a prefix of ``lead`` (or None)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array, got dtype {m.dtype}")
    if m.shape != lead[: m.ndim] or m.ndim == 0:
        raise ValueError(
            f"mask has shape {m.shape}, expected the leading dimensions of {what}, "
            f"e.g. {lead[:-1] if len(lead) > 1 else lead} or {lead}"
        )
    return m


def check_targets(
    targets: object, lead: tuple[int, ...], K: int, mask: object, meaning: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer class ``targets`` of shape ``lead`` in 0..K-1 wherever ``mask`` (a prefix
    of ``lead``, see :func:`check_mask`) is set. Returns the targets with masked entries
    replaced by 0 (any value is allowed there) and the mask broadcast to ``lead`` (or
    None)."""
    y = as_int_array("targets", targets, expected=f"integer class indices of shape {lead}")
    check_shape("targets", y, lead, meaning)
    m = check_mask(mask, lead, "targets") if lead else None
    live = None
    if m is not None:
        live = np.broadcast_to(m.reshape(m.shape + (1,) * (len(lead) - m.ndim)), lead)
    bad = (y < 0) | (y >= K)
    if live is not None:
        bad &= live
    if np.any(bad):
        raise ValueError(f"targets must be in 0..{K - 1} at unmasked positions, got {y[bad][:5]}")
    return (y if live is None else np.where(live, y, 0)), live
