"""`ssl-vit recipes [list [FOLDER]] | show NAME | path NAME`: the recipes that ship with the package.

    ssl-vit recipes                                   # every recipe by name, with its first line
    ssl-vit recipes show pretrain/vit_s16_mean_color > my.yaml      # a copy to edit (`base: shipped:…` works from it)
    accelerate launch --config_file "$(ssl-vit recipes path accelerate/gpu_8)" -m ssl_vit pretrain --config ...

Any recipe's name works where a command takes `--config` (see ssl_vit/recipe_files.py for the lookup rules).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..recipe_files import portable_copy, recipe_names, recipes_dir, shipped_recipe, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = sub.add_parser("list", help="list the recipes (the default)", description="list the recipes by name")
    listing.add_argument("folder", nargs="?", help="only this folder, e.g. pretrain or accelerate")
    show = sub.add_parser("show", help="print one recipe (redirect it to a file to edit a copy)")
    show.add_argument("name", help="a recipe's name, e.g. pretrain/smoke or accelerate/gpu_8")
    path = sub.add_parser("path", help="print the file of one recipe (for accelerate launch --config_file)")
    path.add_argument("name", help="a recipe's name, e.g. accelerate/gpu_8")


def run(args: argparse.Namespace) -> int:
    action = args.action or "list"
    if action == "list":
        return _list(getattr(args, "folder", None))
    file = shipped_recipe(args.name)
    if action == "path":
        print(file)
    else:
        text, notes = portable_copy(file)
        sys.stdout.write(text)
        for note in notes:  # stdout is the copy: the note goes beside it
            print(f"note: {note}", file=sys.stderr)
    return 0


def _list(folder: str | None) -> int:
    names = recipe_names()
    if folder:
        folder = folder.strip("/")
        names = {n: p for n, p in names.items() if n.startswith(folder + "/")}
        if not names:
            folders = sorted({n.rsplit("/", 1)[0] for n in recipe_names() if "/" in n})
            raise ConfigError(f"no recipes in folder '{folder}'; folders: {', '.join(folders)}")
    width = max(len(n) for n in names)
    for name, path in names.items():
        print(f"{name:<{width}}  {summary(path)}")
    print(f"\n{len(names)} recipes in {recipes_dir()}. Use one by name: ssl-vit pretrain --config pretrain/smoke ...; "
          "copy one to edit: ssl-vit recipes show NAME > my.yaml", file=sys.stderr)
    return 0
