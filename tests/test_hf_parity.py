"""Parity with Hugging Face transformers' ViT, an independent implementation of the same network.

Random weights, both directions: HF -> ours (`load_backbone`, either HF key layout) and ours -> HF
(`to_hf_state_dict`, loaded strictly). HF's GELU is the exact erf GELU, as ours, so outputs agree to float
rounding.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTConfig as HFViTConfig
from transformers import ViTForImageClassification, ViTModel
from weights_fixtures import images

from ssl_vit.models import create_model, load_backbone, to_hf_config, to_hf_state_dict

TOL = 1e-5
HF_KWARGS = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, image_size=32,
    patch_size=4, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True,
)


def hf_model(attn: str, seed: int = 0) -> ViTModel:
    torch.manual_seed(seed)
    model = ViTModel._from_config(HFViTConfig(**HF_KWARGS), add_pooling_layer=False, attn_implementation=attn)
    # HF initialises cls / position embeddings and biases near zero; randomise everything so a swapped or
    # transposed tensor cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hf_to_ours_matches_last_hidden_state(attn: str) -> None:
    hf = hf_model(attn)
    ours = load_backbone(hf.state_dict(), create_model("vit_nano_patch4")).eval()
    x = images()
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
        got = ours.forward_features(x)
    assert got.shape == expected.shape == (3, 65, 64)
    assert (got - expected).abs().max().item() < TOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_ours_to_hf_loads_strictly_with_same_outputs(attn: str) -> None:
    torch.manual_seed(2)
    ours = create_model("vit_nano_patch4").eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    assert to_hf_config(ours.config) == {**HF_KWARGS, "num_channels": 3, "hidden_dropout_prob": 0.0,
                                         "attention_probs_dropout_prob": 0.0}
    hf = ViTModel._from_config(HFViTConfig(**to_hf_config(ours.config)), add_pooling_layer=False,
                               attn_implementation=attn).eval()
    result = hf.load_state_dict(to_hf_state_dict(ours, layout="module"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = images()
    with torch.no_grad():
        assert (hf(pixel_values=x).last_hidden_state - ours.forward_features(x)).abs().max().item() < TOL


def test_hub_layout_files_both_ways(tmp_path) -> None:
    """save_pretrained writes the Hub layout the issue names; we read it, and our Hub-layout export loads back."""
    hf = hf_model("eager", seed=3)
    hf.save_pretrained(tmp_path / "hf")
    hub_keys = set(load_file(tmp_path / "hf" / "model.safetensors"))
    assert "encoder.layer.1.attention.attention.query.weight" in hub_keys
    assert "encoder.layer.1.output.dense.bias" in hub_keys
    ours = load_backbone(tmp_path / "hf" / "model.safetensors").eval()  # config inferred from the weights
    assert (ours.config.embed_dim, ours.config.depth, ours.config.num_heads) == (64, 2, 2)
    x = images()
    with torch.no_grad():
        reference = hf(pixel_values=x).last_hidden_state
        assert (ours.forward_features(x) - reference).abs().max().item() < TOL

    exported = to_hf_state_dict(ours, layout="hub")
    assert set(exported) == hub_keys
    out = tmp_path / "ours"
    out.mkdir()
    HFViTConfig(**to_hf_config(ours.config)).save_pretrained(out)
    save_file(exported, out / "model.safetensors")
    reloaded, info = ViTModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        assert (reloaded.eval()(pixel_values=x).last_hidden_state - reference).abs().max().item() < TOL


def test_image_classification_head_both_ways() -> None:
    torch.manual_seed(4)
    hf = ViTForImageClassification(HFViTConfig(**HF_KWARGS, num_labels=5)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    state = hf.state_dict()
    assert "vit.embeddings.cls_token" in state and "classifier.weight" in state
    ours = load_backbone(state).eval()
    assert ours.config.num_classes == 5
    x = images()
    with torch.no_grad():
        assert (ours(x) - hf(pixel_values=x).logits).abs().max().item() < TOL
    back = ViTForImageClassification(HFViTConfig(**HF_KWARGS, num_labels=5)).eval()
    back.load_state_dict(to_hf_state_dict(ours, layout="module", classification=True), strict=True)
    with torch.no_grad():
        assert (back(pixel_values=x).logits - ours(x)).abs().max().item() < TOL
