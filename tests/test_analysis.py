"""The analysis figures: the numbers behind Figure 7 on hand-built cases, the masked-prediction panels pixel
by pixel, curves, report, and `ssl-vit analyze` end to end on a vit_nano checkpoint."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_vit.analysis import figure7, masked, plots, report
from ssl_vit.errors import DataError, UserError
from ssl_vit.models import create_model
from ssl_vit.objectives.mpp import MaskedPatchPrediction
from ssl_vit.objectives.targets import decode_class


def assert_png(path: Path, min_side: int = 150) -> tuple[int, int]:
    """The file is a PNG that PIL decodes fully, of a sensible size; returns (width, height)."""
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        assert min(img.size) >= min_side and max(img.size) < 6000, img.size
        return img.size


def gradient_images(batch: int = 3, size: int = 32) -> torch.Tensor:
    """(B, 3, S, S) uint8: red down, green across, blue per image — every patch a different colour."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.zeros(batch, 3, size, size, dtype=torch.uint8)
    images[:, 0] = (y * 255 // (size - 1)).to(torch.uint8)
    images[:, 1] = (x * 255 // (size - 1)).to(torch.uint8)
    images[:, 2] = (torch.arange(batch) * 100 % 256).view(batch, 1, 1).to(torch.uint8)
    return images


# ------------------------------------------------------------------------------------------- PCA
def test_pca_is_orthonormal_sorted_and_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 48)) * np.linspace(5, 0.1, 48) + 3.0  # anisotropic, off-centre
    comps, ratio = figure7.pca(x, 28)
    assert comps.shape == (28, 48) and ratio.shape == (28,)
    np.testing.assert_allclose(comps @ comps.T, np.eye(28), atol=1e-10)
    assert np.all(np.diff(ratio) <= 0) and 0 < ratio.sum() <= 1
    ref = PCA(n_components=28, svd_solver="full").fit(x)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(comps @ ref.components_.T).diagonal(), 1.0, atol=1e-8)  # same up to sign


def test_patch_embedding_components_keep_the_rgb_layout():
    model = create_model("vit_nano_patch4")  # D=64 filters of 3×4×4
    pattern = torch.arange(48, dtype=torch.float32).reshape(3, 4, 4) - 20.0  # (C, P, P), distinct values
    with torch.no_grad():
        scale = torch.linspace(-2, 3, 64).view(64, 1, 1, 1)
        model.patch_embed.proj.weight.copy_(scale * pattern + 1e-4 * torch.randn(64, 3, 4, 4))
    comps = figure7.patch_embedding_components(model, n=28)
    assert comps.shape == (28, 4, 4, 3)
    flat = comps.reshape(28, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(28), atol=1e-6)
    expected = pattern.permute(1, 2, 0).numpy()  # (P, P, C): channel last, as images
    expected = expected / np.linalg.norm(expected)
    first = comps[0] * np.sign(comps[0].ravel() @ expected.ravel())
    np.testing.assert_allclose(first, expected, atol=1e-3)


# ----------------------------------------------------------------------------------- position embedding
def test_position_similarity_is_symmetric_with_unit_diagonal_and_skips_the_class_token():
    model = create_model("vit_nano_patch4")
    with torch.no_grad():
        model.pos_embed[0, 0] = 1e3  # the class token's entry must not appear anywhere
    sim = figure7.position_similarity(model)
    assert sim.shape == (8, 8, 8, 8)
    flat = sim.reshape(64, 64)
    np.testing.assert_allclose(np.diag(flat), 1.0, atol=1e-6)
    np.testing.assert_allclose(flat, flat.T, atol=1e-6)
    table = model.pos_embed.detach()[0]
    a, b = table[1 + 2 * 8 + 5], table[1 + 7 * 8 + 1]  # positions (2, 5) and (7, 1), after the class token
    assert sim[2, 5, 7, 1] == pytest.approx(float(torch.cosine_similarity(a, b, dim=0)), abs=1e-6)


