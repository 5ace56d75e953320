"""Subcommands of `ssl-vit`: each module has `add_arguments(parser)` and `run(args) -> int` (see ssl_vit/cli.py)."""
