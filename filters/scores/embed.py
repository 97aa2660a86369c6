"""``clipsift embed``: image shards (img2dataset layout) -> DataComp metadata from any open_clip model.

For every input shard ``<S>.tar`` one pair ``<S>.parquet`` + ``<S>.npz`` is written, row-aligned
with the tar's samples (tar order; samples without a json member are skipped as the resharder
does, undecodable images are skipped and counted):

* parquet: ``uid``, ``url``, ``text``, ``original_width``, ``original_height``, ``sha256`` (from
  the sample's json and txt) and ``clip_<name>_similarity_score``;
* npz: ``<name>_img`` and ``<name>_txt``, L2-normalised features stored as float16 (the pool's
  dtype; ``dtype=float32`` keeps full precision).

The score is the cosine of the *stored* vectors (float64 arithmetic), as in the released pools,
so a filter reading the column and one reading the npz agree. With OpenAI's ViT-B/32 or ViT-L/14
and ``--name b32``/``l14`` the columns carry DataComp's names (values differ from the released
ones by the image preprocessing: DataComp used unblurred 512 px originals). DFN's open_clip
weights with ``--name dfn`` give ``clip_dfn_similarity_score``.

Each pair is written atomically (npz, then parquet): an interrupted run resumes from the first
shard without a parquet. ``embed.json`` in the output folder records the model, the weights'
sha256 and the settings; resuming with other settings is refused. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipsift.errors import ClipsiftError, ParamError
from clipsift.io import atomic_path, write_json
from clipsift.log import get_logger, progress

log = get_logger("embed")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
SCHEMA_BASE = [
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
    ("original_width", pa.int64()), ("original_height", pa.int64()), ("sha256", pa.string()),
]


@dataclass
class EmbedModel:
    model: object
    preprocess: object
    tokenizer: object
    device: str
    arch: str
    pretrained: str
    sha256: str


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    """OpenAI's released .pt files are TorchScript archives (a zip with a code/ folder)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist()[:64])


