"""Recipe schema: every shipped recipe validates and states its true batch arithmetic; bad input fails clearly."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

from ssl_vit.config import (
    PretrainConfig,
    accumulation_steps,
    config_from_mapping,
    describe,
    load_config,
    load_eval_recipe,
    load_finetune_config,
    parse_override,
)
from ssl_vit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = sorted((REPO / "recipes" / "pretrain").glob("*.yaml"))
ACCELERATE = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
# "# Batch: 128 per GPU × 8 GPUs × 4 accumulation = 4096"
BATCH_LINE = re.compile(r"(\d+) per (?:GPU|process) × (\d+) (?:GPUs?|process(?:es)?) × (\d+) accumulation = (\d+)")


def test_the_recipe_set_is_complete():
    names = {p.stem for p in PRETRAIN}
    assert names >= {
        "vit_b16_mean_color", "vit_b16_downsampled_color", "vit_b16_pixels", "vit_s16_mean_color",
        "vit_l16_mean_color", "vit_b16_mean_color_15pct", "smoke",
    }
    assert {p.stem for p in ACCELERATE} >= {"cpu_2proc", "gpu_1", "gpu_8", "nodes_2x8", "fsdp_8"}


@pytest.mark.parametrize("recipe", PRETRAIN, ids=lambda p: p.stem)
def test_every_recipe_validates_and_its_batch_comment_is_true(recipe: Path):
    cfg = load_config(recipe, ["data.train=/data/somewhere"])
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert any("ssl-vit pretrain" in line or "-m ssl_vit pretrain" in line for line in header), "launch command missing"
    match = next(m for line in header if (m := BATCH_LINE.search(line)))
    per_device, processes, accumulation, total = map(int, match.groups())
    assert per_device == cfg.data.batch_size and total == cfg.train.global_batch
    assert accumulation_steps(cfg.train.global_batch, per_device, processes) == accumulation
    # A resolved recipe survives the round trip through the run directory's config.yaml.
    assert config_from_mapping(cfg.to_dict()) == cfg


def test_paper_settings_and_inheritance():
    b = load_config(REPO / "recipes/pretrain/vit_b16_mean_color.yaml", ["data.train=x"])
    assert (b.optim.lr, b.optim.betas, b.optim.weight_decay, b.optim.warmup_steps) == (2e-4, (0.9, 0.999), 0.1, 10_000)
    assert (b.train.global_batch, b.optim.schedule, b.data.image_size) == (4096, "cosine", 224)
    assert b.objective.kwargs == {"target": "mean_color", "corruption_rate": 0.5, "mask_prob": 0.8,
                                  "random_prob": 0.1, "head": "mlp"}
    s = load_config(REPO / "recipes/pretrain/vit_s16_mean_color.yaml", ["data.train=x"])
    assert s.model.name == "vit_small_patch16" and s.optim == b.optim and s.data.batch_size == 256
    p15 = load_config(REPO / "recipes/pretrain/vit_b16_mean_color_15pct.yaml", ["data.train=x"])
    assert p15.objective.kwargs["corruption_rate"] == 0.15 and p15.objective.kwargs["target"] == "mean_color"


def test_overrides_parse_as_yaml_values():
    cfg = load_config(REPO / "recipes/pretrain/smoke.yaml", [
        "optim.betas=[0.9, 0.95]", "train.log_with=tensorboard", "data.val=null", "train.total_steps=1e3",
        "objective.kwargs.target=pixels", "model.overrides.drop_path_rate=0.1",
    ])
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.train.log_with == ["tensorboard"]
    assert cfg.data.val is None and cfg.train.total_steps == 1000
    assert cfg.objective.kwargs["target"] == "pixels" and cfg.model.overrides == {"drop_path_rate": 0.1}
    assert parse_override("output_dir=runs/a=b") == ("output_dir", "runs/a=b")


@pytest.mark.parametrize(
    "override, expected",
    [
        (["optim.warmup=5"], "command line: unknown key 'optim.warmup' (did you mean 'optim.warmup_steps'?)"),
        (["train.global_batch=lots"], "train.global_batch: expected an integer, got 'lots' (str)"),
        (["train.compile=1"], "train.compile: expected true or false, got 1 (int)"),
        (["train.precision=fp8"], "train.precision: expected one of auto, fp32, bf16, fp16, got 'fp8'"),
        (["optim.betas=[0.9]"], "optim.betas: expected a list of 2 numbers"),
        (["model.name=vit_bse_patch16"], "model.name: unknown model 'vit_bse_patch16' (did you mean 'vit_base_patch16'?)"),
        (["objective.kwargs.target=mean_colour"], "unknown MPP target 'mean_colour' (did you mean 'mean_color'?)"),
        (["objective.kwargs.corruption=0.5"], "has no option 'corruption' (did you mean 'corruption_rate'?)"),
        (["train.total_steps=5"], "optim.warmup_steps (10) must be below train.total_steps (5)"),
        (["train.epochs=2"], "set exactly one of train.total_steps and train.epochs"),
        (["optim.lr"], "'optim.lr' is not a key=value override"),
    ],
)
def test_bad_values_name_key_type_and_fix(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "recipes/pretrain/smoke.yaml", override)
    assert expected in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: " + str(REPO / "recipes/pretrain/smoke.yaml") + "\ntrain:\n  chekpoint_every: 5\n")
    with pytest.raises(ConfigError, match=re.escape(f"{recipe}: unknown key 'train.chekpoint_every' "
                                                    "(did you mean 'train.checkpoint_every'?)")):
        load_config(recipe)


def test_invalid_yaml_and_include_cycles(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {global_batch: 8\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: not valid YAML")):
        load_config(bad)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)


def test_batch_arithmetic_suggests_fitting_numbers():
    assert accumulation_steps(4096, 128, 8) == 4
    assert accumulation_steps(16, 4, 2) == 2
    with pytest.raises(ConfigError) as err:
        accumulation_steps(4096, 48, 8)
    # 4096 / 8 = 512 per process: its divisors around 48 are 32 and 64; multiples of 384 around 4096: 3840, 4224.
    assert "data.batch_size 48 × 8 processes = 384; set data.batch_size to 32 or 64, or train.global_batch to 3840 or 4224" in str(err.value)
    with pytest.raises(ConfigError, match="set train.global_batch to 4032 or 4176"):
        accumulation_steps(4096, 48, 3)  # 4096 is not a multiple of 3 processes: only the global batch can change


def test_defaults_are_a_valid_schema():
    cfg = PretrainConfig()
    assert cfg.train.global_batch == 4096 and cfg.optim.name == "adamw" and cfg.eval.every == 0


# ------------------------------------------------------------------------------------------ accelerate configs
EXPECTED_LAUNCH = {
    "cpu_2proc": ("MULTI_GPU", 2, 1),  # MULTI_GPU on purpose: see the file's comment
    "gpu_1": ("NO", 1, 1),
    "gpu_8": ("MULTI_GPU", 8, 1),
    "nodes_2x8": ("MULTI_GPU", 16, 2),
    "fsdp_8": ("FSDP", 8, 1),
}


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_configs_load_with_the_keys_accelerate_expects(path: Path):
    cfg = ClusterConfig.from_yaml_file(str(path))  # raises on keys Accelerate does not know
    kind, processes, machines = EXPECTED_LAUNCH[path.stem]
    assert (str(cfg.distributed_type).split(".")[-1], cfg.num_processes, cfg.num_machines) == (kind, processes, machines)
    assert "accelerate launch --config_file recipes/accelerate/" + path.name in path.read_text()
    if machines > 1:
        assert cfg.main_process_ip and cfg.main_process_port and "--machine_rank" in path.read_text()
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Block"


# ----------------------------------------------------------------------------- one loader for every recipe kind
KINDS = {
    "pretrain": (load_config, "recipes/pretrain/smoke.yaml"),
    "finetune": (load_finetune_config, "recipes/finetune/smoke.yaml"),
    "eval": (load_eval_recipe, "recipes/eval/smoke.yaml"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_recipe_kind_takes_base_and_overrides_with_the_same_messages(kind: str, tmp_path: Path):
    load, shipped = KINDS[kind]
    base = load(REPO / shipped)
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {REPO / shipped}\ndata:\n  batch_size: 4\n")
    cfg = load(child, ["data.num_workers=3"])
    assert (cfg.data.batch_size, cfg.data.num_workers) == (4, 3)  # the file's value, then the command line's
    assert cfg.data.image_size == base.data.image_size and base.data.batch_size != 4  # the rest from base:

    def message(*args) -> str:
        with pytest.raises(ConfigError) as err:
            load(*args)
        return str(err.value)

    assert message(child, ["data.batch_sise=3"]) == \
        "command line: unknown key 'data.batch_sise' (did you mean 'data.batch_size'?)"
    assert message(child, ["data.batch_size=lots"]) == \
        "command line: data.batch_size: expected an integer, got 'lots' (str)"
    assert message(child, ["data.batch_size"]) == \
        "command line: 'data.batch_size' is not a key=value override (e.g. optim.lr=1e-3)"
    typo = tmp_path / "typo.yaml"
    typo.write_text("base: child.yaml\ndata:\n  batch_sise: 4\n")  # relative to the including file
    assert message(typo) == f"{typo}: unknown key 'data.batch_sise' (did you mean 'data.batch_size'?)"
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("base: missing.yaml\n")
    assert message(orphan) == f"{tmp_path / 'missing.yaml'}: recipe not found (included from {orphan})"
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    assert message(loop).startswith(f"{loop}: recipes include each other in a cycle")


def test_every_key_has_a_type_default_and_help_for_generated_help():
    rows = {key: (kind, default, text) for key, kind, default, text in describe(PretrainConfig)}
    assert rows["optim.lr"][:2] == ("float", 2e-4) and rows["optim.lr"][2]
    assert rows["train.total_steps"][:2] == ("int | None", None)
    assert rows["eval.image_size"][:2] == ("int | None", None)  # the eval-data section, embedded
    assert rows["data.batch_size"][2] == "per device, per micro-batch"  # the field's own comment
    assert rows["eval.image_size"][2].endswith("(unset: from the pretraining data)")  # EvalData's help, generated
    assert all(text for _, _, text in rows.values())

    @dataclasses.dataclass
    class Section:
        """What the section is for."""

        plain: int = 1

    assert describe(Section) == [("plain", "int", 1, "What the section is for.")]  # no comment: the docstring
