"""``clipsift clipcov class-embeddings``: class-prompt embeddings for ClipCov's zero-shot partition.

Encodes every template × class name with the text tower of an open_clip model (the one that made
the pool's embeddings), and writes e_c per class as canonical fp16 (spec §2 i, N5). Class names and
templates ship with clip_benchmark, so nothing is downloaded; weights come from a local file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from clipsift.errors import MissingDependencyError, ParamError
from clipsift.filters.clipcov.numeric import canonical, unit_canonical
from clipsift.io import atomic_path
from clipsift.log import get_logger, progress

log = get_logger("filters.clipcov")


def register(sub) -> None:
    grp = sub.add_parser("clipcov", help="ClipCov helpers (class-prompt embeddings for the zero-shot partition)")
    gsub = grp.add_subparsers(dest="clipcov_command", metavar="SUBCOMMAND", required=True)
    p = gsub.add_parser("class-embeddings", help="encode class prompts with an open_clip text tower and write an npz for clipcov")
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-B-32 (same model as the pool's b32 embeddings)")
    p.add_argument("--pretrained", default=None, help="local weights file or an open_clip tag already in your cache (default: random weights)")
    p.add_argument("--model-config", default=None, help="JSON model config to register first (its file stem becomes a model name)")
    p.add_argument("--dataset", default="imagenet1k", help="clip_benchmark class list and templates (default imagenet1k)")
    p.add_argument("--classnames", default=None, help="text file with one class name per line instead of --dataset's names")
    p.add_argument("--out", required=True, help="output .npz (embeddings K x d fp16, classnames, model, pretrained)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256, help="prompts per forward pass")
    p.set_defaults(func=cmd_class_embeddings)


def clip_benchmark_prompts(dataset: str) -> tuple[list[str], list[str]]:
    """Class names and templates shipped with clip_benchmark (offline)."""
    try:
        import clip_benchmark.datasets as cbd
    except ImportError as exc:
        raise MissingDependencyError("clipcov class-embeddings needs clip_benchmark; pip install clip-benchmark") from exc
    root = Path(cbd.__file__).parent
    names = json.loads((root / "en_classnames.json").read_text())
    templates = json.loads((root / "en_zeroshot_classification_templates.json").read_text())
    if dataset not in names or dataset not in templates:
        raise ParamError(f"{root / 'en_classnames.json'}: no dataset {dataset!r}; choose one of {', '.join(sorted(set(names) & set(templates)))}")
    return list(names[dataset]), list(templates[dataset])


def class_embeddings(model, tokenizer, classnames, templates, device="cpu", batch_size=256) -> np.ndarray:
    """e_c = canonical unit(Σ_t canonical(encode(template_t(name_c)))) for every class (N1, N5)."""
    import torch

    sums = np.zeros((len(classnames), 0))
    for c, name in enumerate(progress(classnames, desc="class prompts", unit="class")):
        prompts = [t.replace("{c}", name) if "{c}" in t else t.format(name) for t in templates]
        feats = []
        with torch.no_grad():
            for s in range(0, len(prompts), batch_size):
                tok = tokenizer(prompts[s : s + batch_size]).to(device)
                feats.append(model.encode_text(tok).float().cpu().numpy())
        f = canonical(np.concatenate(feats).astype(np.float32), f"class {name!r} prompts")
        if sums.shape[1] == 0:
            sums = np.zeros((len(classnames), f.shape[1]))
        sums[c] = f.astype(np.float64).sum(axis=0)
    return unit_canonical(sums)


def cmd_class_embeddings(args) -> int:
    import open_clip
    import torch

    if args.model_config:
        cfg = Path(args.model_config)
        if not cfg.is_file():
            raise ParamError(f"{cfg}: model config not found; give a JSON file like open_clip's model_configs/*.json")
        open_clip.add_model_config(cfg)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    pretrained = args.pretrained
    if pretrained and not Path(pretrained).is_file() and pretrained not in open_clip.list_pretrained_tags_by_model(args.model):
        raise ParamError(f"{pretrained}: weights file not found; pass a local checkpoint path")
    if pretrained is None:
        log.warning("clipcov class-embeddings: no --pretrained, using random weights (tests only)")
    try:
        model = open_clip.create_model(args.model, pretrained=pretrained, device=device)
    except (RuntimeError, ValueError) as exc:
        raise ParamError(f"{args.model}: cannot create model ({exc}); check --model and --pretrained") from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    names, templates = clip_benchmark_prompts(args.dataset)
    if args.classnames:
        names = [s.strip() for s in Path(args.classnames).read_text(encoding="utf-8").splitlines() if s.strip()]
    emb = class_embeddings(model, tokenizer, names, templates, device, args.batch_size)
    out = Path(args.out)
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                embeddings=emb,
                classnames=np.asarray(names),
                model=np.asarray(args.model),
                pretrained=np.asarray(str(pretrained)),
                dataset=np.asarray(args.classnames or args.dataset),
            )
    print(f"{out}: {len(names)} classes x {emb.shape[1]} dims ({args.model}, {len(templates)} templates)", file=sys.stdout)
    return 0
