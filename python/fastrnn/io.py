"""Save and load layers, heads, optimizers and models as ``.npz`` files, without pickle.

Usage::

    fastrnn.save(obj, "model.npz")          # or obj.save("model.npz")
    obj = fastrnn.load("model.npz")         # the same class, bit-exact arrays
    opt = fastrnn.load("adam.npz", params=model.parameters())   # optimizers need params

File layout (format version 1)
------------------------------
A ``.npz`` file (an uncompressed ZIP archive of ``.npy`` members, as written by
:func:`numpy.savez`) with exactly these members:

``__fastrnn__``
    A 0-d unicode array holding a JSON object, the header::

        {"format": "fastrnn",          # marks the file as ours
         "version": 1,                 # FORMAT_VERSION of the writer
         "kind": "LSTM",               # registry key of the object's class
         "module": "fastrnn.layers",   # the module that registers the kind
         "config": {...},              # JSON constructor arguments of the object
         "arrays": {"weight_ih_l0": {"dtype": "<f4", "shape": [16, 3]}, ...}}

``<name>`` for each name in ``header["arrays"]``
    The array itself, stored as ``.npy`` with its exact dtype and shape (so the round
    trip is bit-exact). Names are the object's own keys (e.g. PyTorch parameter names,
    ``"m/weight"`` for an optimizer moment, ``"encoder.weight_ih_l0"`` for a model part).

Reading uses ``np.load(allow_pickle=False)``. Every failure is a :class:`ValueError` that
names the file and the problem: not a ZIP/npz (e.g. truncated), a damaged member (ZIP's
CRC-32 check), no or an unreadable header, a newer format version than this fastrnn
reads, an unknown kind, arrays missing, unexpected or not matching the header, and arrays
that do not fit the configuration (e.g. wrong shapes).

Making a class saveable (how models register)
---------------------------------------------
A saveable object provides ``_save_state() -> (kind, config, arrays)``: ``kind`` a
registered name, ``config`` a JSON-able dict (ints, floats, strings, bools, lists,
dicts), ``arrays`` a flat dict ``name -> np.ndarray`` (any float/int dtype, no objects).
Its class provides the classmethod ``_from_state(config, arrays, **kwargs)`` that
rebuilds the object (``kwargs`` are the extra keyword arguments of :func:`load`, e.g.
``params`` for an optimizer) and raises ``ValueError``/``TypeError`` if the arrays do not
fit the config. Register the class once, at import of its module::

    from fastrnn import io

    @io.register("SequenceClassifier")
    class SequenceClassifier:
        def _save_state(self):
            arrays = {f"rnn.{k}": v for k, v in self.rnn.params.items()}
            arrays |= {f"head.{k}": v for k, v in self.head.params.items()}
            return "SequenceClassifier", {"hidden_size": self.hidden_size, ...}, arrays

        @classmethod
        def _from_state(cls, config, arrays):
            model = cls(**config)
            model.rnn.load_state_dict(io.subdict(arrays, "rnn."))
            model.head.load_state_dict(io.subdict(arrays, "head."))
            return model

The header records the module that defines the class (``type(obj).__module__``);
:func:`load` imports it if the kind is not registered yet, but only modules inside the
``fastrnn`` package, so a file can never make fastrnn import arbitrary code.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

FORMAT_VERSION = 1
HEADER_KEY = "__fastrnn__"

_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register(kind: str) -> Callable[[T], T]:
    """Class decorator: objects of this class save under ``kind`` and load back from it."""
    if not isinstance(kind, str) or not kind or kind == HEADER_KEY:
        raise ValueError(f"kind must be a non-empty string other than {HEADER_KEY!r}, got {kind!r}")

    def decorate(cls: T) -> T:
        for attr in ("_save_state", "_from_state"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} must define {attr} to be registered for saving")
        previous = _REGISTRY.get(kind)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise ValueError(f"kind {kind!r} is already registered by {previous.__qualname__}")
        _REGISTRY[kind] = cls
        return cls

    return decorate


def registered_kinds() -> dict[str, type]:
    """The registered kinds and their classes."""
    return dict(_REGISTRY)


def subdict(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of ``arrays`` whose name starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _describe(path: Any) -> str:
    return repr(os.fspath(path))


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (a layer, a :class:`~fastrnn.layers.Linear`, an optimizer or a
    registered model) to ``path`` in the layout described in this module.

    The file is written exactly at ``path`` (no extension is added) and atomically: a
    crash mid-write leaves the previous file intact.
    """
    save_state = getattr(obj, "_save_state", None)
    if save_state is None:
        raise TypeError(
            f"cannot save a {type(obj).__name__}: it defines no _save_state() "
            "(see the fastrnn.io module docstring)"
        )
    kind, config, arrays = save_state()
    if kind not in _REGISTRY:
        raise ValueError(f"cannot save {type(obj).__name__}: kind {kind!r} is not registered")
    try:
        config_json = json.loads(json.dumps(config, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config of {type(obj).__name__} is not JSON-able: {exc}") from None
    members: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name == HEADER_KEY:
            raise ValueError(f"array name {name!r} of {type(obj).__name__} is not allowed")
        arr = np.asarray(value)
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            raise TypeError(f"array {name!r} has dtype {arr.dtype}; only numbers can be saved")
        members[name] = arr
        table[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape)}
    header = {
        "format": "fastrnn",
        "version": FORMAT_VERSION,
        "kind": kind,
        "module": type(obj).__module__,
        "config": config_json,
        "arrays": table,
    }
    members[HEADER_KEY] = np.array(json.dumps(header))
    target = Path(os.fspath(path))
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **members)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a file; return (header, arrays)."""
    where = _describe(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {where}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{where} is a single .npy array, not a fastrnn .npz file")
        with npz:
            names = list(npz.files)
            if HEADER_KEY not in names:
                raise ValueError(
                    f"{where} is an .npz file but not one written by fastrnn "
                    f"(no {HEADER_KEY!r} header member)"
                )
            arrays = {name: npz[name] for name in names}
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where} is not a readable fastrnn file: {exc}") from None
    except Exception as exc:  # BadZipFile, OSError, EOFError, zlib.error, struct.error, ...
        raise ValueError(
            f"{where} is not a readable fastrnn file (truncated or corrupted?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    raw = arrays.pop(HEADER_KEY)
    try:
        header = json.loads(str(raw[()]))
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"{where} has an unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != "fastrnn":
        raise ValueError(f"{where} has a header that is not a fastrnn header")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where} has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where} was written in fastrnn file format version {version}, newer than the "
            f"version {FORMAT_VERSION} this fastrnn reads; upgrade fastrnn to load it"
        )
    for key, typ in (("kind", str), ("config", dict), ("arrays", dict)):
        if not isinstance(header.get(key), typ):
            raise ValueError(f"{where} has a header without a valid {key!r} entry")
    table = header["arrays"]
    missing = sorted(set(table) - set(arrays))
    extra = sorted(set(arrays) - set(table))
    if missing or extra:
        raise ValueError(
            f"{where} does not match its header: missing arrays {missing}, "
            f"unexpected arrays {extra}"
        )
    for name, spec in table.items():
        arr = arrays[name]
        if not isinstance(spec, dict) or (
            spec.get("dtype") != arr.dtype.str or spec.get("shape") != list(arr.shape)
        ):
            raise ValueError(
                f"{where}: array {name!r} has dtype {arr.dtype.str} and shape "
                f"{list(arr.shape)}, but the header says {spec}"
            )
    return header, arrays


def _lookup(kind: str, module: object, where: str) -> type:
    cls = _REGISTRY.get(kind)
    if (
        cls is None
        and isinstance(module, str)
        and (module == "fastrnn" or module.startswith("fastrnn."))
    ):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
        cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(
            f"{where} holds an object of kind {kind!r}, which no loaded module registers "
            f"(known kinds: {sorted(_REGISTRY)}); import the module that defines it first"
        )
    return cls


def load(path: str | os.PathLike, *, expect: type | tuple[type, ...] | None = None, **kwargs):
    """Read an object written by :func:`save`.

    ``expect``: a class (or tuple of classes) the object must be an instance of, e.g.
    ``fastrnn.load(path, expect=fastrnn.LSTM)``; a file holding anything else is a
    ``ValueError``. Other keyword arguments go to the class's ``_from_state`` (an
    optimizer needs ``params=``, the arrays it updates).
    """
    # Make the built-in kinds known without importing them at package import.
    from . import layers, optim  # noqa: F401

    where = _describe(path)
    header, arrays = _read(path)
    cls = _lookup(header["kind"], header.get("module"), where)
    if expect is not None:
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if not issubclass(cls, wanted):
            names = " or ".join(c.__name__ for c in wanted)
            raise ValueError(f"{where} holds a {header['kind']}, expected a {names}")
    try:
        return cls._from_state(header["config"], arrays, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"{where} holds a {header['kind']} whose data does not fit its configuration "
            f"or the arguments given: {exc}"
        ) from None


__all__ = ["FORMAT_VERSION", "load", "register", "registered_kinds", "save", "subdict"]
