"""`python tests/build_until_killed.py K build SRC OUT ...`: `ssl-vit-shards build ...` that stops for ever once K
shards are finished in this run and the next one is partly written, saying so on stderr: a deterministic point
for the resume tests to SIGKILL a build. The hook patches data_tools' shard writer here, in the tests, so the
product reads no test variable."""
from __future__ import annotations

import sys
import time

from data_tools import build
from data_tools.cli import main


def hanging_writer(hang_after: int) -> type:
    finished = 0

    class HangingWriter(build.ShardWriter):
        def finish(self) -> tuple[str, int]:
            nonlocal finished
            result = super().finish()
            finished += 1
            return result

        def add(self, sample) -> None:
            super().add(sample)
            if finished >= hang_after:
                self.flush()  # leave a real partial `.tar.tmp` behind, as a kill mid-write would
                print(f"data_tools test hook: hanging in {self.tmp.name}", file=sys.stderr, flush=True)
                while True:
                    time.sleep(60)

    return HangingWriter


if __name__ == "__main__":
    build.ShardWriter = hanging_writer(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
