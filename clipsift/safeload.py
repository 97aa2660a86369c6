"""Reading untrusted files without running code in them: one restricted unpickler for the project.

Every pickle that comes from a user (``torch.save`` centroid and target files, DataComp's
``info.pkl``) is read by :class:`RestrictedUnpickler`, which builds plain containers and a short
list of data types only:

* numpy arrays, dtypes and scalars (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``,
  ``_frombuffer``) under both numpy 1.x (``numpy.core.*``) and numpy 2.x (``numpy._core.*``) names;
* bytes: pickle protocols 0-2 store them as ``_codecs.encode(text, 'latin1')`` (how
  ``torch.save``'s default protocol 2 stores an array's data); that call is emulated
  (``text.encode('latin-1')``), the real ``_codecs.encode`` is never reached;
* ``set``, ``frozenset``, ``collections.OrderedDict`` and pathlib paths (DataComp's info.pkl).

Anything else (``os.system``, ``builtins.eval``, any class's ``__reduce__``) is refused with one
line before it is looked up. Files holding tensors (globals under ``torch.``, storages) are
handed to torch's own weights-only loader, itself a restricted unpickler. Arrays
of Python objects are refused too: they are not embeddings and cannot be memory-mapped.
"""

from __future__ import annotations

import collections
import importlib
import io
import os
import pathlib
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError
from clipsift.log import get_logger

log = get_logger("safeload")

# torch.save's legacy (non-zip) format starts with this number, pickled.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
NPY_MAGIC = b"\x93NUMPY"
_OBJECT_FIX = "; save a float array, e.g. np.save(path, np.asarray(x, dtype=np.float32))"


class UnsafeFileError(ClipsiftError):
    """An untrusted file holds something the restricted readers do not build, or is unreadable."""


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowlist (nothing of it was run)."""


class _TensorStorage(pickle.UnpicklingError):
    """The pickle references torch tensor storages (handled by torch's weights-only loader)."""


def _numpy_module(name: str):
    """numpy's ``_core.<name>`` (numpy 2.x) or ``core.<name>`` (numpy 1.x), whichever is installed."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:  # numpy < 1.26
        return importlib.import_module(f"numpy.core.{name}")


def _encode_latin1(obj, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for bytes: (str, 'latin1') only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise RefusedPickle(
            "_codecs.encode is allowed only as encode(text, 'latin1'), the way pickle stores bytes"
        )
    return obj.encode("latin-1")


def _empty_bytes(*args) -> bytes:
    """``bytes()`` as pickle protocols 0-2 store b'' (any argument is refused)."""
    if args:
        raise RefusedPickle("bytes(...) is allowed only without arguments, the way pickle stores b''")
    return b""


def _allowed_globals() -> dict[tuple[str, str], object]:
    multiarray = _numpy_module("multiarray")
    numeric = _numpy_module("numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode_latin1,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    for builtins in ("builtins", "__builtin__"):  # protocols 0-2 write Python 2's module name
        allowed[(builtins, "set")] = set
        allowed[(builtins, "frozenset")] = frozenset
        allowed[(builtins, "bytes")] = _empty_bytes
    for module in ("pathlib", "pathlib._local"):  # Python >= 3.13 pickles pathlib._local.*
        for name in ("Path", "PurePath", "PosixPath", "PurePosixPath", "PureWindowsPath"):
            allowed[(module, name)] = getattr(pathlib, name)
        allowed[(module, "WindowsPath")] = pathlib.PureWindowsPath  # not instantiable on POSIX
    return allowed


_ALLOWED: dict[tuple[str, str], object] | None = None


class RestrictedUnpickler(pickle._Unpickler):
    """Builds containers, numpy arrays, bytes and paths only; see the module docstring.

    Python's own (pure-Python) unpickler with two doors narrowed: ``find_class`` returns only the
    allowlisted callables, and BUILD (``__setstate__`` / attribute setting) applies only to numpy
    arrays, dtypes and OrderedDicts, so a pickle cannot set attributes on the allowed classes or
    functions themselves (e.g. replace ``pathlib.PosixPath.__repr__`` for the rest of the process).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, **kwargs):
        kwargs.setdefault("fix_imports", False)  # find_class sees the names as written
        super().__init__(file, **kwargs)

    def load_build(self):
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(inst, type) or not isinstance(inst, (np.ndarray, np.dtype, collections.OrderedDict)):
            raise RefusedPickle(f"setting the state of a {type(inst).__name__} is not allowed")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        found = _ALLOWED.get((module, name))
        if found is None and (module == "torch" or module.startswith("torch.")):
            raise _TensorStorage(f"the pickle needs {module}.{name} (tensors)")
        if found is None:
            raise RefusedPickle(f"global {module}.{name} is not allowed")
        return found

    def persistent_load(self, pid):
        raise _TensorStorage("the pickle references torch tensor storages")


