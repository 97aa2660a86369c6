"""Zero-shot task runners, computed as DataComp's ``eval_utils`` does with clip_benchmark.

Classification: clip_benchmark's webdataset loader and classifier (templates normalised, averaged,
renormalised; logits ``100 f W`` without autocast), then acc1, acc5 (None under 5 classes) and
balanced accuracy. Retrieval: clip_benchmark's ``zeroshot_retrieval.evaluate`` with recall@1/5/10
plus ``mean_recall@1``; webdataset retrieval sets (the tiny suite) and DataComp's Hugging Face sets
(Flickr, MSCOCO) give the same keys. WinoGAViL follows ``wino_eval.py``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from clipsift.errors import ClipsiftError, MissingDependencyError
from clipsift.log import get_logger

log = get_logger("eval.zeroshot")


@dataclass
class LoadedModel:
    model: object
    transform: object
    tokenizer: object
    device: str


_CACHE: dict = {}


def load_model(arch: str, checkpoint: str | os.PathLike) -> LoadedModel:
    """DataComp's ``create_model`` (seed 0, eval mode, validation transform), cached per checkpoint."""
    import open_clip
    import torch

    from clipsift.eval.train import register_model_configs

    key = (arch, str(checkpoint), os.path.getmtime(checkpoint) if os.path.exists(checkpoint) else None)
    if key in _CACHE:
        return _CACHE[key]
    if not os.path.exists(checkpoint):
        raise ClipsiftError(f"{checkpoint}: checkpoint not found; train first (clipsift train) or pass --use-model 'ARCH PATH'")
    register_model_configs()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint))
    model.eval()
    model = model.to(device)
    _CACHE.clear()
    _CACHE[key] = LoadedModel(model, transform, open_clip.get_tokenizer(arch), device)
    return _CACHE[key]


def _wds_root(task, data_root: str | None) -> str:
    folder = task.folder
    if data_root is None:
        raise ClipsiftError(f"{task.key}: no evaluation data dir; fetch the sets with `clipsift evalsets download --data-dir DIR`")
    root = os.path.join(data_root, folder)
    if not os.path.exists(os.path.join(root, "test", "nshards.txt")):
        raise ClipsiftError(
            f"{root}: evaluation set for {task.key} is missing (no test/nshards.txt); "
            f"fetch it with `clipsift evalsets download --data-dir {data_root}`"
            + (" or generate it with `clipsift evalsets tiny`" if task.key.startswith("tiny/") else "")
        )
    return root


def _webdataset(task, transform, data_root, batch_size, num_workers):
    import torch
    from clip_benchmark.datasets.builder import build_dataset

    dataset = build_dataset(dataset_name=f"wds/{task.key}", root=_wds_root(task, data_root), transform=transform, split="test", download=False)
    # clip_benchmark 1.6 keeps blank class/template lines; 1.4 (DataComp's pin) drops them
    for attr in ("classes", "templates"):
        value = getattr(dataset, attr, None)
        if isinstance(value, list):
            setattr(dataset, attr, [v for v in value if v])
    if task.size:
        dataset = dataset.with_length((task.size + batch_size - 1) // batch_size)
    loader = torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None, shuffle=False, num_workers=num_workers)
    return dataset, loader


def classification_logits(task, lm: LoadedModel, data_root, batch_size=64, num_workers=4):
    """(logits, targets, dataset) for a webdataset classification task."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    dataset, loader = _webdataset(task, lm.transform, data_root, batch_size, num_workers)
    classnames, templates = getattr(dataset, "classes", None), getattr(dataset, "templates", None)
    if not classnames or not templates:
        raise ClipsiftError(f"{_wds_root(task, data_root)}: classnames.txt or zeroshot_classification_templates.txt missing or empty for {task.key}")
    classifier = zero_shot_classifier(lm, classnames, templates)
    logits, target = zsc.run_classification(lm.model, classifier, loader, lm.device, amp=False)
    return logits, target, dataset


def amp(lm: LoadedModel) -> bool:
    """Autocast as DataComp's pinned clip_benchmark 1.4.0 (``torch.cuda.amp.autocast``): fp16 on
    CUDA, nothing on the CPU. clip_benchmark 1.6 autocasts on the CPU too (bf16), which changes
    classifiers and retrieval embeddings, so it is always called with this flag."""
    return lm.device == "cuda"


def zero_shot_classifier(lm: LoadedModel, classnames, templates):
    """Per class: every template filled, encoded, normalised, averaged, renormalised; [D, C], float32."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    return zsc.zero_shot_classifier(lm.model, lm.tokenizer, classnames, templates, lm.device, amp=amp(lm)).float()


def classification_metrics(logits, target, num_classes: int) -> dict:
    """acc1, acc5 (None below 5 classes) and mean per-class recall, as DataComp's wds_eval."""
    from sklearn.metrics import balanced_accuracy_score

    pred = logits.argmax(axis=1).cpu()
    target = target.cpu()
    if num_classes >= 5:
        acc1, acc5 = topk_accuracy(logits, target, (1, 5))
    else:
        (acc1,) = topk_accuracy(logits, target, (1,))
        acc5 = None
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(balanced_accuracy_score(target, pred))}


def topk_accuracy(logits, target, topk=(1,)) -> list[float]:
    """clip_benchmark's ``accuracy`` (share of rows whose label is among the k highest logits);
    its own version fails under numpy 2 (float() of a 1-element array)."""
    pred = logits.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum().item()) / len(target) for k in topk]


def evaluate_classification(task, lm: LoadedModel, data_root, batch_size=64, num_workers=4) -> dict:
    logits, target, dataset = classification_logits(task, lm, data_root, batch_size, num_workers)
    return classification_metrics(logits, target, len(dataset.classes))


