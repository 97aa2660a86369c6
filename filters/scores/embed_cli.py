"""``clipsift embed``: the command group registered through the ``clipsift.commands`` entry point."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="image shards (img2dataset) -> DataComp metadata (parquet + npz) from a local open_clip model",
        description="Compute clip_<name>_similarity_score and <name>_img/<name>_txt for every sample of every shard; "
        "resumable per shard; nothing is downloaded.",
    )
    p.add_argument("--shards", required=True, help="img2dataset output folder (00000000.tar ... with json members holding uid)")
    p.add_argument("--out", required=True, help="metadata folder to write (<shard>.parquet + <shard>.npz)")
    p.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-L-14, ViT-B-32, ViT-H-14-quickgelu (DFN), clipsift-tiny")
    p.add_argument("--pretrained", required=True, help="local weights file (open_clip checkpoint, clipsift train's epoch_latest.pt, OpenAI .pt)")
    p.add_argument("--name", required=True, help="column/key name: l14 or b32 reproduce the pool's names, dfn for DFN")
    p.add_argument("--model-config", default=None, help="JSON model config to register first (its file stem becomes a model name)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto (CUDA with fp16 autocast when present), cpu or cuda")
    p.add_argument("--decode-threads", type=int, default=None, help="threads decoding and preprocessing images (default: cores, at most 8)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="npz feature dtype (the pools use float16)")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args) -> int:
    from clipsift.filters.scores.embed import embed_folder

    summary = embed_folder(
        args.shards, args.out, arch=args.model, pretrained=args.pretrained, name=args.name, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, model_config=args.model_config, decode_threads=args.decode_threads,
    )
    print(json.dumps(summary), file=sys.stdout)
    return 0
