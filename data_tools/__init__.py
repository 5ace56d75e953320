"""Image folders, file lists and parquet / `datasets` tables → WebDataset tar shards with `_info.json`, and their
verification.

Light on purpose: Pillow, tqdm and the standard library only (no torch, no ssl_vit), so shards can be
built on any machine; pyarrow only for tables (the `parquet` extra), imported only when SRC is one. Entry points:
`data_tools.build.build_split`, `data_tools.verify.verify_out`, and the `ssl-vit-shards build|verify` command
(`data_tools.cli`).
"""
