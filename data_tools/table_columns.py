"""Which column of a table holds the images and which the labels: named by the user, or found.

The image column is the one `datasets` calls an `Image` (a struct `{bytes, path}`); else the one column whose type
can hold encoded image files (binary, or a struct with a binary `bytes` field), preferring a usual name (`image`,
`img`, `jpg`, ...) when there are several. The label column is the one ClassLabel, else the first column with a
usual name (`label`, `labels`, `class`, ...) that holds integers or strings. When guessing fails, or the data
holds several candidates, the error lists the columns with their types in one line and names the option to set.
"""
from __future__ import annotations

from .errors import DataToolsError
from .hf_features import class_label_columns, image_columns

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "picture", "photo")
LABEL_NAMES = ("label", "labels", "class", "cls", "target", "category", "fine_label")


def describe(schema) -> str:
    """`image: struct<bytes: binary, path: string>, label: int64`, at most 20 columns."""
    shown = ", ".join(f"{f.name}: {f.type}" for f in list(schema)[:20])
    return shown + (f", … ({len(schema)} columns in all)" if len(schema) > 20 else "")


def holds_images(t) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(t):
        at = t.get_field_index("bytes")
        t = t.field(at).type if at >= 0 else None
    return t is not None and (pa.types.is_binary(t) or pa.types.is_large_binary(t))


def holds_labels(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return holds_labels(t.value_type)
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def choose_image(schema, features: dict | None, given: str | None, where: str) -> str:
    names = schema.names
    if given is not None:
        _exists(schema, given, where, "--image-column")
        if not holds_images(schema.field(given).type):
            raise DataToolsError(
                f"{where}: --image-column '{given}' holds {schema.field(given).type}, not encoded images (binary, "
                f"or a struct with a binary 'bytes' field); its columns: {describe(schema)}")
        return given
    declared = [n for n in image_columns(features) if n in names and holds_images(schema.field(n).type)]
    candidates = declared or [n for n in names if holds_images(schema.field(n).type)]
    if len(candidates) == 1:
        return candidates[0]
    usual = [n for n in IMAGE_NAMES for c in candidates if c.lower() == n]
    if usual:
        return next(c for c in candidates if c.lower() == usual[0])
    if candidates:
        raise DataToolsError(f"{where} has several columns that may hold images ({', '.join(candidates)}); "
                             "choose one with --image-column")
    raise DataToolsError(f"{where}: no column holds encoded images (binary, or a struct with a binary 'bytes' "
                         f"field); its columns: {describe(schema)}. Name the image column with --image-column")


def choose_label(schema, features: dict | None, given: str | None, image: str, where: str) -> str:
    names = schema.names
    if given is not None:
        _exists(schema, given, where, "--label-column")
        if given == image or not holds_labels(schema.field(given).type):
            raise DataToolsError(
                f"{where}: --label-column '{given}' holds {schema.field(given).type}, not labels (integers or "
                f"strings); its columns: {describe(schema)}")
        return given
    declared = [n for n in class_label_columns(features) if n in names and holds_labels(schema.field(n).type)]
    if len(declared) == 1:
        return declared[0]
    for usual in LABEL_NAMES:
        for name in declared or names:
            if name.lower() == usual and name != image and holds_labels(schema.field(name).type):
                return name
    raise DataToolsError(f"{where}: no label column found (its columns: {describe(schema)}); name it with "
                         "--label-column, or build with --labels none for unlabelled images")


def _exists(schema, name: str, where: str, option: str) -> None:
    if schema.get_field_index(name) < 0:
        raise DataToolsError(f"{where} has no column '{name}' ({option}); its columns: {describe(schema)}")