def test_sincos_position_similarity_decays_with_distance():
    sim = figure7.position_similarity(create_model("vit_nano_patch4", pos_embed="sincos"))
    row = sim[0, 0, 0, :4]
    assert np.all(np.diff(row) < 0), row  # (0,0) against (0,0), (0,1), (0,2), (0,3)
    diagonal = [sim[0, 0, d, d] for d in range(4)]
    assert np.all(np.diff(diagonal) < 0), diagonal
    ii, jj = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    for i in range(8):
        for j in range(8):
            cheb = np.maximum(abs(ii - i), abs(jj - j))
            manhattan = abs(ii - i) + abs(jj - j)
            assert sim[i, j][manhattan == 1].mean() > sim[i, j][cheb >= 3].mean()


# ----------------------------------------------------------------------------------- attention distance
def uniform_attention(tokens: int, heads: int = 2, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, heads, tokens, tokens), 1.0 / tokens)


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_distance_of_uniform_attention_is_the_mean_pairwise_distance(prefix):
    # 2×2 grid of 16px patches: from any patch the others are at 0, 16, 16, 16√2 → mean 8 + 4√2.
    two = figure7.attention_distance(uniform_attention(prefix + 4), figure7.patch_distances((2, 2), 16), prefix)
    np.testing.assert_allclose(two.numpy(), 8 + 4 * math.sqrt(2), rtol=1e-12)
    # 3×3 grid of 1px patches, 81 ordered pairs: 24 at 1, 16 at √2, 12 at 2, 16 at √5, 4 at 2√2.
    three = figure7.attention_distance(uniform_attention(prefix + 9), figure7.patch_distances((3, 3), 1), prefix)
    np.testing.assert_allclose(three.numpy(), (48 + 24 * math.sqrt(2) + 16 * math.sqrt(5)) / 81, rtol=1e-12)


def test_attention_on_self_has_distance_zero_and_on_the_far_corner_the_diagonal():
    eye = torch.eye(1 + 9).expand(2, 3, 10, 10)  # (B, H, T, T), every token reads only itself
    assert figure7.attention_distance(eye, figure7.patch_distances((3, 3), 16), 1).abs().max() == 0
    corner = torch.zeros(1, 1, 4, 4)
    corner[..., 3] = 1.0  # every patch of a 2×2 grid reads the bottom-right one
    got = figure7.attention_distance(corner, figure7.patch_distances((2, 2), 10), 0)
    assert float(got) == pytest.approx((10 * math.sqrt(2) + 10 + 10 + 0) / 4)


def test_mean_attention_distance_of_a_model_with_uniform_attention():
    model = create_model("vit_nano_patch4")  # 8×8 grid of 4px patches, 2 layers × 2 heads
    with torch.no_grad():
        for block in model.blocks:  # q = k = 0: softmax gives every key the same weight
            block.attn.qkv.weight.zero_()
            block.attn.qkv.bias.zero_()
    got = figure7.mean_attention_distance(model, gradient_images(3))
    assert got.shape == (2, 2)
    expected = float(figure7.patch_distances((8, 8), 4).mean())
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert 16.0 < expected < 17.0  # ≈ 0.5214 · 32: the mean distance between two random points of a 32px square


def test_mean_attention_distance_does_not_depend_on_chunking_or_dtype():
    from ssl_vit.data.normalize import normalize_uint8

    torch.manual_seed(0)
    model = create_model("vit_nano_patch4").train()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    whole = figure7.mean_attention_distance(model, images, batch_size=16)
    chunked = figure7.mean_attention_distance(model, normalize_uint8(images), batch_size=2)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5)
    assert model.training  # the mode is restored
    assert np.all(whole > 0) and np.all(whole < 28 * math.sqrt(2))


def test_figure7_pngs(tmp_path):
    model = create_model("vit_nano_patch4")
    comps = figure7.patch_embedding_components(model)
    sim = figure7.position_similarity(model)
    dist = figure7.mean_attention_distance(model, gradient_images(2))
    w, h = assert_png(figure7.plot_figure7(comps, sim, dist, tmp_path / "figure7.png", image_size=32))
    assert w > 2 * h  # three panels side by side
    assert_png(figure7.plot_patch_components(comps, tmp_path / "a.png"))
    assert_png(figure7.plot_position_similarity(sim, tmp_path / "b.png"))
    assert_png(figure7.plot_attention_distance(dist, tmp_path / "c.png", image_size=32))


def test_missing_matplotlib_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    with pytest.raises(UserError, match=r"pip install 'ssl_vit\[analysis\]'"):
        figure7.plot_attention_distance(np.ones((2, 2)), tmp_path / "c.png")