def load_model(arch: str, pretrained: str, device: str = "auto", model_config: str | None = None) -> EmbedModel:
    """An open_clip model from a local weights file; nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    import torch

    from clipsift.eval.train import register_model_configs

    register_model_configs()
    if model_config:
        cfg = Path(model_config)
        if not cfg.is_file():
            raise ParamError(f"{cfg}: model config not found; give a JSON file like open_clip's model_configs/*.json")
        open_clip.add_model_config(cfg)
    if arch not in open_clip.list_models():
        raise ParamError(f"--model {arch}: unknown open_clip architecture; see open_clip.list_models() or pass --model-config JSON")
    path = Path(pretrained)
    if not path.is_file():
        raise ParamError(f"{path}: weights file not found; embed never downloads, pass a local checkpoint (--pretrained PATH)")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        if _is_torchscript(path):  # OpenAI's archive: read as open_clip's load_openai_model does
            from open_clip.openai import load_openai_model

            model = load_openai_model(str(path), precision="fp32", device="cpu")
            preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device="cpu")
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise ParamError(f"{path}: cannot load these weights into {arch} ({str(exc).splitlines()[0][:200]}); check --model") from None
    model.eval().to(device)
    return EmbedModel(model, preprocess, open_clip.get_tokenizer(arch), device, arch, str(path), file_sha256(path))


# ---------------------------------------------------------------- reading shards


def list_shards(shards_dir) -> list[Path]:
    d = Path(shards_dir)
    if not d.is_dir():
        raise ParamError(f"{d}: shard folder not found; give the img2dataset output folder (with 00000000.tar ...)")
    tars = sorted(p for p in d.iterdir() if p.suffix == ".tar" and p.is_file())
    if not tars:
        raise ParamError(f"{d}: no .tar shards in this folder; give the img2dataset output folder (webdataset format)")
    return tars


def iter_samples(tar_path: Path):
    """(key, {ext: bytes}) per sample, streaming, in tar order (members grouped by key prefix)."""
    key, members = None, {}
    try:
        with tarfile.open(tar_path, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                k, ext = base.split(".", 1)
                data = tf.extractfile(m).read()
                if k != key:
                    if key is not None:
                        yield key, members
                    key, members = k, {}
                members[ext.lower()] = data
    except tarfile.TarError as exc:
        raise ClipsiftError(f"{tar_path}: unreadable tar ({exc}); re-download the shard") from None
    if key is not None:
        yield key, members


def sample_record(tar_path: Path, key: str, members: dict) -> dict | None:
    """The metadata row of one sample (None without a json member)."""
    if "json" not in members:
        return None
    try:
        meta = json.loads(members["json"])
    except ValueError:
        raise ClipsiftError(f"{tar_path}: sample {key}: json member is not valid JSON; re-download the shard") from None
    uid = meta.get("uid")
    if not isinstance(uid, str) or len(uid) != 32:
        raise ClipsiftError(
            f"{tar_path}: sample {key}: json has no 32-hex uid; download with img2dataset save_additional_columns=['uid']"
        )
    text = members["txt"].decode("utf-8", "replace") if "txt" in members else (meta.get("caption") or "")
    ints = {}
    for f in ("original_width", "original_height"):
        v = meta.get(f)
        ints[f] = int(v) if isinstance(v, (int, float)) and v == v else None
    return {"uid": uid.lower(), "url": meta.get("url"), "text": text, **ints, "sha256": meta.get("sha256")}


# ---------------------------------------------------------------- pure per-batch steps


def encode_batch(em: EmbedModel, images, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 (image, text) features of one batch; autocast fp16 on CUDA."""
    import contextlib

    import torch

    tokens = em.tokenizer(texts)
    ctx = torch.autocast("cuda", dtype=torch.float16) if em.device.startswith("cuda") else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        img = em.model.encode_image(images.to(em.device))
        txt = em.model.encode_text(tokens.to(em.device))
    img = torch.nn.functional.normalize(img.float(), dim=-1)
    txt = torch.nn.functional.normalize(txt.float(), dim=-1)
    return img.cpu().numpy(), txt.cpu().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of stored vectors in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ij,ij->i", a, b) / den


def metadata_table(rows: list[dict], img: np.ndarray, txt: np.ndarray, name: str) -> pa.Table:
    cols = {k: pa.array([r[k] for r in rows], t) for k, t in SCHEMA_BASE}
    cols[f"clip_{name}_similarity_score"] = pa.array(cosine(img, txt), pa.float64())
    return pa.table(cols)


# ---------------------------------------------------------------- shards


