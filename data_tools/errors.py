"""The one error class of `data_tools`.

`data_tools` must stay importable without torch or ssl_vit, so it does not reuse `ssl_vit.errors`; the
contract is the same: a `DataToolsError` is the user's to fix, reaches them as one line `error: ...`
with exit code 2, and its message names the file, option or shard at fault and says what to do.
"""


class DataToolsError(Exception):
    """Bad input or options for `ssl-vit-shards` (missing folder, bad CSV columns, conflicting build)."""
