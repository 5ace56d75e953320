"""The one thing pyproject.toml cannot say: `recipes/` (top of the repository, the copy people read and edit)
ships inside the wheel as the package-data folder `ssl_vit/recipes/`, beside the discovered packages.

Each folder of recipes is declared as a data-only package mapped from `recipes/…` (setuptools warns about
data folders that are not declared packages), holding every file in it; `ssl_vit.recipe_files` finds them
there in an installed wheel, and in `recipes/` itself in a checkout or an editable install.
Everything else (metadata, dependencies) is in pyproject.toml.
"""
from pathlib import Path

from setuptools import find_packages, setup

RECIPES = Path(__file__).resolve().parent / "recipes"
recipe_packages = ["ssl_vit.recipes"] + sorted(
    "ssl_vit.recipes." + ".".join(d.relative_to(RECIPES).parts)
    for d in RECIPES.rglob("*") if d.is_dir() and d.name != "__pycache__"
)

setup(
    packages=find_packages(include=["ssl_vit", "ssl_vit.*", "data_tools", "data_tools.*"]) + recipe_packages,
    package_dir={"ssl_vit.recipes": "recipes"},
    # py.typed: the packages' type hints are part of their interface (PEP 561).
    package_data={"ssl_vit": ["py.typed"], "data_tools": ["py.typed"], **{package: ["*"] for package in recipe_packages}},
)
