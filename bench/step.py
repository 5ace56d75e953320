"""One masked-patch-prediction training step, ours against a Hugging Face `transformers` ViT of the same size.

    .venv/bin/python bench/step.py                       # CPU: ViT-Ti/16 and ViT-S/16, 224px, batch 8 (~1-2 min)
    .venv/bin/python bench/step.py --quick --json        # smoke: vit_nano_patch4 at 32px, seconds
    python bench/step.py                                 # GPU: vit_base_patch16, batch 256, bf16, compiled
    python bench/step.py --model vit_large_patch16 --batch 128 --precision bf16 --compile --grad-checkpointing

A step is forward, backward and an AdamW step (fused kernels for both, `lr` irrelevant), on one fixed random
uint8 batch already on the device, under the same precision (fp32, or bf16 autocast) and, with `--compile`,
`torch.compile` of both modules.

  ours       `create_model(name)` + `MaskedPatchPrediction(target="mean_color")`: the shipped objective, metrics
             included (exact per-batch 80/10/10 split, replacements from the whole batch).
  reference  `transformers.ViTModel(..., add_pooling_layer=False, use_mask_token=True)` with
             `attn_implementation="sdpa"`, built from our weights. HF's model can only *mask*: `bool_masked_pos`
             swaps in its mask token before the position embeddings, as ours does. So the reference draws the
             usual per-image BERT positions (rand → argsort → first K = rate·N; the first 80% of those masked,
             the rest left as they are), computes the mean-colour class plainly (avg_pool2d → 3 bits per
             channel), and runs the same MLP head (Linear → GELU → Linear) and cross-entropy on the K positions.
             It does the same model work and the same number of predicted patches; it skips our replacements
             and metrics, which is the overhead the ratio should expose.

Timed interleaved (ours, reference, reference, ours, …), `--steps` steps per block, one device sync per block,
median over `--reps` blocks. `ratio` = ours ÷ reference images/s (higher is better; goal ≥ 1 on CPU for Ti/S).
Peak memory (CUDA only): the peak during a block above what was allocated when it started, plus the
implementation's own parameters and optimizer state (the other implementation's are resident too and are
not counted). MFU (CUDA only): images/s × `objective.flops_per_image()` ÷ the GPU's dense peak (common.PEAK_TFLOPS).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import common  # noqa: E402  (bench/common.py, a sibling script module)

from data_tools.progress_bar import progress_bar  # noqa: E402
from ssl_vit.data.normalize import normalize_uint8  # noqa: E402
from ssl_vit.train.metrics import peak_flops  # noqa: E402
from ssl_vit.models import create_model, list_models, to_hf_config, to_hf_state_dict  # noqa: E402
from ssl_vit.objectives.mpp import MaskedPatchPrediction  # noqa: E402
from ssl_vit.train.optim import param_groups  # noqa: E402

TITLE = "bench/step.py — MPP training step, ours vs Hugging Face ViT"
CPU_DEFAULTS = dict(models=["vit_tiny_patch16", "vit_small_patch16"], batch=8, steps=1, warmup=1, reps=5,
                    precision="fp32", compile=False)
GPU_DEFAULTS = dict(models=["vit_base_patch16"], batch=256, steps=10, warmup=5, reps=5, precision="bf16", compile=True)
QUICK = dict(models=["vit_nano_patch4"], batch=8, steps=2, warmup=1, reps=2, precision="fp32", compile=False)


class ReferenceMPP(nn.Module):
    """HF ViT + plain per-image masking through `bool_masked_pos` + MLP head + cross-entropy (see the module doc)."""

    def __init__(self, hf_vit: nn.Module, head: nn.Module, *, patch_size: int, rate: float = 0.5,
                 mask_prob: float = 0.8, bits: int = 3):
        super().__init__()
        self.vit = hf_vit
        self.head = head
        self.patch_size = patch_size
        self.rate = rate
        self.mask_prob = mask_prob
        self.bits = bits

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        b = images.shape[0]
        p, levels = self.patch_size, 2**self.bits
        mean = F.avg_pool2d(images.float(), p)  # (B, 3, H/P, W/P) mean colour per patch
        q = (mean * (levels / 256.0)).floor().clamp(0, levels - 1).long().flatten(2)  # (B, 3, N)
        targets = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]  # (B, N) class per patch
        n = targets.shape[1]
        k = int(self.rate * n + 0.5)
        index = torch.rand(b, n, device=images.device).argsort(dim=1)[:, :k]  # (B, K) corrupted positions
        masked = torch.zeros(b, n, dtype=torch.bool, device=images.device)
        masked.scatter_(1, index[:, : int(self.mask_prob * k + 0.5)], True)  # (B, N), 80% of the K masked
        feats = self.vit(pixel_values=normalize_uint8(images), bool_masked_pos=masked).last_hidden_state  # (B, 1+N, D)
        tokens = feats.gather(1, (index + 1).unsqueeze(-1).expand(b, k, feats.shape[-1]))  # (B, K, D)
        logits = self.head(tokens).float()  # (B, K, 512)
        loss = F.cross_entropy(logits.reshape(b * k, -1), targets.gather(1, index).reshape(b * k))
        return loss, {}


def build_pair(name: str, img_size: int | None, device: torch.device) -> tuple[MaskedPatchPrediction, ReferenceMPP]:
    """Our objective and the reference, with identical weights (backbone, [MASK], head) on `device`."""
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTModel

    torch.manual_seed(0)
    backbone = create_model(name, **({"img_size": img_size} if img_size else {}))
    ours = MaskedPatchPrediction(backbone, target="mean_color", seed=0)
    hf = ViTModel._from_config(HFViTConfig(**to_hf_config(backbone.config)), add_pooling_layer=False,
                               use_mask_token=True, attn_implementation="sdpa")
    result = hf.load_state_dict(to_hf_state_dict(backbone, layout="module"), strict=False)
    if result.unexpected_keys or set(result.missing_keys) != {"embeddings.mask_token"}:
        raise RuntimeError(f"HF ViT does not take our weights: {result}")
    d, classes = backbone.embed_dim, ours.target.out_features
    head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, classes))
    with torch.no_grad():
        hf.embeddings.mask_token.copy_(ours.mask_token)
        for mine, theirs in ((ours.head.fc1, head[0]), (ours.head.fc2, head[2])):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    reference = ReferenceMPP(hf, head, patch_size=backbone.patch_size)
    return ours.to(device).train(), reference.to(device).train()


def enable_checkpointing(model: MaskedPatchPrediction | ReferenceMPP) -> None:
    """Activation checkpointing of every block, non-reentrant, in either implementation."""
    if isinstance(model, MaskedPatchPrediction):
        model.backbone.set_grad_checkpointing()
        return
    hf = model.vit  # transformers 5 renamed the method and its argument; older versions have the first name only
    if hasattr(hf, "activation_checkpointing_enable"):
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def static_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters plus optimizer state: what the implementation holds between steps (grads are set to None)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(t.numel() * t.element_size()
                for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    return params + state


class Runner:
    """One implementation's model, optimizer and step; `block()` runs `steps` steps and tracks the CUDA peak."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, images: torch.Tensor, device: torch.device):
        self.model = model
        self.images = images
        self.device = device
        self.steps = args.steps
        self.bf16 = args.precision == "bf16"
        self.optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, fused=True)
        self.forward = torch.compile(model, backend=args.compile_backend) if args.compile else model
        self.peak_bytes = 0

    def step(self, images: torch.Tensor | None = None) -> None:
        """Forward, backward, optimizer step on `images` (default: the fixed batch); no host-device sync."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, _ = self.forward(self.images if images is None else images)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def block(self) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(self.steps):
            self.step()
        if cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - base + static_bytes(self.model, self.optimizer)
            self.peak_bytes = max(self.peak_bytes, peak)


def profile(runners: dict[str, Runner], device: torch.device, rows: int = 15) -> None:
    """Print the costliest ops of one step of each implementation (to stderr), to see where time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, runner in runners.items():
        with torch_profile(activities=activities) as prof:
            runner.step()
            common.synchronizer(device)()
        print(f"\n### profile: {name}\n{prof.key_averages().table(sort_by=sort, row_limit=rows)}", file=sys.stderr)


