"""Progress in a log (not a terminal) is one plain line every interval, with count, rate and ETA; a terminal keeps
tqdm's redrawn bar."""
from __future__ import annotations

import io
import re

import pytest
from trainer_fixtures import run_pretrain, smoke_overrides

from data_tools.progress_bar import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_with_rate_and_eta():
    log = io.StringIO()
    with progress_bar(total=4, desc="train", unit="step", file=log, mininterval=0) as bar:  # a line per update
        for i in range(4):
            bar.update(1)
            bar.set_postfix(loss=f"{1.0 / (i + 1):.2f}", refresh=False)
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert lines[0].startswith("train:   0% 0/4 step [00:00<?, ?step/s")
    assert re.fullmatch(r"train: 100% 4/4 step \[\d\d:\d\d<\d\d:\d\d, +[\d.]+step/s, loss=0\.25\]", lines[-1]), lines[-1]
    assert len(lines) >= 5  # the opening line and one per update


def test_a_log_is_written_once_per_interval_and_at_the_end(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log = io.StringIO()
    bar = progress_bar(range(1000), desc="knn", unit="block", file=log)
    assert bar.mininterval == LOG_INTERVAL_S == 30.0
    assert sum(1 for _ in bar) == 1000
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("knn:   0% 0/1000 block") and lines[1].startswith("knn: 100% 1000/1000 block")


def test_without_a_total_no_percentage_or_eta_is_invented():
    log = io.StringIO()
    with progress_bar(desc="photos", unit="img", file=log, mininterval=0) as bar:
        bar.update(3)
    assert re.fullmatch(r"photos: 3 img \[\d\d:\d\d, +[\d.]+img/s\]", log.getvalue().splitlines()[-1])


def test_a_terminal_keeps_the_redrawn_bar():
    screen = Terminal()
    with progress_bar(total=2, desc="train", file=screen, mininterval=0) as bar:
        bar.update(2)
    assert "\r" in screen.getvalue() and "|" in screen.getvalue()  # tqdm's bar, redrawn in place


@pytest.mark.timeout(180)
def test_pretraining_under_nohup_logs_lines(pretrain_shards_32, tmp_path):
    """stderr is a pipe here, as under nohup or SLURM: the trainer's bar is lines, loss and images/s included
    (TQDM_MININTERVAL, tqdm's variable, sets the interval)."""
    proc = run_pretrain(smoke_overrides(pretrain_shards_32, tmp_path / "run", **{"train.total_steps": 4, "train.log_every": 1,
                                                                   "optim.warmup_steps": 1}), TQDM_MININTERVAL="0")
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    final = [line for line in proc.stderr.splitlines() if line.startswith("train: 100% 4/4 step [")]
    assert final and re.search(r"step/s, loss=\d+\.\d{4}, lr=[\d.e+-]+, img/s=\d+\]$", final[-1]), proc.stderr
