"""`ssl-vit launch LAUNCHER ARGS...`: run `accelerate launch` or `torchrun` under the stop-signal supervisor.

    ssl-vit launch accelerate launch --config_file recipes/accelerate/gpu_8.yaml -m ssl_vit pretrain --config ...
    ssl-vit launch torchrun --nproc_per_node 8 -m ssl_vit pretrain --config ...

SIGTERM, SIGINT, SIGUSR1 or SIGHUP (a closed terminal, a dropped ssh session) to `ssl-vit launch` → every worker
checkpoints the same step → exit 0, and no process of the job is left (see `ssl_vit/train/supervisor.py` for why
and how, and for a stop that comes before the workers are ready).
"""
from __future__ import annotations

import argparse

from ..errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("launcher", nargs=argparse.REMAINDER, metavar="LAUNCHER ARGS",
                        help="the launch command, e.g. accelerate launch --config_file X -m ssl_vit pretrain ...")


def run(args: argparse.Namespace) -> int:
    command = args.launcher[1:] if args.launcher[:1] == ["--"] else args.launcher
    if not command:
        raise UserError("ssl-vit launch: name the launch command, e.g. ssl-vit launch accelerate launch -m ssl_vit pretrain --config RECIPE")
    from ..train.supervisor import Supervisor

    return Supervisor(command).run()
