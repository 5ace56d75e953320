"""A toy install of the colour demo's two Debian packages, laid out as they install their files.

`write_emoji_packages(root)` writes `root/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf`, a COLR colour font
(fontTools, which matplotlib brings) whose glyphs are one or two coloured shapes on transparency, and
`root/usr/share/unicode/emoji/emoji-test.txt` in Unicode's format, with the lines the extraction must leave out:
a skin-tone variant, an unqualified form, a `Component` group and a ZWJ sequence the font does not join (drawn as
two glyphs side by side, so skipped). No test needs the real packages.
"""
from __future__ import annotations

import math
from pathlib import Path

# group → (outline of every glyph in it: a shape the silhouette shows, its first code point)
GROUPS = {"Smileys & Emotion": ("circle", 0x1F600), "Food & Drink": ("square", 0x1F340),
          "Travel & Places": ("triangle", 0x1F680)}
PALETTE = [(0.9, 0.1, 0.1), (0.1, 0.6, 0.1), (0.1, 0.2, 0.9), (0.95, 0.8, 0.1), (0.6, 0.1, 0.7), (0.1, 0.7, 0.8)]


def _outline(shape: str, scale: float):
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    c, r = 500, 420 * scale
    if shape == "circle":
        points = [(c + r * math.cos(2 * math.pi * k / 24), 380 + r * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    elif shape == "square":
        points = [(c - r, 380 - r), (c - r, 380 + r), (c + r, 380 + r), (c + r, 380 - r)]
    else:
        points = [(c - r, 380 - r), (c, 380 + r), (c + r, 380 - r)]
    pen = TTGlyphPen(None)
    pen.moveTo(tuple(map(round, points[0])))
    for p in points[1:]:
        pen.lineTo(tuple(map(round, p)))
    pen.closePath()
    return pen.glyph()


def write_emoji_packages(root: Path, per_group: int = 24) -> dict[str, int]:
    """The toy packages under `root`; returns how many pictures each group's class folder should receive."""
    from fontTools.colorLib.builder import buildCOLR, buildCPAL
    from fontTools.fontBuilder import FontBuilder

    names, glyphs, cmap, layers, lines = [".notdef"], {".notdef": _outline("square", 0.1)}, {}, {}, []
    for shape, first in GROUPS.values():
        for i in range(per_group):
            name = f"u{first + i:x}"
            names += [name, f"{name}.outer", f"{name}.inner"]
            glyphs[name] = glyphs[f"{name}.outer"] = _outline(shape, 1.0)
            glyphs[f"{name}.inner"] = _outline(shape, 0.3 + 0.4 * (i % 3) / 2)
            cmap[first + i] = name
            outer, inner = i % len(PALETTE), (i // len(PALETTE) + i + 1) % len(PALETTE)
            layers[name] = [(f"{name}.outer", outer), (f"{name}.inner", inner)]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap(cmap)
    builder.setupGlyf(glyphs)
    glyf = builder.font["glyf"]
    for n in names:
        glyf[n].recalcBounds(glyf)
    builder.setupHorizontalMetrics({n: (1000, glyf[n].xMin) for n in names})  # left side bearing = xMin, as in TrueType
    builder.setupHorizontalHeader(ascent=880, descent=-120)
    builder.setupNameTable({"familyName": "Toy Color Emoji", "styleName": "Regular"})
    builder.setupOS2()
    builder.setupPost()
    builder.font["COLR"] = buildCOLR(layers)
    builder.font["CPAL"] = buildCPAL([[(*rgb, 1.0) for rgb in PALETTE]])
    font = root / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
    font.parent.mkdir(parents=True)
    builder.save(str(font))

    for group, (_, first) in GROUPS.items():
        lines += [f"# group: {group}", "", "# subgroup: toy"]
        for i in range(per_group):
            lines.append(f"{first + i:X}                                                  ; fully-qualified     "
                         f"# {chr(first + i)} E1.0 toy {i}")
        lines.append(f"{first:X} 1F3FB                                            ; fully-qualified     "
                     f"# {chr(first)}\U0001F3FB E1.0 toy 0: light skin tone")  # a skin-tone copy: left out
        lines.append(f"{first + 1:X} FE0F                                             ; unqualified         "
                     f"# {chr(first + 1)} E1.0 toy 1")  # not fully qualified: left out
        lines.append("")
    first = GROUPS["Travel & Places"][1]
    lines.insert(-1, f"{first:X} 200D {first + 1:X}                                  ; fully-qualified     "
                     f"# {chr(first)}\u200d{chr(first + 1)} E1.0 toy joined")  # not one glyph in this font: skipped
    lines += ["# group: Component", "", "# subgroup: skin-tone",
              "1F3FB                                                  ; component           # \U0001F3FB E1.0 light "
              "skin tone", ""]
    table = root / "usr/share/unicode/emoji/emoji-test.txt"
    table.parent.mkdir(parents=True)
    table.write_text("# emoji-test.txt\n# Version: 15.0\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return {"smileys_emotion": per_group, "food_drink": per_group, "travel_places": per_group}
