"""What Hugging Face `datasets` says about its columns: which hold images, which are ClassLabels and their names.

`datasets` writes its features as JSON in two places: the arrow schema's metadata key `huggingface`, as
`{"info": {"features": {...}}, "fingerprint": ...}` (every parquet file `push_to_hub` writes, every Arrow file
`save_to_disk` writes), and a save_to_disk folder's `dataset_info.json` (`{"features": {...}, ...}`). A feature
is `{"_type": "Image"}` (stored as a struct `{bytes, path}`) or `{"_type": "ClassLabel", "names": [...]}` (an
int64 column, -1 for "no label"), older versions adding keys such as `"id": null` or `"num_classes"`. Anything
else, or metadata that does not parse, is simply no information: the columns are then chosen by name and type.
"""
from __future__ import annotations

import json

HF_KEY = b"huggingface"


def features_from_metadata(metadata: dict | None) -> dict | None:
    """The features dict from an arrow schema's metadata (bytes keys and values), or None."""
    raw = (metadata or {}).get(HF_KEY)
    if raw is None:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError):
        return None
    return features if isinstance(features, dict) else None


def image_columns(features: dict | None) -> list[str]:
    """Columns whose feature is an `Image`, in the features' order."""
    return [name for name, f in (features or {}).items() if isinstance(f, dict) and f.get("_type") == "Image"]


def class_label_columns(features: dict | None) -> list[str]:
    return [name for name, f in (features or {}).items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"]


def class_label_names(features: dict | None, column: str) -> list[str] | None:
    """The ClassLabel names of `column` in index order (label k is `names[k]`), or None when it is no ClassLabel."""
    feature = (features or {}).get(column)
    if not isinstance(feature, dict) or feature.get("_type") != "ClassLabel":
        return None
    names = feature.get("names")
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    count = feature.get("num_classes")
    return [str(i) for i in range(count)] if isinstance(count, int) and count > 0 else None
