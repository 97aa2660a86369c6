"""Image shards laid out exactly as img2dataset 1.40.0 writes DataComp (webdataset tars).

Per shard id S: ``{S:08d}.tar`` (members ``<key>.jpg``, ``<key>.json``, ``<key>.txt`` per successful
sample, key = ``f"{S*10**4 + r:012d}"``), ``{S:08d}.parquet`` (one row per input row, failures
included) and ``{S:08d}_stats.json``. Deviation: tar mtimes and stats times are a fixed epoch (and
duration 0.0) so that a pool is bit-identical for a seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipsift.io import atomic_path, atomic_write

SAMPLES_PER_SHARD = 10_000
IMAGE_SIDE = 64  # our stand-in for DataComp's 512 px (keep_ratio_largest, resize_only_if_bigger)
JPEG_QUALITY = 95
SYNTH_EPOCH = 1_700_000_000  # fixed timestamp used for mtimes and stats
FAIL_MESSAGES = (
    "HTTP Error 404: Not Found",
    "HTTP Error 403: Forbidden",
    "<urlopen error [Errno -2] Name or service not known>",
    "The read operation timed out",
)


# img2dataset's per-sample fields, in its json key order (also the shard parquet's columns)
SHARD_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("key", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
    ]
)


def _meta(rows, r: int, key: str) -> dict:
    """One sample's record with every field in img2dataset's order; unset fields are None."""
    meta = dict.fromkeys(SHARD_SCHEMA.names)
    meta.update(uid=rows["uid"][r], face_bboxes=rows["face_bboxes"][r], caption=rows["caption"][r], url=rows["url"][r], key=key)
    return meta


def stored_size(width: np.ndarray, height: np.ndarray, side: int = IMAGE_SIDE):
    """Size after img2dataset's keep_ratio_largest resize (only if bigger) to ``side``."""
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    scale = np.minimum(1.0, side / np.maximum(w, h))
    return np.maximum(1, np.rint(w * scale)).astype(np.int64), np.maximum(
        1, np.rint(h * scale)
    ).astype(np.int64)


def _member(fh, name: str, data: bytes) -> None:
    """Append one regular-file member (GNU header, data, zero padding) — what tarfile.addfile writes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.uname = info.gname = "bigdata"
    info.mtime = SYNTH_EPOCH
    fh.write(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    fh.write(data)
    pad = -len(data) % tarfile.BLOCKSIZE
    if pad:
        fh.write(b"\0" * pad)


def _close_tar(fh) -> None:
    """End-of-archive blocks and padding to a whole record, as tarfile.close() does."""
    fh.write(b"\0" * (2 * tarfile.BLOCKSIZE))
    pad = -fh.tell() % tarfile.RECORDSIZE
    if pad:
        fh.write(b"\0" * pad)


def write_shards(out: Path, first_id: int, rows: dict, squares: np.ndarray) -> list[int]:
    """Write the shards of one input parquet; returns the number of successes per shard.

    ``rows``: uid, caption, url (lists of str), original_width/original_height (int arrays),
    face_bboxes (list of lists), ok (bool array: download succeeded), fail (int array: message id).
    ``squares``: (n, s, s, 3) uint8 renders, resized here to each sample's stored size.
    """
    n = len(rows["uid"])
    out = Path(out)
    ow, oh = rows["original_width"], rows["original_height"]
    sw, sh = stored_size(ow, oh)
    successes = []
    for j, start in enumerate(range(0, n, SAMPLES_PER_SHARD)):
        sid = first_id + j
        stop = min(n, start + SAMPLES_PER_SHARD)
        table_rows = {k: [] for k in SHARD_SCHEMA.names}
        status_dict: dict[str, int] = {}
        with atomic_path(out / f"{sid:08d}.tar") as tmp, open(tmp, "wb") as tar:
            for r in range(start, stop):
                key = f"{sid * 10**4 + (r - start):012d}"
                ok = bool(rows["ok"][r])
                if ok:
                    im = Image.fromarray(squares[r])
                    size = (int(sw[r]), int(sh[r]))
                    if im.size != size:
                        im = im.resize(size, Image.BILINEAR)
                    buf = io.BytesIO()
                    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
                    jpg = buf.getvalue()
                    sha = hashlib.sha256(jpg).hexdigest()
                    meta = _meta(rows, r, key)
                    meta.update(status="success", width=size[0], height=size[1], original_width=int(ow[r]),
                                original_height=int(oh[r]), exif="{}", sha256=sha)
                    _member(tar, key + ".jpg", jpg)
                    _member(tar, key + ".json", json.dumps(meta, indent=4).encode("utf-8"))
                    _member(tar, key + ".txt", str(rows["caption"][r]).encode("utf-8"))
                    status_dict["success"] = status_dict.get("success", 0) + 1
                else:
                    msg = FAIL_MESSAGES[int(rows["fail"][r]) % len(FAIL_MESSAGES)]
                    meta = _meta(rows, r, key)
                    meta.update(status="failed_to_download", error_message=msg)
                    status_dict[msg] = status_dict.get(msg, 0) + 1
                for k in table_rows:
                    table_rows[k].append(meta[k])
            _close_tar(tar)
        n_ok = status_dict.get("success", 0)
        with atomic_path(out / f"{sid:08d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pydict(table_rows, schema=SHARD_SCHEMA), tmp)
        stats = {
            "count": stop - start,
            "successes": n_ok,
            "failed_to_download": stop - start - n_ok,
            "failed_to_resize": 0,
            "duration": 0.0,
            "start_time": float(SYNTH_EPOCH),
            "end_time": float(SYNTH_EPOCH),
            "status_dict": status_dict,
        }
        with atomic_write(out / f"{sid:08d}_stats.json", "w", encoding="utf-8") as fh:
            fh.write(json.dumps(stats, indent=4))
        successes.append(n_ok)
    return successes
