"""`ssl-vit COMMAND`: one table of subcommands (`COMMANDS` below), each a module imported only when used.

A subcommand module has `add_arguments(parser)` and `run(args) -> int`. A `UserError` (bad recipe, data or
checkpoint) reaches the user as one line, `error: …`, with exit status 2 and no traceback unless `--debug`.

`--help` and `--version` answer at once, for every command and sub-command: building a parser imports neither
torch nor anything heavy (accelerate, numpy, PIL), so `add_arguments` and the module around it import those
inside `run` only (tests/test_messages.py runs every `--help` and fails on a torch import).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from types import ModuleType

from .errors import Stopped, UserError, one_line

# name → (module, one-line help). Imported lazily: a command whose module is missing does not break the others.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("ssl_vit.commands.pretrain", "pretrain a ViT with masked patch prediction (under accelerate launch for several processes)"),
    "launch": ("ssl_vit.commands.launch", "run accelerate launch / torchrun so that a stop signal checkpoints every worker and exits 0"),
    "export": ("ssl_vit.commands.export", "write a run's backbone as .safetensors, a Hugging Face or a timm folder, with a model card (--push-to-hub)"),
    "eval": ("ssl_vit.commands.eval", "evaluate a backbone: few-shot, linear probe, k-NN, fine-tuning"),
    "analyze": ("ssl_vit.commands.analyze", "figures and reports of a trained backbone"),
    "demo": ("ssl_vit.commands.demo", "the end-to-end demo on a small dataset"),
    "study": ("ssl_vit.commands.study", "a grid of targets × corruption rates × seeds, each against its own random init"),
    "samples": ("ssl_vit.commands.samples", "which samples each epoch of a run trained on (train.record_samples)"),
    "estimate-memory": ("ssl_vit.commands.estimate_memory", "peak memory of one training step per device, estimated without a GPU"),
    "recipes": ("ssl_vit.commands.recipes", "list the shipped recipes, print one (show NAME) or its file (path NAME)"),
}


def _load(name: str) -> ModuleType:
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise UserError(f"the '{name}' command is not available in this installation ({module_name} is missing)") from None
        raise


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported and asked for its arguments."""
    parser = argparse.ArgumentParser(prog="ssl-vit", description="Masked patch prediction pretraining for Vision Transformers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for user errors")
        if name == command:
            _load(name).add_arguments(p)
            for each in parsers_below(p):  # `ssl-vit eval knn --version` as well as `ssl-vit --version`
                _add_version(each)
    return parser


def parsers_below(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every sub-command parser under it (`eval` → `fewshot`, `knn`, …), each once."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += [p for p in parsers_below(child) if p not in found]
    return found


def _add_version(parser: argparse.ArgumentParser) -> None:
    if "--version" not in parser._option_string_actions:
        parser.add_argument("--version", action=_Version, nargs=0,
                            help="show the versions of ssl-vit, torch, accelerate and Python and exit")


class _Version(argparse.Action):
    """`--version`, its line made only when asked for (argparse's own action would make it for every parse)."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def version_line() -> str:
    """`ssl-vit 0.1.0 (torch 2.13.0, accelerate 1.15.0, Python 3.11.7)`: what a bug report needs. The versions
    are the installed distributions', read from their metadata: importing torch and accelerate to ask them
    would take seconds, for a question that must answer at once."""
    import platform
    from importlib import metadata

    from . import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"ssl-vit {__version__} (torch {installed('torch')}, accelerate {installed('accelerate')}, "
            f"Python {platform.python_version()})")


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if a in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command = _command_in(argv)
        args = build_parser(command).parse_args(argv)
        debug = args.debug
        return int(_load(args.command).run(args) or 0)
    except Stopped as err:  # a signal stopped a composed command cleanly: resume later, as pretrain's own exit 0
        print(f"stopped: {' '.join(str(err).split())}", file=sys.stderr)
        return 0
    except UserError as err:
        if debug:
            traceback.print_exc()
        if os.environ.get("SSL_VIT_SUPERVISOR_DIR"):  # a worker under `ssl-vit launch`: it prints the line once
            from .train.supervisor import report_user_error

            report_user_error(one_line(err))
        if not getattr(err, "reported", False):
            print(one_line(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