def prepare_image(preprocess, data: bytes):
    """Decode and preprocess one image (None when it does not decode); runs in decode threads."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return preprocess(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def embed_shard(em: EmbedModel, tar_path: Path, out_dir: Path, name: str, batch_size: int, dtype, pool=None) -> dict:
    """Write ``<stem>.npz`` then ``<stem>.parquet`` for one tar; returns counters.

    ``pool`` (a thread pool) decodes and preprocesses a batch's images in parallel; order is kept.
    """
    import torch

    rows, imgs, txts = [], [], []
    pending: list[tuple[dict, bytes]] = []
    counts = {"samples": 0, "no_json": 0, "bad_image": 0, "no_image": 0}
    prep = partial(prepare_image, em.preprocess)

    def flush():
        if not pending:
            return
        datas = [d for _, d in pending]
        tensors = list(pool.map(prep, datas)) if pool is not None else [prep(d) for d in datas]
        ok = [i for i, t in enumerate(tensors) if t is not None]
        counts["bad_image"] += len(tensors) - len(ok)
        if ok:
            recs = [pending[i][0] for i in ok]
            a, b = encode_batch(em, torch.stack([tensors[i] for i in ok]), [r["text"] for r in recs])
            imgs.append(a.astype(dtype))
            txts.append(b.astype(dtype))
            rows.extend(recs)
        pending.clear()

    for key, members in iter_samples(tar_path):
        rec = sample_record(tar_path, key, members)
        if rec is None:
            counts["no_json"] += 1
            continue
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            counts["no_image"] += 1
            continue
        pending.append((rec, members[ext]))
        if len(pending) >= batch_size:
            flush()
    flush()
    counts["samples"] = len(rows)
    dim = imgs[0].shape[1] if imgs else 0
    img = np.concatenate(imgs) if imgs else np.zeros((0, dim), dtype)
    txt = np.concatenate(txts) if txts else np.zeros((0, dim), dtype)
    stem = tar_path.stem
    table = metadata_table(rows, img, txt, name)
    with atomic_path(out_dir / f"{stem}.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f"{name}_img": img, f"{name}_txt": txt})
    with atomic_path(out_dir / f"{stem}.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return counts


def embed_folder(
    shards_dir, out_dir, *, arch: str, pretrained: str, name: str, batch_size: int = 256, device: str = "auto",
    dtype: str = "float16", model_config: str | None = None, em: EmbedModel | None = None, decode_threads: int | None = None,
) -> dict:
    """Embed every shard of ``shards_dir`` into ``out_dir`` (resumable); returns a summary."""
    if not NAME_RE.match(name or ""):
        raise ParamError(f"--name {name!r}: use lowercase letters, digits and _ (e.g. l14, dfn); it names the columns")
    if dtype not in ("float16", "float32"):
        raise ParamError(f"--dtype {dtype}: choose float16 or float32")
    if batch_size < 1:
        raise ParamError(f"--batch-size {batch_size}: must be at least 1")
    tars = list_shards(shards_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pretrained_path = Path(pretrained)
    if not pretrained_path.is_file():
        raise ParamError(f"{pretrained_path}: weights file not found; embed never downloads, pass a local checkpoint (--pretrained PATH)")
    settings = {"model": arch, "weights_sha256": file_sha256(pretrained_path), "name": name, "dtype": dtype}
    manifest = out / "embed.json"
    if manifest.exists():
        try:
            prev = json.loads(manifest.read_text())
        except ValueError:
            prev = {}
        old = {k: prev.get(k) for k in settings}
        if old != settings:
            diff = ", ".join(f"{k}: {old[k]} -> {settings[k]}" for k in settings if old[k] != settings[k])
            raise ParamError(f"{manifest}: this folder holds metadata made with other settings ({diff}); use a new --out")
    todo = [t for t in tars if not (out / f"{t.stem}.parquet").exists() or not (out / f"{t.stem}.npz").exists()]
    write_json(manifest, {**settings, "weights": str(pretrained_path), "shards": str(shards_dir), "state": "running"})
    if len(todo) < len(tars):
        log.info("embed: %d of %d shards already done in %s; resuming", len(tars) - len(todo), len(tars), out)
    t0 = time.perf_counter()
    total = {"shards": len(tars), "skipped_done": len(tars) - len(todo), "samples": 0, "no_json": 0, "bad_image": 0, "no_image": 0}
    if todo:
        em = em or load_model(arch, pretrained, device, model_config)
        np_dtype = np.float16 if dtype == "float16" else np.float32
        bar = progress(total=len(todo), desc=f"embed {name}", unit="shard")
        threads = decode_threads if decode_threads is not None else min(8, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        try:
            for t in todo:
                c = embed_shard(em, t, out, name, batch_size, np_dtype, pool)
                for k, v in c.items():
                    total[k] += v
                bar.update(1)
                bar.set_postfix(samples=total["samples"])
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown()
        total["device"] = em.device
    total["seconds"] = round(time.perf_counter() - t0, 3)
    total["samples_per_s"] = round(total["samples"] / total["seconds"], 1) if total["seconds"] and total["samples"] else None
    for k in ("no_json", "bad_image", "no_image"):
        if total[k]:
            log.warning("embed: %d samples skipped (%s)", total[k], k.replace("_", " "))
    write_json(manifest, {**settings, "weights": str(pretrained_path), "shards": str(shards_dir), "state": "done", **total})
    return total
