"""Precision the launcher asks for against the recipe's `train.precision`: a disagreement is reported in one line
(the recipe decides), never silently overridden; agreement, or no launcher setting, says nothing."""
from __future__ import annotations

from conftest import fresh_accelerate_state

from ssl_vit.config import TrainConfig
from ssl_vit.train import make_accelerator


def test_a_launcher_precision_that_disagrees_with_the_recipe_is_reported_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    with fresh_accelerate_state():
        accelerator = make_accelerator(TrainConfig(precision="fp32"), tmp_path)
        assert accelerator.mixed_precision == "no"
    out = capsys.readouterr().out
    assert out == ("note: the launcher asks for mixed precision bf16, the recipe's train.precision=fp32 gives fp32 on "
                   "this machine: training in fp32 (set train.precision=bf16 to follow the launcher)\n")


def test_a_launcher_precision_that_agrees_or_is_unset_says_nothing(monkeypatch, capsys, tmp_path):
    for launcher in ("no", "bf16"):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
        with fresh_accelerate_state():
            make_accelerator(TrainConfig(precision="bf16" if launcher == "bf16" else "fp32"), tmp_path)
    assert capsys.readouterr().out == ""
