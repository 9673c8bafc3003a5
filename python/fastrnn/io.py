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
names the file and the problem: not an npz archive at all (e.g. a text file), an npz that
cannot be read (e.g. truncated), a damaged member (ZIP's
CRC-32 check), no or an unreadable header, a newer format version than this fastrnn
reads, an unknown kind (with the reason: a module that failed to import, or one that
does not register it), arrays missing, unexpected or not matching the header, and arrays
that do not fit the configuration (e.g. wrong shapes).

Making a class saveable (how layers, optimizers and models register)
--------------------------------------------------------------------
A saveable class provides ``_save_state() -> (config, arrays)``: ``config`` a JSON-able
dict (ints, floats, strings, bools, lists, dicts), ``arrays`` a flat dict
``name -> np.ndarray`` (any bool/int/float dtype, no objects); and the classmethod
``_from_state(config, arrays, **kwargs)`` that rebuilds the object (``kwargs`` are the
extra keyword arguments of :func:`load`, e.g. ``params`` for an optimizer) and raises
``ValueError``/``TypeError`` if the arrays do not fit the config. It registers once, with
the decorator :func:`register`, which sets the kind (:func:`kind_of` reads it back)::

    from fastrnn import io

    @io.register("SequenceClassifier")
    class SequenceClassifier:
        def _save_state(self):
            arrays = {f"rnn.{k}": v for k, v in self.rnn.params.items()}
            arrays |= {f"head.{k}": v for k, v in self.head.params.items()}
            return {"hidden_size": self.hidden_size, ...}, arrays

        @classmethod
        def _from_state(cls, config, arrays):
            model = cls(**config)
            model.rnn.load_state_dict(io.subdict(arrays, "rnn."))
            model.head.load_state_dict(io.subdict(arrays, "head."))
            return model

(The older form ``_save_state() -> (kind, config, arrays)`` is still accepted when
``kind`` is the class's registered kind.) A kind belongs to exactly the class it was
registered on: a subclass saves only once it registers a kind of its own, so that
:func:`load` always gives back the class that was saved.

The header records the module that defines the class (``type(obj).__module__``); when
the kind is not registered yet, :func:`load` imports that module, but only modules inside
the ``fastrnn`` package, so a file can never make fastrnn import arbitrary code. This
module imports nothing from the rest of the package: the classes register with it.

A plain dict of arrays (``{"W_ih": ..., "b_ih": ...}``, e.g. the params of
:func:`fastrnn.init_params`) saves too, as the kind ``"dict"``, and loads back as a dict
with the same names, in the same order, with bit-exact arrays.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast, overload

import numpy as np

FORMAT_VERSION = 1
HEADER_KEY = "__fastrnn__"
KIND_ATTRIBUTE = "__fastrnn_kind__"
"""The class attribute :func:`register` sets to the kind (read it with :func:`kind_of`)."""

_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)
_Obj = TypeVar("_Obj")

