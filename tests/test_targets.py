"""The three MPP targets against hand-computed values: quantisation, bit order, cell order, pixel order."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from ssl_vit.errors import ConfigError
from ssl_vit.objectives import targets


def solid(color: tuple[int, int, int], size: int, batch: int = 1) -> torch.Tensor:
    """(batch, 3, size, size) uint8 of one colour."""
    return torch.tensor(color, dtype=torch.uint8).view(1, 3, 1, 1).expand(batch, 3, size, size).contiguous()


def quadrants(colors: list[tuple[int, int, int]], size: int) -> torch.Tensor:
    """(1, 3, size, size) uint8: top-left, top-right, bottom-left, bottom-right in `colors` order."""
    img = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    h = size // 2
    for i, color in enumerate(colors):
        r, c = divmod(i, 2)
        img[0, :, r * h : (r + 1) * h, c * h : (c + 1) * h] = torch.tensor(color, dtype=torch.uint8).view(3, 1, 1)
    return img


# (colour, bits) -> class, worked out by hand: q = floor(v / 256 · 2^bits), class = (q_r·2^b + q_g)·2^b + q_b
HAND = [
    ((255, 0, 128), 3, 7 * 64 + 0 * 8 + 4),  # 452, the example
    ((255, 0, 128), 1, 1 * 4 + 0 * 2 + 1),  # 5
    ((255, 0, 128), 2, 3 * 16 + 0 * 4 + 2),  # 50
    ((255, 0, 128), 5, 31 * 1024 + 0 * 32 + 16),  # 31760
    ((31, 32, 200), 3, 0 * 64 + 1 * 8 + 6),  # 14: 31 is still bin 0, 32 opens bin 1
    ((64, 127, 192), 1, 0 * 4 + 0 * 2 + 1),  # 1: 127 < 128 ≤ 192
    ((64, 127, 192), 5, 8 * 1024 + 15 * 32 + 24),  # 8672
]


@pytest.mark.parametrize("patch_size", [4, 8, 16])
@pytest.mark.parametrize("color,bits,expected", HAND)
def test_mean_color_of_solid_images(color, bits, expected, patch_size):
    target = targets.build("mean_color", patch_size, bits=bits)
    out = target(solid(color, 2 * patch_size, batch=2))
    assert out.dtype == torch.int64 and out.shape == (2, 4, 1)
    assert (out == expected).all()
    assert target.num_classes == 2 ** (3 * bits) and target.num_outputs == 1 and target.kind == "classification"


def test_mean_color_of_quadrant_image_is_row_major():
    colors = [(255, 0, 128), (0, 0, 0), (31, 32, 200), (255, 255, 255)]
    out = targets.build("mean_color", 8, bits=3)(quadrants(colors, 16))  # one patch per quadrant
    assert out[0, :, 0].tolist() == [452, 0, 14, 511]


def test_mean_color_averages_exactly_at_bin_edges():
    """Half 0, half 64 averages to exactly 32: bin 1 at 3 bits (no float rounding down to bin 0)."""
    img = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    img[:, :, :, 2:] = 64
    img[:, 1] = 255  # green: solid 255 → 7
    img[:, 2, :, :2] = 255  # blue: half 255, half 64 → mean 159.5 → floor(4.98) = 4
    out = targets.build("mean_color", 4, bits=3)(img)
    assert out.item() == (1 * 8 + 7) * 8 + 4


def test_downsampled_quadrant_patch_cells_row_major():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    img = quadrants(colors, 8)  # one 8px patch with four coloured quadrants
    t2 = targets.build("downsampled_color", 8, grid=2, bits=1)
    assert t2.num_outputs == 4 and t2.num_classes == 8 and t2.out_features == 32
    assert t2(img)[0, 0].tolist() == [4, 2, 1, 7]  # R=100b, G=010b, B=001b, white=111b
    t4 = targets.build("downsampled_color", 8, grid=4, bits=1)
    expected = [[4, 4, 2, 2], [4, 4, 2, 2], [1, 1, 7, 7], [1, 1, 7, 7]]
    assert t4(img)[0, 0].tolist() == [c for row in expected for c in row]


def test_downsampled_matches_per_cell_mean_color():
    """Each cell of the 4×4-downsampled target equals the mean-colour target of that cell as its own patch."""
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    down = targets.build("downsampled_color", 16, grid=4, bits=3)(img)  # (2, 4, 16)
    cells = targets.build("mean_color", 4, bits=3)(img)[..., 0]  # (2, 64): 4px cells, row-major over the image
    cells = rearrange(cells, "b (gh g1 gw g2) -> b (gh gw) (g1 g2)", gh=2, g1=4, gw=2, g2=4)  # (2, 4, 16)
    assert torch.equal(down, cells)


def test_pixels_order_is_p1_p2_c():
    p = 4
    y, x, c = torch.meshgrid(torch.arange(8), torch.arange(8), torch.arange(3), indexing="ij")
    img = (c * 64 + y * 8 + x).permute(2, 0, 1).unsqueeze(0).to(torch.uint8)  # (1, 3, 8, 8), every value distinct
    target = targets.build("pixels", p)
    out = target(img)
    assert out.shape == (1, 4, 48) and target.kind == "regression" and target.num_outputs == 48
    for n in range(4):
        gy, gx = divmod(n, 2)
        for p1 in range(p):
            for p2 in range(p):
                for ch in range(3):
                    want = img[0, ch, gy * p + p1, gx * p + p2].item() / 255.0
                    assert out[0, n, (p1 * p + p2) * 3 + ch].item() == pytest.approx(want)


def test_pixels_normalize_standardises_each_patch():
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = targets.build("pixels", 8, normalize=True)(img)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(out.std(-1), torch.ones(2, 4), atol=1e-3)
    assert (targets.build("pixels", 8, normalize=True)(solid((9, 9, 9), 16)) == 0).all()


def test_decode_class_gives_bin_centres_and_inverts_quantisation():
    assert targets.decode_class(torch.tensor(452), 3).tolist() == [240, 16, 144]
    for bits in (1, 2, 3):
        classes = torch.arange(2 ** (3 * bits))
        rgb = targets.decode_class(classes, bits)  # (C, 3)
        images = rgb.view(-1, 3, 1, 1).expand(-1, 3, 4, 4).contiguous()
        assert torch.equal(targets.build("mean_color", 4, bits=bits)(images)[:, 0, 0], classes)


def test_render_paints_patches():
    t = targets.build("downsampled_color", 8, grid=2, bits=1)
    patch = t.render(torch.tensor([[4, 2, 1, 7]]))  # (1, 8, 8, 3)
    assert patch.shape == (1, 8, 8, 3) and patch.dtype == torch.uint8
    assert patch[0, 0, 0].tolist() == [192, 64, 64] and patch[0, 7, 7].tolist() == [192, 192, 192]
    pixels = targets.build("pixels", 4)
    img = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(pixels.render(pixels(img))[0, 0], img[0].permute(1, 2, 0))


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="mean_color.*downsampled_color.*pixels"):
        targets.build("colour", 16)
    with pytest.raises(ConfigError, match="mean_color"):
        targets.build("mean_colour", 16)
    with pytest.raises(ConfigError, match="grid=3.*patch size 16"):
        targets.build("downsampled_color", 16, grid=3)
    with pytest.raises(ConfigError, match="bits"):
        targets.build("mean_color", 16, bits=9)
    with pytest.raises(ConfigError, match="did you mean 'bits'"):
        targets.build("mean_color", 16, bit=3)
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        targets.build("mean_color", 16)(solid((0, 0, 0), 24))
