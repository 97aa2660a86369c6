"""Which tower varies from seed to seed on the tiny suite's Concepts task: image or text?

For each checkpoint, on the suite's concept images (``wds_tiny-concept_test``, read by the
evaluation's own loader):

* ``zero-shot``: accuracy of the bare class names as the classifier (no templates);
* ``probe``: a linear probe on the image features (multinomial logistic regression with L2 5e-5,
  about scikit-learn's C = 10 at this size; 4-fold cross-validation), i.e. how well the image
  tower separates the concepts whatever the text says;
* ``text cos``: the mean cosine between the class names' text embeddings (1 = the text tower
  cannot tell the names apart).

    .venv/bin/python benchmarks/concept_probe.py --suite OUT/tiny_evalsets OUT/runs/oracle_s0 OUT/runs/oracle_s1 ...

A run folder is one written by ``clipsift track`` or ``benchmarks/validity_tiny.py``; its model
architecture comes from its ``info.pkl`` (read with clipsift's restricted unpickler).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _fit_softmax(x, y, n_cls: int, l2: float):
    """(w, b) of an L2-regularised multinomial logistic regression fitted with L-BFGS."""
    import torch

    w = torch.zeros(x.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(feats: np.ndarray, labels: np.ndarray, folds: int = 4, l2: float = 5e-5) -> float:
    """Mean held-out accuracy of the linear probe over ``folds`` folds (a fixed shuffle)."""
    import torch

    x, y = torch.from_numpy(feats).float(), torch.from_numpy(labels).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    accs = []
    for k in range(folds):
        held = torch.zeros(len(y), dtype=torch.bool)
        held[order[k::folds]] = True
        w, b = _fit_softmax(x[~held], y[~held], int(y.max()) + 1, l2)
        accs.append(((x[held] @ w + b).argmax(1) == y[held]).float().mean().item())
    return float(np.mean(accs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", required=True, type=Path, help="the tiny suite folder (OUT/tiny_evalsets)")
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (each with info.pkl and a checkpoint)")
    args = ap.parse_args()
    import torch

    from clipsift.eval import zeroshot
    from clipsift.eval.tasks import load_tasks
    from clipsift.eval.zeroshot import load_model
    from clipsift.safeload import load_info_pkl

    torch.set_num_threads(1)
    task = next(t for t in load_tasks("tiny") if t.key == "tiny/concept")
    print("run | zero-shot (bare names) | image probe | text cos between classes")
    for run in args.runs:
        info = load_info_pkl(run / "info.pkl")
        ckpt = next(iter(sorted(run.glob("*/checkpoints/epoch_latest.pt"))), None)
        if ckpt is None:
            print(f"{run.name}: no checkpoint (*/checkpoints/epoch_latest.pt), skipped")
            continue
        lm = load_model(info["scale_config"]["model"], ckpt)
        # the evaluation's own reader: the same images, transform and class names as the Concepts task
        dataset, loader = zeroshot._webdataset(task, lm.transform, str(args.suite), 256, 0)
        with torch.no_grad():
            batches = [(lm.model.encode_image(x, normalize=True), y) for x, y in loader]
            txt = lm.model.encode_text(lm.tokenizer(dataset.classes), normalize=True).numpy()
        img = torch.cat([f for f, _ in batches]).numpy()
        labels = torch.cat([y for _, y in batches]).numpy()
        zero_shot = float((np.argmax(img @ txt.T, 1) == labels).mean())
        text_cos = float((txt @ txt.T)[~np.eye(len(txt), dtype=bool)].mean())
        print(f"{run.name} | {zero_shot:.3f} | {probe_accuracy(img, labels):.3f} | {text_cos:.3f}")


if __name__ == "__main__":
    main()
