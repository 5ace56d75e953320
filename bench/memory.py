"""Peak memory of one MPP training step at full size, ours against the Hugging Face reference, without the GPU.

    .venv/bin/python bench/memory.py                     # ViT-B/16 @256 and ViT-L/16 @128 (plain, checkpointed), bf16
    .venv/bin/python bench/memory.py --quick --json      # smoke: vit_nano_patch4, seconds
    python bench/memory.py --model vit_huge_patch14 --batch 64 --grad-checkpointing --budget-gib 139

Why: "does ViT-L/16 at batch 128 fit in 80 GB?" should be answerable before renting the GPU, and the
answer should not depend on whose ViT it is. Both implementations go through the package's estimator,
`ssl_vit.train.estimate.step_peak_memory` (fake tensors under torch's MemTracker; `ssl-vit estimate-memory` is the
same estimate for a recipe), whose docstring says what is and is not counted.

`ratio` = reference peak ÷ our peak (higher is better: ours needs less), the smallest over the settings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import common  # noqa: E402  (bench/common.py, a sibling script module)
from step import build_pair, enable_checkpointing  # noqa: E402  (bench/step.py: the two implementations)

from data_tools.progress_bar import progress_bar  # noqa: E402
from ssl_vit.train.estimate import GIB, step_peak_memory  # noqa: E402
from ssl_vit.models import create_model, list_models  # noqa: E402

TITLE = "bench/memory.py — peak memory of an MPP training step, ours vs Hugging Face ViT (estimated, fake tensors)"
# (model, batch, activation checkpointing): issue 7's two GPU settings, and ViT-L/16 without checkpointing.
DEFAULT_SETTINGS = [("vit_base_patch16", 256, False), ("vit_large_patch16", 128, False),
                    ("vit_large_patch16", 128, True)]
QUICK_SETTINGS = [("vit_nano_patch4", 8, False), ("vit_nano_patch4", 8, True)]


def peak_memory(name: str, impl: str, batch: int, *, checkpointing: bool, bf16: bool,
                img_size: int | None = None) -> dict:
    """Peak bytes, by category and in total, of a steady-state training step of `impl` ("ours" | "reference")."""
    with torch.device("meta"):
        ours, reference = build_pair(name, img_size, torch.device("meta"))
    model = ours if impl == "ours" else reference
    if checkpointing:
        enable_checkpointing(model)
    return step_peak_memory(model, batch, ours.backbone.config.img_size, bf16=bf16)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="one registered model (with --batch; default: the three "
                                                      "settings of issue 7, see the module doc)")
    parser.add_argument("--batch", type=int, default=None, help="images per step per device (with --model)")
    parser.add_argument("--img-size", type=int, default=None, help="image side (default: the model's, 224)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute each block in the backward")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast bf16 (default) or fp32")
    parser.add_argument("--budget-gib", type=float, default=78.0,
                        help="device memory to compare against (default 78: what an H100 80GB hands to a process)")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if (args.model is None) != (args.batch is None):
        parser.error("give --model and --batch together (or neither, for the default settings)")
    if args.model is not None:
        if args.model not in list_models():
            parser.error(f"unknown --model {args.model}; registered: {', '.join(list_models())}")
        if args.batch < 1:
            parser.error("--batch must be at least 1")
        args.settings = [(args.model, args.batch, args.grad_checkpointing)]
    else:
        args.settings = QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    common.apply_threads(args)
    results = []
    bar = progress_bar(total=2 * len(args.settings), desc="fake-tensor steps", unit="run", file=sys.stderr)
    for name, batch, checkpointing in args.settings:
        with torch.device("meta"):
            side = args.img_size or create_model(name).config.img_size
        record = {"model": name, "img_size": side, "batch": batch, "grad_checkpointing": checkpointing}
        for impl in ("ours", "reference"):
            record[impl] = peak_memory(name, impl, batch, checkpointing=checkpointing, bf16=args.precision == "bf16",
                                       img_size=args.img_size)
            bar.update()
        record["ours_peak_bytes"] = record["ours"]["total"]
        record["reference_peak_bytes"] = record["reference"]["total"]
        record["ratio"] = record["reference_peak_bytes"] / record["ours_peak_bytes"]
        record["fits"] = record["ours_peak_bytes"] <= args.budget_gib * GIB
        results.append(record)
    bar.close()
    result = {
        "benchmark": "memory",
        "command": common.command_line("bench/memory.py", argv),
        "machine": common.machine_info("cpu"),
        "settings": {"precision": args.precision, "budget_gib": args.budget_gib, "method": "FakeTensorMode + MemTracker"},
        "ratio": min(r["ratio"] for r in results),
        "results": results,
    }
    rows = [[r["model"], f"{r['img_size']}px", r["batch"], "yes" if r["grad_checkpointing"] else "no",
             *(f"{r['ours'][k] / GIB:.2f}" for k in ("params", "grads", "optimizer", "activations", "temporaries")),
             f"**{r['ours_peak_bytes'] / GIB:.1f}**", f"{r['reference_peak_bytes'] / GIB:.1f}", f"{r['ratio']:.2f}×",
             ("yes" if r["fits"] else "**no**") + f" ({args.budget_gib:g} GiB)"]
            for r in results]
    table = common.markdown_table(
        ["model", "size", "batch", "checkpointing", "params", "grads", "AdamW state", "activations", "temp",
         "ours peak GiB", "HF ref peak GiB", "ref ÷ ours", "fits"], rows)
    notes = (f"{args.precision}, a steady-state training step on fake tensors under torch's MemTracker; the category columns "
             "are ours at the moment of the peak (GiB). Not counted: CUDA context and caching-allocator "
             "fragmentation. Reference: transformers ViTModel (sdpa) + the same head and loss.")
    common.finish(args, result, table, title=TITLE, notes=notes)
    return result


if __name__ == "__main__":
    common.run_main(main)