# ------------------------------------------------------------------------------------- masked prediction
@pytest.mark.parametrize("target", ["mean_color", "downsampled_color", "pixels"])
def test_masked_prediction_panels_pixel_by_pixel(target, tmp_path):
    torch.manual_seed(0)
    kwargs = {"grid": 2} if target == "downsampled_color" else None
    objective = MaskedPatchPrediction(create_model("vit_nano_patch4"), target=target, target_kwargs=kwargs).train()
    images = gradient_images(3)
    panels = masked.masked_prediction_panels(objective, images, torch.Generator().manual_seed(1))
    assert objective.training  # restored
    out = objective.eval().predict(images, generator=torch.Generator().manual_seed(1))  # the same draw
    assert panels.original.shape == panels.corrupted.shape == panels.prediction.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(panels.index, out["corruption"].index.numpy())
    original = images.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(panels.original, original)

    def patch(array: np.ndarray, b: int, pos: int) -> np.ndarray:
        r, c = divmod(pos, 8)
        return array[b, r * 4 : r * 4 + 4, c * 4 : c * 4 + 4]

    render_pred = objective.target.render(out["predictions"]).numpy()  # (B, K, P, P, 3)
    render_tgt = objective.target.render(out["corrupted_targets"]).numpy()
    source = out["corruption"].source.numpy()
    corrupted = set()
    for b in range(3):
        for k, (pos, kind) in enumerate(zip(panels.index[b], panels.kind[b])):
            pos = int(pos)
            corrupted.add((b, pos))
            shown = patch(panels.corrupted, b, pos)
            if kind == masked.MASKED:
                assert np.all(shown == masked.GREY)
            elif kind == masked.REPLACED:
                sb, spos = divmod(int(source[b, k]), 64)
                np.testing.assert_array_equal(shown, patch(original, sb, spos))
            else:
                np.testing.assert_array_equal(shown, patch(original, b, pos))
            np.testing.assert_array_equal(patch(panels.prediction, b, pos), render_pred[b, k])
            np.testing.assert_array_equal(patch(panels.target, b, pos), render_tgt[b, k])
    faded = np.round(original * masked.FADE + 255 * (1 - masked.FADE)).astype(np.uint8)
    for b in range(3):
        for pos in range(64):
            if (b, pos) not in corrupted:
                np.testing.assert_array_equal(patch(panels.corrupted, b, pos), patch(original, b, pos))
                np.testing.assert_array_equal(patch(panels.prediction, b, pos), patch(faded, b, pos))
    assert {int(k) for k in panels.kind.ravel()} == {0, 1, 2} and len(corrupted) == 3 * 32
    if target == "mean_color":  # each corrupted patch is one flat bin-centre colour: the decoded class
        colours = decode_class(out["predictions"][..., 0]).numpy()  # (B, K, 3)
        first = patch(panels.prediction, 0, int(panels.index[0, 0]))
        np.testing.assert_array_equal(first, np.broadcast_to(colours[0, 0], (4, 4, 3)))
        assert panels.mean_colour is None  # the prediction already is the mean colour
    else:  # the predicted patch's average colour, painted flat over each corrupted patch
        b, pos = 0, int(panels.index[0, 0])
        expected = np.round(render_pred[0, 0].astype(np.float64).mean(axis=(0, 1)))
        np.testing.assert_allclose(patch(panels.mean_colour, b, pos), np.broadcast_to(expected, (4, 4, 3)), atol=1)
    w, h = assert_png(masked.plot_masked_prediction(panels, tmp_path / "masked.png", title=target))
    assert h > w / 2  # three rows of four panels


