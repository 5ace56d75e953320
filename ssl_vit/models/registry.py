"""Named ViT configurations, one registry keyed by names that say the configuration.

Names follow timm without the resolution suffix (`vit_base_patch16` here is timm's `vit_base_patch16_224`
architecture); every name builds at 224px unless `img_size` is overridden.
"""
from __future__ import annotations


from ..lookup import check_options, lookup
from .vit import ViTConfig, VisionTransformer

# width, depth, heads: the paper's Table 1, plus Ti/S from DeiT.
_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}

MODEL_CONFIGS: dict[str, ViTConfig] = {
    f"vit_{size}_patch{patch}": ViTConfig(patch_size=patch, **dims)
    for size, dims in _SIZES.items()
    for patch in (14, 16, 32)
}
# Small enough for tests and the 2-core demo: 32px images, 4px patches (an 8×8 grid).
MODEL_CONFIGS["vit_nano_patch4"] = ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2)
MODEL_CONFIGS["vit_micro_patch4"] = ViTConfig(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4)


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS)


def model_config(name: str, **overrides) -> ViTConfig:
    """The registered config with overrides applied; an unknown name or key says what exists."""
    base = lookup("model", name, MODEL_CONFIGS)
    check_options("the model config", ViTConfig, overrides)
    return ViTConfig(**{**base.to_dict(), **overrides})


def create_model(name: str, **overrides) -> VisionTransformer:
    """Build a registered ViT, e.g. `create_model("vit_base_patch16", img_size=384, global_pool="avg")`."""
    return VisionTransformer(model_config(name, **overrides))
