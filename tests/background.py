"""Commands started in the background and collected later, so that independent runs of one test module overlap.

A launch spends much of its time importing torch in one process after another (supervisor, launcher, ranks) or
waiting for a launcher's monitor tick, with a core idle; an independent run started alongside fills it. Output
goes to files, not pipes: a full pipe that nobody reads would stop the run.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest
from trainer_fixtures import REPO, cli_env


class Background:
    """`command` running from now on (in the repository, with `cli_env()`); `finish` waits and collects it."""

    def __init__(self, command: list[str], logs: Path, env: dict[str, str] | None = None) -> None:
        logs.parent.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logs.with_name(logs.name + ".stdout")
        self.stderr_path = logs.with_name(logs.name + ".stderr")
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env or cli_env(), stdout=out, stderr=err, text=True)
        self.tree = [psutil.Process(self.proc.pid)]

    def finish(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the command (at most `timeout` s from now) and return what it wrote, as `subprocess.run` would."""
        self.proc.wait(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, self.stdout_path.read_text(),
                                           self.stderr_path.read_text())

    def kill(self) -> None:
        """Kill the command and every process it started, if still running (a test that failed before `finish`)."""
        try:
            self.tree += self.tree[0].children(recursive=True)
        except psutil.Error:
            pass
        for p in self.tree:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait()


def selected(request: pytest.FixtureRequest, *names: str) -> bool:
    """Whether a test function of the requesting module named one of `names` runs in this session (it may have
    been deselected by -k, -m or a node id): a module fixture starts only the background runs that will be used."""
    return any(item.module is request.module and item.originalname in names for item in request.session.items)