# -------------------------------------------------------------------------------------------- curves
def write_metrics(path: Path, steps: int = 40, accuracy: bool = True, torn_tail: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with path.open("w") as f:
        for s in range(1, steps + 1):
            record = {"step": s, "loss": 6.0 * math.exp(-s / 15) + 0.1 * rng.random(), "lr": 1e-3}
            if accuracy:
                record.update(acc=min(1.0, s / steps + 0.05 * rng.random()), acc_masked=s / steps / 2)
            f.write(json.dumps(record) + "\n")
        if torn_tail:
            f.write('{"step": 41, "lo')  # a run killed mid-write
    return path


def test_read_metrics_drops_a_torn_last_line_but_rejects_damage(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl")
    records = plots.read_metrics(path)
    assert len(records) == 40 and records[-1]["step"] == 40
    lines = path.read_text().splitlines()
    lines[5] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metrics\.jsonl, line 6"):
        plots.read_metrics(path)
    with pytest.raises(DataError, match="no such metrics file"):
        plots.read_metrics(tmp_path / "missing.jsonl")


def test_smooth_is_a_debiased_ema():
    np.testing.assert_allclose(plots.smooth([3.0] * 10, 0.9), 3.0)  # no bias towards 0 at the start
    got = plots.smooth([0.0, 10.0, math.nan, 10.0], 0.5)
    assert got[0] == 0.0 and got[1] == pytest.approx(5.0 / 0.75)  # ema 0.5·0 + 0.5·10, debiased by 1 − 0.5²
    assert got[2] == got[1]  # NaN skipped, not propagated
    assert got[3] == pytest.approx((0.5 * 5.0 + 0.5 * 10.0) / (0.5 * 0.75 + 0.5))
    assert plots.default_weight(20) == 0.0 and plots.default_weight(400) == pytest.approx(0.95)


def test_training_curves_png(tmp_path):
    records = plots.read_metrics(write_metrics(tmp_path / "metrics.jsonl"))
    assert plots.accuracy_keys(records) == ["acc", "acc_masked"]
    steps, loss = plots.series(records, "loss")
    assert steps.tolist() == list(range(1, 41)) and loss[0] > loss[-1]
    w_two, _ = assert_png(plots.plot_training_curves(records, tmp_path / "curves.png", title="run"))
    regression = plots.read_metrics(write_metrics(tmp_path / "m2.jsonl", accuracy=False))
    w_one, _ = assert_png(plots.plot_training_curves(regression, tmp_path / "curves2.png"))
    assert w_two > 1.5 * w_one  # the accuracy panel only when there is accuracy
    with pytest.raises(DataError, match="no records"):
        plots.plot_training_curves([{"step": 1, "lr": 0.1}], tmp_path / "x.png")


def test_fewshot_curve_reads_nested_and_flat_results(tmp_path):
    nested = {"fewshot": {"10": 0.5, "1": {"mean": 0.2, "std": 0.03}, "5": 0.4}, "fewshot_std": {"5": 0.02}}
    assert plots.fewshot_curve(nested) == ([1, 5, 10], [0.2, 0.4, 0.5], [0.03, 0.02, 0.0])
    flat = {"fewshot/5shot": 40.0, "fewshot/5shot_std": 2.0, "fewshot/1shot": 20.0, "fewshot/1shot_std": 1.0,
            "fewshot/5shot_fixed_l2": 39.0, "knn/k20_top1": 50.0}
    assert plots.fewshot_curve(flat) == ([1, 5], [20.0, 40.0], [1.0, 2.0])
    assert plots.fewshot_curve({"fewshot": {"2": 0.3}}) == ([2], [0.3], None)
    with pytest.raises(DataError, match="no few-shot results"):
        plots.fewshot_curve({"knn/k20_top1": 50.0})
    scratch = {"fewshot": {"1": 0.1, "5": 0.2, "10": 0.25}}
    assert_png(plots.plot_fewshot({"pretrained (MPP)": nested, "random init": scratch}, tmp_path / "fs.png"))


# -------------------------------------------------------------------------------------------- report
def test_write_report(tmp_path):
    figures_dir = tmp_path / "figs"
    png = plots.plot_fewshot({"a": {"fewshot": {"1": 0.1, "5": 0.3}}}, figures_dir / "fewshot.png")
    path = report.write_report(
        tmp_path / "out",
        title="Demo run",
        summary={"model": "vit_nano_patch4", "steps": 1200, "final loss": 2.345678},
        figures={"Few-shot": png, "Gone": tmp_path / "nope.png"},
        tables=[{"title": "Few-shot accuracy", "rows": [{"shots": 1, "pretrained": 0.41234, "random": None},
                                                           {"shots": 5, "pretrained": 0.6, "random": 0.3}]},
                {"title": "Raw", "columns": ["a|b", "c"], "rows": [[1.5, "x|y"]]}],
        notes=["Pretraining helps at every shot count.", "Numbers are on 2 cores."],
    )
    assert path == tmp_path / "out" / "report.md"
    text = path.read_text()
    assert text.startswith("# Demo run\n")
    assert "| steps | 1,200 |" in text and "| final loss | 2.346 |" in text
    assert "| shots | pretrained | random |" in text and "| 1 | 0.4123 | — |" in text
    assert "| a\\|b | c |" in text and "| 1.5 | x\\|y |" in text
    assert "![Few-shot](../figs/fewshot.png)" in text
    assert "`../nope.png` is missing" in text
    assert text.index("## Notes") < text.index("Pretraining helps")
    resolved = (path.parent / "../figs/fewshot.png").resolve()
    assert resolved == png.resolve()


def test_position_similarity_of_a_large_grid_is_one_image(tmp_path):
    """A 24×24 grid (ViT-B/16 at 384px) is 576 maps: tiled into one image, not 576 axes."""
    import time

    model = create_model("vit_nano_patch4", img_size=96, pos_embed="sincos")
    sim = figure7.position_similarity(model)
    assert sim.shape == (24, 24, 24, 24)
    start = time.perf_counter()
    assert_png(figure7.plot_position_similarity(sim, tmp_path / "big.png"), min_side=300)
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------------------------------- ssl-vit analyze
@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, pretrain_shards_32):
    """A 4-step smoke pretraining of vit_nano_patch4 (mean-colour MPP) through the real CLI: run dir + shards."""
    from trainer_fixtures import run_pretrain, smoke_overrides

    shards = pretrain_shards_32
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    overrides = smoke_overrides(shards, run_dir, **{"train.total_steps": 4, "train.checkpoint_every": 4,
                                                   "train.log_every": 1, "optim.warmup_steps": 1})
    done = run_pretrain(overrides, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir, shards


@pytest.mark.timeout(180)
def test_analyze_a_pretraining_run(pretrain_run, tmp_path, capsys):
    from ssl_vit.cli import main

    run_dir, shards = pretrain_run
    out = tmp_path / "analysis"
    assert main(["analyze", str(run_dir), "--images", str(shards), "--out", str(out), "--num-images", "5"]) == 0
    names = {"figure7.png", "embedding_filters.png", "position_similarity.png", "attention_distance.png",
             "masked_prediction.png", "training_curves.png"}
    for name in names:
        assert_png(out / name)
    text = (out / "analysis.md").read_text()
    for name in names:
        assert f"]({name})" in text
    assert "| step | 4 |" in text and "| target | mean_color |" in text
    numbers = json.loads((out / "analysis.json").read_text())
    assert numbers["num_images"] == 5 and numbers["step"] == 4
    distance = np.asarray(numbers["mean_attention_distance_px"])
    assert distance.shape == (2, 2) and np.all((distance > 0) & (distance < 32 * math.sqrt(2)))
    assert set(numbers["masked_prediction_metrics"]) == {"loss", "acc", "acc_masked", "acc_replaced", "acc_kept"}
    ratio = numbers["explained_variance_ratio"]
    assert len(ratio) == 28 and ratio == sorted(ratio, reverse=True)


@pytest.mark.timeout(180)
def test_analyze_an_exported_backbone_skips_the_masked_picture(pretrain_run, tmp_path, capsys):
    from ssl_vit.cli import main

    run_dir, shards = pretrain_run
    weights = tmp_path / "backbone.safetensors"
    assert main(["export", str(run_dir), str(weights)]) == 0
    out = tmp_path / "analysis"
    assert main(["analyze", str(weights), "--images", f"{shards}:train", "--out", str(out), "--num-images", "3"]) == 0
    assert_png(out / "figure7.png")
    assert not (out / "masked_prediction.png").exists() and not (out / "training_curves.png").exists()
    text = (out / "analysis.md").read_text()
    assert "**Masked prediction**: skipped" in text and "without the [MASK] embedding" in text
    assert main(["analyze", str(tmp_path / "nowhere"), "--images", str(shards), "--out", str(out)]) == 2
    assert "nowhere: no such file or directory" in capsys.readouterr().err
    assert main(["analyze", str(weights), "--images", str(shards), "--out", str(out), "--num-images", "0"]) == 2
    assert "--num-images must be at least 1" in capsys.readouterr().err