def _retrieval_metrics(lm: LoadedModel, loader) -> dict:
    from clip_benchmark.metrics import zeroshot_retrieval as zsr

    metrics = zsr.evaluate(lm.model, loader, lm.tokenizer, recall_k_list=[1, 5, 10], device=lm.device, amp=amp(lm))
    metrics["mean_recall@1"] = 0.5 * (metrics["text_retrieval_recall@1"] + metrics["image_retrieval_recall@1"])
    return metrics


def evaluate_wds_retrieval(task, lm: LoadedModel, data_root, batch_size=64, num_workers=4) -> dict:
    """Retrieval on a webdataset set (``dataset_type.txt`` = retrieval, captions one per line)."""
    import torch
    from clip_benchmark.datasets.builder import build_dataset

    dataset = build_dataset(dataset_name=f"wds/{task.key}", root=_wds_root(task, data_root), transform=lm.transform, split="test", download=False, task="zeroshot_retrieval")
    loader = torch.utils.data.DataLoader(dataset.batched(batch_size, collation_fn=_collate_captions), batch_size=None, shuffle=False, num_workers=num_workers)
    return _retrieval_metrics(lm, loader)


def _collate_captions(samples):
    import torch

    images = torch.stack([s[0] for s in samples])
    return images, [list(s[1]) for s in samples]


@contextlib.contextmanager
def hf_offline():
    """Hugging Face ``datasets``/hub in offline mode for the block (environment and the already
    imported modules' flags): evaluation reads local caches only, never the network."""
    env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update({k: "1" for k in env})  # for a first import inside the block
    try:
        import datasets
        import huggingface_hub.constants as hub_constants
    except ImportError as exc:
        _restore_env(env)
        raise MissingDependencyError("DataComp reads Flickr, MSCOCO and WinoGAViL with Hugging Face `datasets`; pip install datasets") from exc

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
        datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield datasets
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
        if hasattr(datasets.config, "HF_DATASETS_OFFLINE"):
            datasets.config.HF_DATASETS_OFFLINE = saved[0]
        _restore_env(env)


def _restore_env(env: dict) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _hf_dataset(name: str, data_root: str | None):
    """DataComp's ``load_dataset("nlphuji/<name>", split="test", cache_dir=<data_dir>/hf_cache)``, offline."""
    cache = os.path.join(data_root, "hf_cache") if data_root is not None else None
    with hf_offline() as datasets:
        try:
            return datasets.load_dataset(f"nlphuji/{name}", split="test", cache_dir=cache)
        except Exception as exc:
            where = cache or "the default Hugging Face cache"
            raise ClipsiftError(f"{where}: cannot load nlphuji/{name} offline ({type(exc).__name__}); fetch it with "
                                "`clipsift evalsets download` or write a stand-in with `clipsift evalsets standin`") from exc


class _HFRetrieval:
    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.transform(self.ds[i]["image"]), self.ds[i]["caption"]


def evaluate_hf_retrieval(task, lm: LoadedModel, data_root, batch_size=64, num_workers=4) -> dict:
    """DataComp's retr_eval: nlphuji/<name> test split, clip_benchmark retrieval metrics."""
    import torch
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    ds = _hf_dataset(task.key.split("/", 1)[1], data_root)
    loader = torch.utils.data.DataLoader(_HFRetrieval(ds, lm.transform), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=image_captions_collate_fn)
    return _retrieval_metrics(lm, loader)


def evaluate_winogavil(task, lm: LoadedModel, data_root, batch_size=64, num_workers=4) -> dict:
    """WinoGAViL as ``wino_eval.py``: cue prompt with an article, pick the n most similar images."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import jaccard_score

    ds = _hf_dataset("winogavil", data_root)
    scores, groups = [], []
    autocast = torch.autocast("cuda") if lm.device == "cuda" else torch.autocast("cpu", enabled=False)
    for ex in ds:
        cue = ex["cue"].lower()
        prompt = ("An " if cue[:1] in "aeiou" else "A ") + cue
        images = torch.stack([lm.transform(im) for im in ex["candidate_images"]]).to(lm.device)
        with torch.no_grad(), autocast:
            tf = F.normalize(lm.model.encode_text(lm.tokenizer([prompt]).to(lm.device)), dim=-1)
            imf = F.normalize(lm.model.encode_image(images), dim=-1)
            sim = (tf @ imf.T).float().cpu().numpy()[0]
        y_true = np.isin(ex["candidates"], ex["associations"])
        n = int(y_true.sum())
        y_pred = np.isin(np.arange(len(sim)), np.argsort(sim)[-n:])  # [-0:] selects all, as upstream
        scores.append(jaccard_score(y_true, y_pred))
        groups.append(len(y_true))
    if not scores:
        raise ClipsiftError("nlphuji/winogavil: the test split is empty")
    scores, groups = np.array(scores), np.array(groups)

    def mean(sel):  # wino_eval.py's means in example order; an empty group is null (NaN upstream)
        return float(scores[sel].mean()) if sel.any() else None

    metrics = {"avg_jaccard_score": float(scores.mean())}
    for k in (5, 6, 10, 12):
        metrics[f"jaccard_score_{k}"] = mean(groups == k)
    metrics["jaccard_score_5-6"] = mean(groups <= 6)
    metrics["jaccard_score_10-12"] = mean(groups >= 10)
    return metrics


def is_wds_retrieval(task, data_root: str | None) -> bool:
    if data_root is None:
        return False
    p = Path(data_root) / task.folder / "dataset_type.txt"
    return p.exists() and p.read_text().strip().lower() == "retrieval"
