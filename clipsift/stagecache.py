"""Per-shard results of map steps kept in a run folder, so that a run whose driver was killed
resumes from what its workers had finished, with the same bytes.

Each ``map_shards`` call of a run is a stage. Its folder name carries a fingerprint of everything
the results depend on: the function with its bound parameters (its pickle), the columns and
embedding keys read, the candidate uids, the bad-embedding policy and the pool's shard list. A
worker writes its shard's result under a temporary name and renames it, so a file present is a
file complete; a stage whose shards are all present gets a ``_DONE.json`` marker. Another input or
other parameters give another fingerprint, so nothing stale is ever reused.

Results are stored without pickle (a run folder may come from anywhere): a JSON skeleton of
tuples, lists, dicts, Counters and scalars, with numpy arrays in the same ``.npz``. A stage whose
results hold anything else (Arrow arrays, objects) is simply not kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np

from clipsift.log import get_logger

log = get_logger("stages")

DONE = "_DONE.json"


class NotStorable(TypeError):
    """A result holds something the run folder does not keep (it is recomputed instead)."""


# ---- results as JSON + arrays -----------------------------------------------------------------
def _encode(obj, arrays: list):
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise NotStorable("object array")
        arrays.append(obj)
        return {"a": len(arrays) - 1}
    if isinstance(obj, bool | type(None) | str):
        return obj
    if isinstance(obj, np.generic):
        if isinstance(obj, np.bool_ | np.integer | np.floating):
            arrays.append(np.asarray(obj))
            return {"s": len(arrays) - 1}
        raise NotStorable(type(obj).__name__)
    if isinstance(obj, int | float):
        return {"f": obj} if isinstance(obj, float) else obj
    if isinstance(obj, Counter):
        if not all(isinstance(k, str) for k in obj):
            raise NotStorable("Counter with non-string keys")
        return {"C": [[k, _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise NotStorable("dict with non-string keys")
        return {"d": [[k, _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"t": [_encode(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return {"l": [_encode(v, arrays) for v in obj]}
    raise NotStorable(type(obj).__name__)


def _decode(node, arrays):
    if isinstance(node, dict):
        (tag, val), = node.items()
        if tag == "a":
            return arrays[f"a{val}"]
        if tag == "s":
            return arrays[f"a{val}"][()]
        if tag == "f":
            return float(val)
        if tag == "C":
            return Counter({k: _decode(v, arrays) for k, v in val})
        if tag == "d":
            return {k: _decode(v, arrays) for k, v in val}
        if tag == "t":
            return tuple(_decode(v, arrays) for v in val)
        if tag == "l":
            return [_decode(v, arrays) for v in val]
        raise ValueError(f"unknown tag {tag!r}")
    return node


def dumps(obj) -> bytes:
    """``obj`` as one ``.npz`` (raises :class:`NotStorable`)."""
    arrays: list = []
    skeleton = _encode(obj, arrays)
    buf = io.BytesIO()
    np.savez(buf, __skeleton__=np.frombuffer(json.dumps(skeleton).encode(), dtype=np.uint8),
             **{f"a{i}": a for i, a in enumerate(arrays)})
    return buf.getvalue()


def loads(data: bytes):
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    skeleton = json.loads(arrays.pop("__skeleton__").tobytes().decode())
    return _decode(skeleton, arrays)


# ---- the run folder ---------------------------------------------------------------------------
def url_fs(url: str):
    """(None, absolute path) for a local path or ``file://`` URL, else fsspec's (filesystem, path)."""
    if "://" not in url or url.startswith("file://"):
        return None, os.path.abspath(url.removeprefix("file://"))
    import fsspec

    return fsspec.core.url_to_fs(url)


@dataclass(frozen=True)
class Stage:
    """One map step's folder in the run folder (picklable: workers write into it)."""

    url: str
    name: str

    def _shard_file(self, shard) -> str:
        return f"{self.url}/{shard.rank:06d}-{shard.name}.npz"

    def load(self, shard):
        """The shard's stored result, or None when absent or unreadable (then it is recomputed)."""
        fs, path = url_fs(self._shard_file(shard))
        try:
            if fs is None:
                with open(path, "rb") as fh:
                    data = fh.read()
            else:
                with fs.open(path, "rb") as fh:
                    data = fh.read()
        except (FileNotFoundError, OSError):
            return None
        try:
            return loads(data)
        except Exception as exc:  # noqa: BLE001 - a damaged file is recomputed, never trusted
            log.warning("%s: unreadable stored result (%s); recomputing this shard", path, exc)
            return None

    def store(self, shard, result) -> bool:
        """Write the shard's result atomically; False when it cannot be stored."""
        try:
            data = dumps(result)
        except NotStorable:
            return False
        fs, path = url_fs(self._shard_file(shard))
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        if fs is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            fs.makedirs(os.path.dirname(path), exist_ok=True)
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
            fs.mv(tmp, path)
        return True

    def is_done(self) -> bool:
        fs, path = url_fs(f"{self.url}/{DONE}")
        return os.path.isfile(path) if fs is None else fs.exists(path)

    def mark_done(self, info: dict) -> None:
        fs, path = url_fs(f"{self.url}/{DONE}")
        data = json.dumps(info, indent=1).encode()
        if fs is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)  # a step none of whose results could be stored
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            with fs.open(path, "wb") as fh:
                fh.write(data)


class RunFolder:
    """Where a run keeps its stages: a local path or any fsspec URL every worker can reach."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/")
        fs, path = url_fs(self.url)
        if fs is None:
            os.makedirs(path, exist_ok=True)
        else:
            fs.makedirs(path, exist_ok=True)

    def stage(self, desc: str, key: dict, fn) -> Stage | None:
        """The stage of one map step, or None when ``fn`` cannot be fingerprinted (not kept)."""
        try:
            fn_bytes = pickle.dumps(fn, protocol=5)
        except Exception:  # noqa: BLE001 - unpicklable: this stage is not kept
            return None
        h = hashlib.sha256(fn_bytes)
        h.update(json.dumps(key, sort_keys=True, default=str).encode())
        slug = "".join(c if c.isalnum() or c in "-_" else "-" for c in (desc or "map"))[:40]
        return Stage(f"{self.url}/{slug}-{h.hexdigest()[:16]}", slug)


def candidates_digest(candidates) -> str:
    if candidates is None:
        return "all"
    if hasattr(candidates, "digest"):  # CandidateRows: the sha256 of the same distinct sorted uids
        return candidates.digest[:32]
    return hashlib.sha256(np.ascontiguousarray(candidates).tobytes()).hexdigest()[:32]
