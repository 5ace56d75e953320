"""FSDP2 (`fully_shard` per block, as recipes/accelerate/fsdp_8.yaml asks) on two CPU processes over gloo.

Accelerate does not run FSDP without GPUs, so the trainer's FSDP path cannot be launched here; what it relies on
is exercised directly: a sharded step equals the unsharded one, the checkpoint holds the full unsharded state
(loadable into a plain model), the parameter checksum gathers the shards, and restoring the checkpoint into a
fresh sharded model continues exactly as the original does.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from trainer_fixtures import free_port

WORLD = 2
BATCH = 4  # per rank


def _objective():
    from ssl_vit.models import create_model
    from ssl_vit.objectives import build

    torch.manual_seed(0)
    return build("mpp", create_model("vit_nano_patch4"), target="mean_color", seed=0)


def _images(rank: int, step: int) -> torch.Tensor:
    return torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(100 * step + rank))


def _sharded(objective):
    from torch.distributed.fsdp import fully_shard

    for block in objective.backbone.blocks:
        fully_shard(block)
    fully_shard(objective)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3, weight_decay=0.05)
    return objective, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def _step(model, optimizer, rank: int, step: int) -> None:
    loss, _ = model(_images(rank, step), generator=torch.Generator().manual_seed(1000 * step + rank))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from ssl_vit.train import checkpoint as ckpt
        from ssl_vit.train.agreement import HostAgreement
        from ssl_vit.train.session import parameter_checksum

        model, optimizer, scheduler = _sharded(_objective())
        assert type(next(model.parameters())).__name__ == "DTensor"  # really sharded
        _step(model, optimizer, rank, 1)
        agreement = HostAgreement()
        path = ckpt.save_checkpoint(Path(out), 1, model=model, optimizer=optimizer, scheduler=scheduler, meta={},
                                    config_yaml=None, rank=rank, agreement=agreement, keep_last=2)
        saved_checksum = parameter_checksum(model)
        # A fresh sharded model restored from the checkpoint continues exactly as the original.
        restored, restored_optimizer, restored_scheduler = _sharded(_objective())
        ckpt.load_checkpoint(path, model=restored, optimizer=restored_optimizer, scheduler=restored_scheduler,
                             rank=rank)
        restored_checksum = parameter_checksum(restored)
        _step(model, optimizer, rank, 2)
        _step(restored, restored_optimizer, rank, 2)
        results = {"saved": saved_checksum, "restored": restored_checksum,
                   "continued": parameter_checksum(model), "restored_continued": parameter_checksum(restored)}
        torch.save(results, f"{out}/rank{rank}.pt")
        agreement.close()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_fsdp2_step_checkpoint_and_resume_on_two_cpu_processes(tmp_path: Path) -> None:
    from ssl_vit.train import checkpoint as ckpt
    from ssl_vit.train.session import parameter_checksum

    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0] == ranks[1]  # every gathered checksum agrees across ranks
    assert ranks[0]["restored"] == ranks[0]["saved"]
    assert ranks[0]["restored_continued"] == ranks[0]["continued"]  # optimizer state came back too

    # The same step unsharded, in this process: both ranks' losses averaged, as FSDP's reduce-scatter does.
    plain = _objective()
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.05)
    losses = [plain(_images(r, 1), generator=torch.Generator().manual_seed(1000 + r))[0] for r in range(WORLD)]
    (sum(losses) / WORLD).backward()
    optimizer.step()
    state = ckpt.read_state(tmp_path / ckpt.checkpoint_name(1))
    assert set(state["model"]) == set(plain.state_dict())  # full, unwrapped names: no shards, no prefixes
    for name, value in plain.state_dict().items():
        assert state["model"][name].shape == value.shape, name
        assert torch.allclose(state["model"][name], value, atol=1e-6), name
    fresh = _objective()
    fresh.load_state_dict(state["model"])  # the full state loads strictly into a plain model
    assert parameter_checksum(fresh) == ranks[0]["saved"]
    moments = {name: optimizer.state[p]["exp_avg"] for name, p in plain.named_parameters()}
    assert set(state["optimizer"]["state"]) == set(moments)  # AdamW state by full name, unsharded
    for name, exp_avg in moments.items():
        assert torch.allclose(state["optimizer"]["state"][name]["exp_avg"], exp_avg, atol=1e-7), name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