_OBJECT_ARRAY = "holds an array of Python objects (dtype object), not numbers"
MAX_DEPTH = 64
MAX_ITEMS = 10**8
INFO_MAX_ITEMS = 10**5  # DataComp's info.pkl holds a few dozen values


def structure_problem(obj, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> str | None:
    """What makes an unpickled object unusable, else None: an object array, a container that
    holds itself, nesting deeper than ``max_depth``, or more than ``max_items`` items once shared
    parts are counted each time they appear (what later code walking it would see).

    Iterative depth-first walk over dicts, lists, tuples and sets; each container is visited once.
    """
    containers = (dict, list, tuple, set, frozenset)

    def children(x):
        return iter([*x.keys(), *x.values()]) if isinstance(x, dict) else iter(x)

    if isinstance(obj, np.ndarray):
        return _OBJECT_ARRAY if obj.dtype.hasobject else None
    if not isinstance(obj, containers):
        return None
    on_path: set[int] = {id(obj)}
    size: dict[int, int] = {}  # expanded item count of each finished container
    stack = [[obj, children(obj), 1]]
    while stack:
        frame = stack[-1]
        child = next(frame[1], _END)
        if child is _END:
            stack.pop()
            on_path.discard(id(frame[0]))
            size[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > max_items:
                    return f"expands to more than {max_items:,} items"
            continue
        if isinstance(child, np.ndarray):
            if child.dtype.hasobject:
                return _OBJECT_ARRAY
            frame[2] += 1
        elif isinstance(child, containers):
            if id(child) in size:
                frame[2] += size[id(child)]
                if frame[2] > max_items:
                    return f"expands to more than {max_items:,} items"
                continue
            if id(child) in on_path:
                return "holds a container that contains itself"
            if len(stack) >= max_depth:
                return f"is nested deeper than {max_depth} levels"
            on_path.add(id(child))
            stack.append([child, children(child), 1])
        else:
            frame[2] += 1
    return None


_END = object()


def object_array_in(obj) -> bool:
    """True when ``obj`` is or holds (in dicts, lists, tuples, sets) an array of Python objects."""
    return structure_problem(obj) == _OBJECT_ARRAY


def unpickle(data: bytes | io.BufferedIOBase):
    """One pickle through :class:`RestrictedUnpickler` (raises pickle.UnpicklingError subclasses)."""
    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return RestrictedUnpickler(fh).load()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {text}"


# ---- torch.save files ----------------------------------------------------------------------------
def _zip_data_pkl(zf: zipfile.ZipFile) -> str | None:
    """The ``<archive>/data.pkl`` member of a torch.save zip (None if the zip is not one)."""
    for n in zf.namelist():
        parts = n.split("/")
        if parts[-1] == "data.pkl" and len(parts) <= 2:
            return n
    return None


def _read_torch_pickle(path: Path):
    """The object pickled in a torch.save file (zip or legacy) or a plain pickle, restricted.

    Raises _TensorStorage when it holds tensors, RefusedPickle for foreign globals.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            name = _zip_data_pkl(zf)
            if name is None:
                raise pickle.UnpicklingError("a zip file without data.pkl (not written by torch.save)")
            return unpickle(zf.read(name))
    with open(path, "rb") as fh:
        first = RestrictedUnpickler(fh).load()
        if not (isinstance(first, int) and first == TORCH_LEGACY_MAGIC):
            return first  # a plain pickle file
        RestrictedUnpickler(fh).load()  # protocol version
        RestrictedUnpickler(fh).load()  # sys_info
        return RestrictedUnpickler(fh).load()


def _tensors_to_numpy(obj):
    """Tensors (bfloat16 widened to float32) as numpy arrays, inside dicts, lists and tuples too."""
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    if isinstance(obj, dict):
        return {k: _tensors_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_numpy(v) for v in obj)
    return obj


def load_torch_file(path: str | os.PathLike, what: str = "file", hint: str = ""):
    """What ``torch.save`` stored in ``path``, without running code from it.

    numpy arrays (any pickle protocol, numpy 1.x or 2.x) come through :class:`RestrictedUnpickler`
    without importing torch; files holding tensors go to ``torch.load(weights_only=True)``, and
    tensors come back as numpy arrays. Anything else raises one :class:`UnsafeFileError` line.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        obj = _read_torch_pickle(path)
    except _TensorStorage:
        obj = _refuse_object_arrays(_torch_weights_only(path, what, tail), path, what, tail)
        return _tensors_to_numpy(obj)
    except RefusedPickle as exc:
        raise UnsafeFileError(f"{path}: {what} refused, {_reason(exc)} (nothing in it was run){tail}") from None
    except OSError as exc:
        raise UnsafeFileError(f"{path}: {what} cannot be read ({exc.strerror or exc}){tail}") from None
    except Exception as exc:  # truncated, corrupt or not a pickle: whatever the unpickler tripped on
        raise UnsafeFileError(f"{path}: {what} is not a torch.save or pickle file ({_reason(exc)}){tail}") from None
    return _refuse_object_arrays(obj, path, what, tail)


def _torch_weights_only(path: Path, what: str, tail: str):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's weights-only loader refused or failed: one line
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch bolds part of its message
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:  # torch's own wording suggests weights_only=False; name the global instead
            reason = f"global {found.group(1)} is not allowed"
        else:
            found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
            reason = f"{type(exc).__name__}: " + " ".join((found.group(1) if found else text.split("\n")[0]).split())[:300]
        raise UnsafeFileError(
            f"{path}: {what} refused by torch's weights-only loader ({reason}; nothing in it was run); "
            f"save tensors or numpy arrays (not both in one file){tail}"
        ) from None
    return obj


def _refuse_object_arrays(obj, path: Path, what: str, tail: str):
    problem = structure_problem(obj)
    if problem == _OBJECT_ARRAY:
        raise UnsafeFileError(f"{path}: {what} {problem}{tail or _OBJECT_FIX}")
    if problem is not None:
        raise UnsafeFileError(f"{path}: {what} {problem}{tail}")
    return obj


# ---- any array file ------------------------------------------------------------------------------
def _is_npz(path: Path) -> bool:
    """A zip of .npy members (np.savez) rather than a torch.save zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            return bool(names) and _zip_data_pkl(zf) is None and all(n.endswith(".npy") for n in names)
    except (OSError, zipfile.BadZipFile):
        return False


def load_array_file(path: str | os.PathLike, what: str = "file", hint: str = "", mmap: bool = False):
    """A ``.npy`` array, an ``.npz`` (as a dict of arrays) or a torch.save / pickle file, safely.

    ``.npy``/``.npz`` never unpickle (``allow_pickle=False``); ``mmap`` memory-maps ``.npy``.
    Object arrays and unreadable files raise one :class:`UnsafeFileError` line naming ``path``.
    """
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise UnsafeFileError(f"{path}: {what} cannot be read ({exc.strerror or exc}){tail}") from None
    try:
        if head == NPY_MAGIC:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if path.suffix == ".npz" or (head[:2] == b"PK" and _is_npz(path)):
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UnsafeFileError(f"{path}: {what} {_OBJECT_ARRAY}{tail or _OBJECT_FIX}") from None
        raise UnsafeFileError(f"{path}: {what} is not a valid numpy file ({_reason(exc)}){tail}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise UnsafeFileError(f"{path}: {what} is not a valid numpy file ({_reason(exc)}){tail}") from None
    return load_torch_file(path, what, hint)


# ---- text files ----------------------------------------------------------------------------------
def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file (a leading BOM dropped); bad bytes are one line naming the line and column."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnsafeFileError(f"{path}: {what} cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UnsafeFileError(
            f"{path}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
            f"the {what} must be UTF-8 text: re-save it as UTF-8"
        ) from None


# ---- DataComp's info.pkl -------------------------------------------------------------------------
def load_info_pkl(path: str | os.PathLike) -> dict:
    """DataComp's ``info.pkl`` (a dict; paths stay pathlib objects), read without running code.

    Raises one :class:`UnsafeFileError` line when the file is unreadable, holds a foreign class,
    or is not a dict.
    """
    path = Path(path)
    hint = "it must be the info.pkl that `clipsift train` or DataComp's train.py wrote"
    try:
        with open(path, "rb") as fh:
            info = RestrictedUnpickler(fh).load()
    except RefusedPickle as exc:
        raise UnsafeFileError(f"{path}: refused, {_reason(exc)} (nothing in it was run); {hint}") from None
    except OSError as exc:
        raise UnsafeFileError(f"{path}: cannot be read ({exc.strerror or exc}); {hint}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise UnsafeFileError(f"{path}: not a readable pickle ({_reason(exc)}); {hint}") from None
    if not isinstance(info, dict):
        raise UnsafeFileError(f"{path}: holds a {type(info).__name__}, not a dict; {hint}")
    problem = structure_problem(info, max_items=INFO_MAX_ITEMS)
    if problem is not None:
        raise UnsafeFileError(f"{path}: {problem}; {hint}")
    return info


def plain(value):
    """``value`` with dict keys as strings, tuples as lists, and paths and other objects as strings."""
    if isinstance(value, dict):
        return {str(k): plain(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(x) for x in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


__all__ = [
    "RefusedPickle",
    "RestrictedUnpickler",
    "UnsafeFileError",
    "load_array_file",
    "load_info_pkl",
    "load_torch_file",
    "object_array_in",
    "structure_problem",
    "plain",
    "read_text",
    "unpickle",
]
