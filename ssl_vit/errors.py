"""Errors a user can act on.

Anything raised as a `UserError` reaches the user as one line (`error: ...`) and exit code 2 from the
command line, with no traceback unless `--debug` is given. The message names the file, key, shard or
sample at fault and says what to do.
"""


class UserError(Exception):
    """A problem with the user's input (recipe, data, checkpoint), not a bug in ssl_vit."""


class ConfigError(UserError):
    """A recipe or command-line override is invalid."""


class DataError(UserError):
    """Shards, images or data specs are missing, unreadable or inconsistent."""


class PeerLost(UserError):
    """Another process of a multi-process run stopped answering (its machine died, was killed or cut off)."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the model."""


class StorageError(UserError):
    """A file could not be written: a full disk, a read-only file system, no permission, a file in the way."""


class RunDirectoryError(UserError):
    """A run directory is in use by another process, or holds a run the command would overwrite or mix with."""


class Stopped(UserError):
    """Stopped cleanly by a signal after a checkpoint: exit code 0, "resume later" (see the README's exit codes)."""


def one_line(err: BaseException) -> str:
    """The user-facing form of an error: `error: ...` on one line."""
    return f"error: {' '.join(str(err).split())}"


def report_now(err: UserError) -> None:
    """Print the error's line at once, before slow clean-up, and mark it so the CLI does not print it twice.

    Under `accelerate launch` the first rank to exit gets the others killed; printing before shutting down
    loader workers and process groups lets every rank say why it stopped.
    """
    import sys

    print(one_line(err), file=sys.stderr, flush=True)
    err.reported = True