def measure(name: str, args: argparse.Namespace, device: torch.device, gpu: str | None) -> dict:
    """Build both implementations of `name`, warm up, time interleaved; one result record."""
    ours, reference = build_pair(name, args.img_size, device)
    img_size = ours.backbone.config.img_size
    if args.grad_checkpointing:
        enable_checkpointing(ours)
        enable_checkpointing(reference)
    images = torch.randint(0, 256, (args.batch, 3, img_size, img_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    runners = {"ours": Runner(ours, args, images, device), "reference": Runner(reference, args, images, device)}
    sync = common.synchronizer(device)
    for runner in runners.values():  # compile, autotune, allocator and optimizer-state warm-up
        for _ in range(args.warmup):
            runner.step()
        sync()
    with progress_bar(total=args.reps * 2, desc=f"{name} interleaved", unit="block", file=sys.stderr) as bar:
        times = common.interleaved({k: r.block for k, r in runners.items()}, reps=args.reps, sync=sync,
                                   progress=lambda *_: bar.update())
    if args.profile:
        profile(runners, device)
    flops = ours.flops_per_image(img_size)
    peak = peak_flops(gpu, args.precision)
    record = {"model": name, "img_size": img_size, "batch": args.batch, "flops_per_image": flops}
    for impl, runner in runners.items():
        step_s = common.median(times[impl]) / args.steps
        ips = args.batch / step_s
        record[f"{impl}_step_s"] = step_s
        record[f"{impl}_images_per_s"] = ips
        record[f"{impl}_runs_s"] = [t / args.steps for t in times[impl]]
        record[f"{impl}_peak_mem_bytes"] = runner.peak_bytes if device.type == "cuda" else None
        record[f"{impl}_mfu"] = ips * flops / peak if peak else None
    record["ratio"] = record["ours_images_per_s"] / record["reference_images_per_s"]
    # The fastest runs are the least disturbed by neighbours: a second estimate, to judge the noise by.
    record["ratio_best_runs"] = min(record["reference_runs_s"]) / min(record["ours_runs_s"])
    return record


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=None,
                        help="registered model names (default: vit_tiny_patch16 vit_small_patch16 on CPU, "
                             "vit_base_patch16 on CUDA; --quick: vit_nano_patch4)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 8 on CPU, 256 on CUDA)")
    parser.add_argument("--img-size", type=int, default=None, help="image side (default: the model's, 224)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block (default 1 CPU, 10 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 CPU, 5 CUDA)")
    parser.add_argument("--reps", type=int, default=None, help="timed blocks per implementation (median)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default fp32 CPU, bf16 CUDA")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile both modules (default: on for CUDA, off for CPU)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute each block in the backward")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--profile", action="store_true", help="also print the top ops of one profiled step of each")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    args.device = args.device or ("cpu" if args.quick else common.default_device())
    defaults = QUICK if args.quick else GPU_DEFAULTS if args.device.startswith("cuda") else CPU_DEFAULTS
    for key, value in defaults.items():
        attr = "model" if key == "models" else key
        if getattr(args, attr) is None:
            setattr(args, attr, value)
    unknown = [m for m in args.model if m not in list_models()]
    if unknown:
        parser.error(f"unknown --model {', '.join(unknown)}; registered: {', '.join(list_models())}")
    if min(args.batch, args.steps, args.reps) < 1 or args.warmup < 0:
        parser.error("--batch, --steps and --reps must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    common.apply_threads(args)
    device = torch.device(args.device)
    machine = common.machine_info(device)
    results = [measure(name, args, device, machine["gpu"]) for name in args.model]
    result = {
        "benchmark": "step",
        "command": common.command_line("bench/step.py", argv),
        "machine": machine,
        "settings": {k: getattr(args, k) for k in ("device", "precision", "compile", "compile_backend",
                                                    "grad_checkpointing", "steps", "warmup", "reps")},
        "ratio": min(r["ratio"] for r in results),  # every model must reach the goal
        "results": results,
    }
    finish_table(args, result)
    return result


def finish_table(args: argparse.Namespace, result: dict) -> None:
    """The markdown table and the settings line; then print / JSON / record through common.finish."""

    def mem(b: int | None) -> str:
        return "n/a" if b is None else f"{b / 2**30:.1f} GiB"

    def mfu(m: float | None) -> str:
        return "n/a" if m is None else f"{100 * m:.1f}%"

    rows = [
        [r["model"], f"{r['img_size']}px", r["batch"], f"{r['ours_images_per_s']:.1f}",
         f"{r['reference_images_per_s']:.1f}", f"**{r['ratio']:.2f}×** (best runs {r['ratio_best_runs']:.2f}×)",
         f"{mem(r['ours_peak_mem_bytes'])} / {mem(r['reference_peak_mem_bytes'])}",
         f"{mfu(r['ours_mfu'])} / {mfu(r['reference_mfu'])}"]
        for r in result["results"]
    ]
    table = common.markdown_table(
        ["model", "size", "batch", "ours img/s", "HF ref img/s", "ours ÷ ref", "peak mem ours / ref",
         "MFU ours / ref"], rows)
    s = result["settings"]
    backend = f" ({s['compile_backend']})" if s["compile"] else ""
    notes = (f"Device {s['device']}, {s['precision']}, compile={s['compile']}{backend}, "
             f"grad checkpointing={s['grad_checkpointing']}; {s['warmup']} warm-up step(s), then the median of "
             f"{s['reps']} interleaved blocks of {s['steps']} step(s). Step = forward + backward + fused AdamW. "
             "Reference: transformers ViTModel (sdpa), mask-only corruption. "
             + ("Peak memory and MFU are measured on CUDA only." if s["device"] == "cpu" else
                "MFU counts model FLOPs (3 × forward), not the recomputation of checkpointing."))
    common.finish(args, result, table, title=TITLE, notes=notes)


if __name__ == "__main__":
    common.run_main(main)
