"""Export a training run's backbone (and heads) to Hugging Face, timm or our safetensors format.

Examples:
  mammodino export runs/tiny --format hf --output exports/tiny-hf
  mammodino export runs/tiny/checkpoints/step_00001000.pt --format safetensors --output out/

RUN is a run folder (its `checkpoints/last.pt`), a checkpoints folder or a checkpoint file. The
teacher's weights are exported unless `--weights student` (DINOv2 evaluates and releases the
teacher). `hf` writes config.json + model.safetensors for `transformers.AutoModel`; `timm` writes
timm's vit_*_dinov2 layout; `safetensors` writes backbone and all heads + architecture.json.
"""

from __future__ import annotations

import argparse

HELP = "export a run's backbone (and heads) to hf, timm or safetensors"
FORMATS = ("hf", "timm", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder, checkpoints folder or checkpoint file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument(
        "--weights", default="teacher", choices=("teacher", "student"), help="which network"
    )


def _split(state_dict: dict) -> dict[str, dict]:
    """{'backbone': {...}, 'dino_head': {...}, ...} from a ModuleDict state dict."""
    groups: dict[str, dict] = {}
    for key, value in state_dict.items():
        name, _, rest = key.partition(".")
        groups.setdefault(name, {})[rest] = value
    return groups


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from mammodino.errors import CheckpointError
    from mammodino.models.export import export_hf, export_safetensors, export_timm
    from mammodino.models.heads import ProjectionHead, dino_head_from_state_dict
    from mammodino.models.vit import VisionTransformer
    from mammodino.train.checkpoint import load_checkpoint

    source = Path(args.run)
    if (source / "checkpoints").is_dir():
        source = source / "checkpoints"
    payload = load_checkpoint(source)
    if "arch" not in payload or args.weights not in payload:
        raise CheckpointError(f"{source.name}: checkpoint lacks 'arch' or '{args.weights}' weights")
    groups = _split(payload[args.weights])
    backbone = VisionTransformer(**payload["arch"])
    backbone.load_state_dict(groups.pop("backbone"))
    backbone.eval()
    out = Path(args.output)
    if args.format == "hf":
        export_hf(backbone, out)
    elif args.format == "timm":
        export_timm(backbone, out)
    else:
        heads = {}
        for name, sd in groups.items():
            if "last_layer.weight_v" in sd:
                heads[name] = dino_head_from_state_dict(sd)
            elif set(sd) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}:
                first, last = sd["mlp.0.weight"], sd["mlp.2.weight"]
                heads[name] = ProjectionHead(first.shape[1], last.shape[0], first.shape[0])
                heads[name].load_state_dict(sd)
            else:
                raise CheckpointError(f"{name!r} in the checkpoint is no head this export knows")
        extra = {"step": int(payload["step"]), "weights": args.weights}
        export_safetensors(backbone, heads, out, extra=extra)
    Console(stderr=True).print(f"exported {args.weights} (step {payload['step']}) to {out}")
    return 0