# The first bytes of the files np.load tells apart: a ZIP archive (an npz; an empty
# archive starts with its end record) and a single .npy array.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def register(kind: str) -> Callable[[T], T]:
    """Class decorator: objects of this class save under ``kind`` and load back from it.

    Sets the class attribute ``__fastrnn_kind__`` to ``kind`` (see :func:`kind_of`) and
    records the class in the registry :func:`load` looks kinds up in. Registering the
    same kind again for a class of the same qualified name (a module reloaded) replaces
    the old class; another class is a ``ValueError``.
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str, got {type(kind).__name__}")
    if not kind or kind == HEADER_KEY:
        raise ValueError(f"kind must be a non-empty string other than {HEADER_KEY!r}, got {kind!r}")

    def decorate(cls: T) -> T:
        if not isinstance(cls, type):
            raise TypeError(f"register({kind!r}) decorates a class, got {type(cls).__name__}")
        for attr in ("_save_state", "_from_state"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} must define {attr} to be registered for saving")
        previous = _REGISTRY.get(kind)
        if previous is not None and previous.__qualname__ != cls.__qualname__:
            raise ValueError(f"kind {kind!r} is already registered by {previous.__qualname__}")
        own = cls.__dict__.get(KIND_ATTRIBUTE)
        if own is not None and own != kind:
            raise ValueError(f"{cls.__qualname__} is already registered as kind {own!r}")
        setattr(cls, KIND_ATTRIBUTE, kind)
        _REGISTRY[kind] = cls
        return cls

    return decorate


def kind_of(obj: object) -> str:
    """The kind an object (or a class) saves under: the one :func:`register` gave its class.

    A ``TypeError`` if the class itself is not registered (a subclass of a registered
    class does not inherit the kind: it would load back as its parent).
    """
    cls = obj if isinstance(obj, type) else type(obj)
    kind: str | None = cls.__dict__.get(KIND_ATTRIBUTE)
    if kind is None or _REGISTRY.get(kind) is not cls:
        parents = [c for c in cls.__mro__[1:] if c.__dict__.get(KIND_ATTRIBUTE) is not None]
        hint = (
            f" (its parent {parents[0].__qualname__} is; a subclass registers a kind of its own)"
            if parents
            else ""
        )
        raise TypeError(
            f"cannot save a {cls.__qualname__}: its class is not registered with "
            f"fastrnn.io.register(kind){hint}"
        )
    return kind


def registered_kinds() -> dict[str, type]:
    """The registered kinds and their classes."""
    return dict(_REGISTRY)


def subdict(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of ``arrays`` whose name starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _describe(path: Any) -> str:
    return repr(os.fspath(path))


@register("dict")
class _ArrayDict(dict[str, np.ndarray]):
    """A plain dict ``name -> array`` as :func:`save` writes it; :func:`load` returns a
    plain ``dict`` (this class exists only to be registered)."""

    def _save_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {}, dict(self)

    @classmethod
    def _from_state(
        cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return dict(arrays)


def _saveable(obj: Any, path: Any) -> Any:
    """``obj`` itself, or a plain dict of arrays wrapped; a clear error for anything else."""
    if isinstance(obj, (str, bytes, os.PathLike)):
        raise TypeError(
            f"save(obj, path): got a path first ({obj!r}); the object to save comes first, "
            f"then the path, e.g. fastrnn.save(model, {obj!r})"
        )
    if hasattr(obj, "_save_state"):
        return obj
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"cannot save a dict with the key {key!r} ({type(key).__name__}): "
                    "the names of saved arrays are strings"
                )
            if isinstance(value, Mapping):
                raise TypeError(
                    f"cannot save the dict: its entry {key!r} is a {type(value).__name__}, "
                    "not an array (save takes a flat dict name -> array)"
                )
        return _ArrayDict(obj)
    raise TypeError(
        f"cannot save a {type(obj).__name__}: it defines no _save_state() (see the "
        "fastrnn.io module docstring); save takes a layer, a Linear head, an optimizer, a "
        "fitted model, another registered class or a dict name -> array"
    )


def save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` (a layer, a :class:`~fastrnn.layers.Linear`, an optimizer, a
    registered model, or a plain dict ``name -> array``) to ``path`` in the layout
    described in this module.

    The file is written exactly at ``path`` (no extension is added) and atomically: a
    crash mid-write leaves the previous file intact.
    A model fitted data-parallel (``fit(..., comm=comm)``) is written by rank 0 only; on
    the other ranks, which hold the same parameters, this does nothing.

    Raises
    ------
    TypeError
        ``obj`` cannot be saved (the message says why; a path given first, in NumPy's
        ``np.save(path, arr)`` order, is named as such), or ``path`` is not a path.
    ValueError
        An array name or value that cannot be stored.
    """
    if getattr(obj, "_fit_rank", 0) != 0:  # fitted data-parallel: rank 0 writes the file
        return
    obj = _saveable(obj, path)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    kind = kind_of(obj)
    what = "dict" if isinstance(obj, _ArrayDict) else type(obj).__name__
    state = obj._save_state()
    if isinstance(state, tuple) and len(state) == 3:  # the older (kind, config, arrays)
        said, config, arrays = state
        if said != kind:
            raise ValueError(
                f"{what}._save_state() returned the kind {said!r}, but {what} is "
                f"registered as {kind!r}"
            )
    elif isinstance(state, tuple) and len(state) == 2:
        config, arrays = state
    else:
        raise TypeError(f"{what}._save_state() must return (config, arrays), got {state!r:.80}")
    try:
        config_json = json.loads(json.dumps(config, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config of {what} is not JSON-able: {exc}") from None
    members: dict[str, np.ndarray] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name == HEADER_KEY:
            raise ValueError(f"array name {name!r} of {what} is not allowed")
        arr = np.asarray(value)
        if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
            raise TypeError(
                f"array {name!r} of {what} is a {type(value).__name__} of dtype {arr.dtype}; "
                "only arrays of numbers (bool, int, float) can be saved"
            )
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
            np.savez(fh, **cast(dict[str, Any], members))
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_magic(path: str | os.PathLike[str], where: str) -> None:
    """A ValueError unless the file starts like a ZIP archive (what an npz is)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise ValueError(
            f"{where} is not a readable fastrnn file: {type(exc).__name__}: {exc}"
        ) from None
    if head.startswith(_NPY_MAGIC):
        raise ValueError(f"{where} is a single .npy array, not a fastrnn .npz file")
    if not head.startswith(_ZIP_MAGIC):
        what = "an empty file" if not head else f"a file that starts with {head[:4]!r}"
        raise ValueError(
            f"{where} is not an npz archive (a fastrnn file is a ZIP archive of .npy "
            f"arrays, written by fastrnn.save), but {what}"
        )


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and check a file; return (header, arrays)."""
    where = _describe(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {where}")
    _check_magic(path, where)
    try:
        with np.load(path, allow_pickle=False) as npz:
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
    ordered = {}
    for name, spec in table.items():
        arr = arrays[name]
        if not isinstance(spec, dict) or (
            spec.get("dtype") != arr.dtype.str or spec.get("shape") != list(arr.shape)
        ):
            raise ValueError(
                f"{where}: array {name!r} has dtype {arr.dtype.str} and shape "
                f"{list(arr.shape)}, but the header says {spec}"
            )
        ordered[name] = arr
    return header, ordered


def _lookup(kind: str, module: object, where: str) -> type:
    """The class registered for ``kind``, importing the file's ``module`` if needed."""
    cls = _REGISTRY.get(kind)
    if cls is not None:
        return cls
    known = f"known kinds: {sorted(_REGISTRY)}"
    if not isinstance(module, str) or not (module == "fastrnn" or module.startswith("fastrnn.")):
        raise ValueError(
            f"{where} holds an object of kind {kind!r}, which no loaded module registers "
            f"({known}); the file names the module {module!r}, outside the fastrnn package, "
            "which load never imports: import the module that defines the kind first"
        )
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(
            f"{where} holds an object of kind {kind!r} from the module {module!r}, which "
            f"failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise ValueError(
            f"{where} holds an object of kind {kind!r}, but its module {module!r} does not "
            f"register that kind ({known}); was it written by another fastrnn version?"
        )
    return cls


@overload
def load(path: str | os.PathLike[str], *, expect: type[_Obj], **kwargs: Any) -> _Obj: ...
@overload
def load(
    path: str | os.PathLike[str], *, expect: tuple[type, ...] | None = None, **kwargs: Any
) -> Any: ...
def load(
    path: str | os.PathLike[str], *, expect: type | tuple[type, ...] | None = None, **kwargs: Any
) -> Any:
    """Read an object written by :func:`save`.

    ``expect``: a class (or tuple of classes) the object must be an instance of, e.g.
    ``fastrnn.load(path, expect=fastrnn.LSTM)``; a file holding anything else is a
    ``ValueError``. Other keyword arguments go to the class's ``_from_state`` (an
    optimizer needs ``params=``, the arrays it updates). A saved dict of arrays loads
    back as a ``dict``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a fastrnn file, is damaged, holds an unknown kind or another
        class than ``expect``, or its data does not fit its configuration; the message
        names the file and the cause.
    """
    where = _describe(path)
    header, arrays = _read(path)
    cls = _lookup(header["kind"], header.get("module"), where)
    if expect is not None:
        wanted = expect if isinstance(expect, tuple) else (expect,)
        if not issubclass(cls, wanted):
            names = " or ".join(c.__name__ for c in wanted)
            raise ValueError(f"{where} holds a {header['kind']}, expected a {names}")
    try:
        return cast(Any, cls)._from_state(header["config"], arrays, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"{where} holds a {header['kind']} whose data does not fit its configuration "
            f"or the arguments given: {exc}"
        ) from None


__all__ = [
    "FORMAT_VERSION",
    "kind_of",
    "load",
    "register",
    "registered_kinds",
    "save",
    "subdict",
]
