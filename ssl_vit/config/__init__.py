"""Recipes: one loader (`loader.py`) for every kind, one schema module per kind.

    pretrain.py   PretrainConfig  recipes/pretrain/*.yaml   load_config
    finetune.py   FinetuneConfig  recipes/finetune/*.yaml   load_finetune_config
    eval.py       EvalRecipe      recipes/eval/*.yaml       load_eval_recipe
    eval_data.py  EvalData, the eval-data section, defined once (embedded in EvalRecipe and PretrainConfig.eval)

Every kind accepts `base:`, dotted `key=value` overrides and reports bad keys and values in the same words.
"""
from .eval import EvalRecipe, FeaturesConfig, load_eval_recipe, normalise_evaluators
from .eval_data import EvalData, PeriodicEvalData
from .finetune import FinetuneConfig, FinetuneData, FinetuneOptim, load_finetune_config
from .loader import (
    COMMAND_LINE,
    build_section,
    check_key,
    check_output_dir,
    check_seed,
    describe,
    from_mapping,
    load_recipe,
    parse_override,
    read_yaml_mapping,
    schema_keys,
)
from .pretrain import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    accumulation_steps,
    build_backbone,
    build_objective,
    config_from_mapping,
    load_config,
    model_overrides,
    validate,
)

__all__ = [
    "COMMAND_LINE", "DataConfig", "EvalConfig", "EvalData", "EvalRecipe", "FeaturesConfig", "FinetuneConfig",
    "FinetuneData", "FinetuneOptim", "ModelConfig", "ObjectiveConfig", "OptimConfig", "PeriodicEvalData",
    "PretrainConfig", "TrainConfig", "accumulation_steps", "build_backbone", "build_objective", "build_section",
    "check_key", "check_output_dir", "check_seed", "config_from_mapping", "describe", "from_mapping", "load_config",
    "load_eval_recipe", "load_finetune_config", "load_recipe", "model_overrides", "normalise_evaluators",
    "parse_override", "read_yaml_mapping", "schema_keys", "validate",
]
