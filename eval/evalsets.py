"""DataComp's evaluation sets on local disk: download (huggingface_hub) and completeness checks.

Layout as DataComp's ``download_evalsets.py``: webdataset tasks in ``<dir>/wds_<key>_test/``
(from the ``djghosh/wds_<key>_test`` dataset repos), retrieval and WinoGAViL through Hugging Face
``datasets`` with ``cache_dir=<dir>/hf_cache``. Nothing is fetched at evaluation time when a
data dir is given; a missing task fails with a message naming this command. Small generated
stand-ins of all 40 sets in the same layouts come from ``clipsift evalsets standin``
(:mod:`clipsift.eval.standin`).
"""

from __future__ import annotations

import os
from pathlib import Path

from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.eval.tasks import EvalTask, load_tasks
from clipsift.log import get_logger

log = get_logger("eval.evalsets")

HF_TASK_PREFIXES = ("retrieval/", "misc/")


def is_hf_task(task: EvalTask) -> bool:
    return task.key.startswith(HF_TASK_PREFIXES)


def _wds_problem(root: Path) -> str | None:
    nshards = root / "test" / "nshards.txt"
    if not nshards.exists():
        return f"{nshards} not found"
    try:
        n = int(nshards.read_text().strip())
    except ValueError:
        return f"{nshards} is not a number"
    absent = [i for i in range(n) if not (root / "test" / f"{i}.tar").exists()]
    if absent:
        return f"{len(absent)} of {n} tars missing under {root / 'test'}"
    if not (root / "dataset_type.txt").exists() or (root / "dataset_type.txt").read_text().strip() != "retrieval":
        for name in ("classnames.txt", "zeroshot_classification_templates.txt"):
            if not (root / name).exists():
                return f"{root / name} not found"
    return None


def _hf_problem(task: EvalTask, data_dir: Path) -> str | None:
    name = task.key.split("/", 1)[1]
    cache = data_dir / "hf_cache"
    if not cache.is_dir() or not any(name in p.name for p in cache.iterdir()):
        return f"nlphuji/{name} not in {cache}"
    return None


def missing_tasks(data_dir: str | os.PathLike, suite: str = "datacomp38") -> list[tuple[str, str]]:
    """(task key, what is missing) for every task of ``suite`` whose data is not under ``data_dir``."""
    data_dir = Path(data_dir)
    out = []
    for task in load_tasks(suite):
        why = _hf_problem(task, data_dir) if is_hf_task(task) and not (data_dir / task.folder).exists() else _wds_problem(data_dir / task.folder)
        if why:
            out.append((task.key, why))
    return out


def download(data_dir: str | os.PathLike, tasks: list[str] | None = None) -> list[str]:
    """Fetch DataComp's evaluation sets into ``data_dir``; returns the task keys now present.

    Webdataset repos come with ``huggingface_hub.snapshot_download`` (files verified against the
    hub, re-downloaded when corrupt); Flickr, MSCOCO and WinoGAViL with ``datasets.load_dataset``.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise MissingDependencyError("downloading evaluation sets needs huggingface_hub; pip install huggingface_hub") from exc
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    todo = [t for t in load_tasks("datacomp38") if tasks is None or t.key in tasks]
    if tasks:
        unknown = sorted(set(tasks) - {t.key for t in todo})
        if unknown:
            raise ClipsiftError(f"unknown DataComp task(s) {unknown}; see clipsift/eval/datacomp_tasks.tsv")
    done, failed = [], []
    for task in todo:
        try:
            if is_hf_task(task):
                try:
                    import datasets
                except ImportError as exc:
                    raise MissingDependencyError(f"{task.key} is read with Hugging Face datasets; pip install datasets") from exc
                datasets.load_dataset(f"nlphuji/{task.key.split('/', 1)[1]}", split="test", cache_dir=str(data_dir / "hf_cache"))
            else:
                snapshot_download(
                    repo_id=f"djghosh/{task.folder}", repo_type="dataset", local_dir=str(data_dir / task.folder),
                    allow_patterns=["classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt", "test/*"],
                )
            done.append(task.key)
            log.info("%s: ready", task.key)
        except MissingDependencyError:
            raise
        except Exception as exc:  # network or permission trouble with one set: report, continue
            failed.append(task.key)
            log.error("%s: download failed (%s: %s)", task.key, type(exc).__name__, exc)
    if failed:
        raise ClipsiftError(f"{data_dir}: {len(failed)} evaluation set(s) failed to download ({', '.join(failed)}); check the network and rerun")
    return done
