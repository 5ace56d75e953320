"""The checkpoint format: a dict of component states (model, optimizer, scheduler, feed, precision; per rank RNG
and feed) beside the recipe, with a version. A checkpoint of format version 1 (the layout written before the
components had names) resumes exactly: the test writes one the way version 1 did and resumes from it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_records import records
from trainer_fixtures import sigterm_at_step

from ssl_vit.errors import CheckpointError
from ssl_vit.train import checkpoint as ckpt

# fp16 from a loss scale of 2^24: the first steps overflow and halve it, so a resume that lost the scale differs.
# 2 loader workers, one micro-batch a step: after 3 steps worker 1's batch comes next, and both have positions.
RUN = {"train.precision": "fp16", "train.fp16_loss_scale": 2.0 ** 24, "train.total_steps": 10,
       "train.checkpoint_every": 8, "train.log_every": 1, "train.keep_last": 5, "optim.warmup_steps": 2,
       "data.num_workers": 2, "data.batch_size": 8, "train.global_batch": 8, "data.shuffle_buffer": 8}


def as_version_1(path: Path) -> None:
    """Rewrite a checkpoint directory into format version 1: the feed's segment under `stream`, its ledger under
    `split_keys`, fp16's scaler under `loss_scaler`; RNG states and `stream_positions` at the top of rng_rank0.pt."""
    state = torch.load(path / "state.pt", weights_only=True)
    feed, precision = state.pop("feed"), state.pop("precision")
    state.update(version=1, stream={"segment": feed.get("segment", 0), "seed": 0})
    if "split_keys" in feed:
        state["split_keys"] = feed["split_keys"]
    if precision:
        state["loss_scaler"] = precision
    torch.save(state, path / "state.pt")
    rank = torch.load(path / "rng_rank0.pt", weights_only=True)
    torch.save({**rank["rng"], "stream_positions": rank["feed"].get("positions", [5, 3]),
                "stream_next_worker": rank["feed"].get("next_worker", 1)}, path / "rng_rank0.pt")


def test_a_version_1_state_reads_as_today_s_components(tmp_path: Path):
    ledger = {"urls": ["a.tar"], "hashes": torch.tensor([5]), "samples": torch.tensor([0])}
    v1 = {"model": {}, "optimizer": {}, "scheduler": {}, "step": 7, "stream": {"segment": 5, "seed": 3},
          "world_size": 2, "version": 1, "format": "ssl_vit.checkpoint", "split_keys": ledger,
          "loss_scaler": {"scale": 8.0}}
    state = ckpt.upgrade_state(v1, tmp_path / "state.pt")
    assert state["version"] == ckpt.VERSION == 2 and state["step"] == 7 and state["world_size"] == 2
    assert state["feed"] == {"segment": 5, "split_keys": ledger} and state["precision"] == {"scale": 8.0}
    assert not {"stream", "split_keys", "loss_scaler"} & set(state)
    # fp32, no ledger, and an older checkpoint without a stream: the segment is its step
    plain = ckpt.upgrade_state({"model": {}, "step": 4}, tmp_path / "state.pt")
    assert plain["feed"] == {"segment": 4} and plain["precision"] == {}
    rank = ckpt.upgrade_rank_state({"python": 1, "torch": 2, "stream_positions": [3, 4], "stream_next_worker": 1})
    assert rank == {"rng": {"python": 1, "torch": 2}, "feed": {"positions": [3, 4], "next_worker": 1}}
    assert ckpt.upgrade_rank_state(rank) is rank  # today's layout passes through


def test_a_newer_format_is_refused_in_one_line(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"state.pt: checkpoint format version 3, newer than this ssl_vit reads "
                                              r"\(2\); upgrade ssl_vit"):
        ckpt.upgrade_state({"version": 3, "step": 1}, tmp_path / "state.pt")


@pytest.mark.timeout(240)
def test_a_version_1_checkpoint_between_checkpoint_steps_resumes_exactly(pretrain_shards, tmp_path, pretrain, monkeypatch):
    """Stopped by SIGTERM at step 3 (between scheduled checkpoints, in fp16 calibration, 2 loader workers), the
    checkpoint rewritten as version 1 (with the per-worker positions version 1 had), then resumed: the stream
    opens at step 3 in the global order (the positions are not needed), the loss scale continues, and losses,
    scales and final weights equal the uninterrupted run's."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert pretrain(pretrain_shards, whole, **RUN) == 0
    sigterm_at_step(monkeypatch, 3)
    assert pretrain(pretrain_shards, stopped, **RUN) == 0
    monkeypatch.undo()
    path = stopped / "checkpoints" / ckpt.checkpoint_name(3)
    saved = torch.load(path / "state.pt", weights_only=True)
    rank = torch.load(path / "rng_rank0.pt", weights_only=True)
    assert saved["feed"]["order"] == "global-1" and rank["feed"] == {}
    assert saved["precision"]["scale"] < 2.0 ** 24  # mid-calibration

    as_version_1(path)
    assert "stream" in torch.load(path / "state.pt", weights_only=True)
    assert pretrain(pretrain_shards, stopped, "--resume", "auto", **RUN) == 0
    assert [(r["step"], r["loss"], r["loss_scale"]) for r in records(stopped)] == \
        [(r["step"], r["loss"], r["loss_scale"]) for r in records(whole)]
    a, b = (ckpt.read_state(d / "checkpoints" / ckpt.checkpoint_name(10)) for d in (whole, stopped))
    assert a["precision"] == b["precision"] and a["version"] == b["version"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_step_saved_again_replaces_its_checkpoint_whole(tmp_path: Path):
    """A signal right at a checkpoint step saves that step a second time: the new directory replaces the old one
    (files.publish_dir), nothing of the first is left beside it, and `latest` names it."""
    from ssl_vit.train.agreement import HostAgreement

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    root = tmp_path / "checkpoints"
    for segment in (0, 5):
        ckpt.save_checkpoint(root, 5, model=model, optimizer=optimizer, scheduler=scheduler, meta={}, config_yaml=None,
                             rank=0, agreement=HostAgreement(), keep_last=3, components={"feed": {"segment": segment}})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000005"]
    assert ckpt.read_state(ckpt.latest_checkpoint(root))["feed"] == {"segment": 5}
