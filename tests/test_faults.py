"""Faults and bad input: nothing lost, nothing hangs, every error says what to do.

Faults already covered elsewhere (not repeated here):
  kill -9 then --resume auto reproduces the run ........ test_resume.py::test_kill9_at_a_random_step_then_resume_…
  SIGTERM → checkpoint, exit 0, a resume line ........... test_resume.py::test_sigterm_checkpoints_and_exits_zero_…
  a failing checkpoint write keeps `latest`, resumes ..... test_trainer.py::test_failed_checkpoint_write_leaves_…
  a non-finite loss is skipped and counted .............. test_trainer.py::test_injected_nan_skips_the_update_…
  a killed shard build, run again, gives the same files . test_data_tools_resume.py::test_resume_after_sigkill_…
  symlinks out of SRC are not followed unless asked ..... test_data_tools_skips.py::test_symlinks_leaving_src_…
  invalid YAML, unknown key, wrong type, batch arithmetic, unknown target: test_cli_errors.py
  load_backbone refuses pickles that would run code ..... test_weights.py::test_refuses_pickles_that_need_code
  fewer shards than ranks × workers ..................... test_data_stream.py::test_two_ranks_two_workers_three_…,
                                                          test_eval_sees_every_sample_exactly_once[2-2]

Here: bad images, cut and empty shards and dead URLs through both streams and the CLI; a corrupt shard on one
of two ranks; a real full disk under torch.save; checkpoints of another model size; checkpoints that carry
code; tar members named like paths; `_info.json` naming commands, URLs or files outside its directory.
"""
from __future__ import annotations

import functools
import http.server
import io
import json
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from background import Background, selected
from eval_fixtures import write_dataset
from imagegen import noise_image
from shardgen import Sample, encode, unique_samples, write_shards
from stream_fixtures import QuietHandler, take
from trainer_fixtures import LAUNCH_CONFIG, REPO, SMOKE, cli_env, free_port, smoke_overrides
from trainer_fixtures import rank_error_lines as _error_lines
from weights_fixtures import RunsCode

from data_tools.cli import main as shards_main
from ssl_vit.data import ShardSet, TrainStreamOptions, build_eval_stream, build_train_stream, resolve_spec
from ssl_vit.errors import CheckpointError, DataError
from ssl_vit.models import create_model
from ssl_vit.train import checkpoint as ckpt
from ssl_vit.train.agreement import HostAgreement

TINY_EVAL = ["image_size=32", "batch_size=8", "num_workers=0", "crop_pct=1.0", "knn.k=[1]"]


# --------------------------------------------------------------------------------------------------- helpers
def one_error_line(err: str) -> str:
    """The user-facing error: exactly one `error: ` line, the last one, and no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [x for x in lines if x.startswith("error: ")] == lines[-1:], err
    return lines[-1]


def truncated_jpeg() -> bytes:
    data = encode(noise_image(random.Random(1), (40, 30)))
    return data[: len(data) * 3 // 5]  # the entropy-coded data stops part-way, no end-of-image marker


BAD_IMAGES = {
    "truncated_jpeg": truncated_jpeg(),
    "random_bytes": bytes(random.Random(2).getrandbits(8) for _ in range(3000)),
    "zero_bytes": b"",
}


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*"))


# --------------------------------------------------------------------------------------- bad data: streams
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_a_bad_image_is_skipped_and_counted_in_training_and_named_in_evaluation(tmp_path: Path, kind: str):
    samples = unique_samples(24)
    samples[7] = Sample("s00007", BAD_IMAGES[kind], 7)  # stored as .jpg like the others
    write_shards(tmp_path, samples, shard_size=12)  # the bad one is in train-000000.tar
    options = TrainStreamOptions(batch_size=23, image_size=8, num_workers=0, shuffle_buffer=0, max_bad_fraction=0.1)
    stream = build_train_stream(str(tmp_path), options, seed=0)
    batches = take(stream, 3)  # three epochs: the bad sample is met, skipped and reported once in each
    assert [int(b["skipped"]) for b in batches] == [1, 1, 1]
    assert sorted(batches[0]["label"].tolist()) == [i for i in range(23) if i != 7]  # positions 0..22, stored order
    with pytest.raises(DataError, match=r"sample 's00007' of shard .*train-000000\.tar cannot be decoded"):
        list(build_eval_stream(str(tmp_path), batch_size=5, image_size=8, num_workers=0))


def _cut(path: Path, at_member_boundary: bool) -> None:
    """Cut a shard part-way: inside a member's data, or exactly where a member header would start."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    middle = members[len(members) // 2]
    path.write_bytes(path.read_bytes()[: middle.offset if at_member_boundary else middle.offset_data + 100])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("at_member_boundary", [False, True])
@pytest.mark.parametrize("with_index", [True, False])
def test_a_cut_shard_stops_both_streams_naming_it(tmp_path: Path, at_member_boundary: bool, with_index: bool):
    write_shards(tmp_path, unique_samples(30), shard_size=10)
    _cut(tmp_path / "train-000001.tar", at_member_boundary)
    # With _info.json the count gives a cut away; a bare URL list has only the tar's own end-of-archive marker.
    spec = str(tmp_path) if with_index else f"{tmp_path}/train-{{000000..000002}}.tar"
    named = r"shard .*train-000001\.tar (is unreadable|holds \d+ samples but _info.json says 10)"
    with pytest.raises(DataError, match=named):
        take(build_train_stream(spec, TrainStreamOptions(batch_size=4, image_size=8, num_workers=2, shuffle_buffer=0),
                                seed=0), 30)
    with pytest.raises(DataError, match=named):
        list(build_eval_stream(spec, batch_size=4, image_size=8, num_workers=2))


def _empty_tar(path: Path) -> None:
    with tarfile.open(path, "w"):
        pass  # end-of-archive marker only: a valid tar with no members


@pytest.mark.timeout(60)
def test_empty_shards(tmp_path: Path):
    write_shards(tmp_path, unique_samples(10), shard_size=10)
    good = str(tmp_path / "train-000000.tar")
    # A valid tar without members is an honest shard of 0 samples: every real sample is read exactly once.
    _empty_tar(tmp_path / "none.tar")
    keys = [k for b in build_eval_stream([good, str(tmp_path / "none.tar")], batch_size=4, image_size=8,
                                         num_workers=0) for k in b["key"]]
    assert sorted(keys) == [f"s{i:05d}" for i in range(10)]
    stream = build_train_stream([str(tmp_path / "none.tar"), good],
                                TrainStreamOptions(batch_size=5, image_size=8, num_workers=0, shuffle_buffer=0), seed=0)
    labels = [x for b in take(stream, 4) for x in b["label"].tolist()]
    assert sorted(labels) == sorted(list(range(10)) * 2)
    # ... but not where _info.json promises samples, and a reader left with nothing stops with the shard named.
    info = json.loads((tmp_path / "_info.json").read_text())
    info["splits"]["train"]["filenames"] = ["none.tar"]
    (tmp_path / "_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"shard .*none\.tar holds 0 samples but _info.json says 10"):
        list(build_eval_stream(str(tmp_path), batch_size=4, image_size=8, num_workers=0))
    four = TrainStreamOptions(batch_size=4, image_size=8, num_workers=0, shuffle_buffer=1000)
    with pytest.raises(DataError, match=r"shard .*none\.tar holds 0 samples but _info.json says 10"):
        take(build_train_stream(str(tmp_path), four, seed=0), 1)
    with pytest.raises(DataError, match=r"the training shards .*none\.tar hold no sample to train on"):
        take(build_train_stream([str(tmp_path / "none.tar")], four, seed=0), 1)
    # A 0-byte file is no tar at all (an interrupted copy or download): an error naming it, in both streams.
    (tmp_path / "zero.tar").write_bytes(b"")
    urls = [good, str(tmp_path / "zero.tar")]
    with pytest.raises(DataError, match=r"shard .*zero\.tar is unreadable after 0 samples .*empty"):
        list(build_eval_stream(urls, batch_size=4, image_size=8, num_workers=0))
    with pytest.raises(DataError, match=r"shard .*zero\.tar is unreadable after 0 samples .*empty"):
        take(build_train_stream(urls, four, seed=0), 3)


@pytest.mark.timeout(60)
def test_a_url_that_does_not_exist_is_named_quickly(tmp_path: Path):
    write_shards(tmp_path, unique_samples(10), shard_size=10)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        urls = [f"{base}/train-000000.tar", f"{base}/no-such-shard.tar"]  # a 404 is no transient error: no retries
        start = time.monotonic()
        with pytest.raises(DataError, match=r"cannot open shard http://.*/no-such-shard\.tar: HTTP 404"):
            list(build_eval_stream(urls, batch_size=4, image_size=8, num_workers=0))
        with pytest.raises(DataError, match=r"shard http://.*/no-such-shard\.tar is unreadable after 0 samples "
                                            r"\(RemoteReadError: HTTP 404"):
            options = TrainStreamOptions(batch_size=4, image_size=8, num_workers=2, shuffle_buffer=0)
            take(build_train_stream(urls, options, seed=0), 10)
        assert time.monotonic() - start < 30
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------------- bad data: CLI
@pytest.mark.timeout(60)
def test_pretrain_with_a_missing_shard_names_it(pretrain_shards_32: Path, tmp_path: Path, ssl_vit):
    data = Path(shutil.copytree(pretrain_shards_32, tmp_path / "data"))
    (data / "train-000001.tar").unlink()
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), *smoke_overrides(data, tmp_path / "run"))
    assert rc == 2
    assert f"1 of 2 shards of {data / '_info.json'} do not exist: {data / 'train-000001.tar'}" in one_error_line(err)
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), f"data.train={data}/train-{{000000..000001}}.tar",
                  f"output_dir={tmp_path / 'run'}", "train.total_steps=2", "optim.warmup_steps=1")
    assert rc == 2 and f"do not exist: {data / 'train-000001.tar'}" in one_error_line(err)


@pytest.mark.timeout(60)
def test_pretrain_on_a_cut_shard_stops_with_one_line_naming_it(pretrain_shards_32: Path, tmp_path: Path, ssl_vit):
    data = Path(shutil.copytree(pretrain_shards_32, tmp_path / "data"))
    _cut(data / "train-000000.tar", at_member_boundary=False)
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE),
                  *smoke_overrides(data, tmp_path / "run", **{"train.total_steps": 4, "optim.warmup_steps": 1}))
    assert rc == 2
    assert f"shard {data / 'train-000000.tar'} is unreadable after" in one_error_line(err)
    assert not (tmp_path / "run" / "checkpoints" / "latest").exists()


@pytest.mark.timeout(60)
def test_eval_on_a_cut_shard_stops_with_one_line_naming_it(tmp_path: Path, ssl_vit):
    data = write_dataset(tmp_path / "data")
    _cut(data / "validation-000001.tar", at_member_boundary=False)
    rc, err = ssl_vit("eval", "knn", "--checkpoint", "random:vit_nano_patch4", "--train", str(data), "--test",
                  str(data), "--out", str(tmp_path / "out"), "--no-cache", *TINY_EVAL)
    assert rc == 2 and f"shard {data / 'validation-000001.tar'} is unreadable after" in one_error_line(err)


# ------------------------------------------------------------------------------ a corrupt shard on one rank
PRETRAIN_TEST = "test_a_corrupt_shard_on_one_of_two_ranks_stops_both_with_its_error"
EVAL_TEST = "test_a_corrupt_shard_on_one_of_two_ranks_stops_feature_extraction_on_both"


@pytest.fixture(scope="module", autouse=True)
def corrupt_shard_launches(request, pretrain_shards_32: Path, tmp_path_factory) -> Iterator[dict[str, tuple]]:
    """The 2-process launches of the two corrupt-shard tests below start with the module and run while its
    in-process tests do: each spends ~10 s importing and then up to 10 s idle (`--monitor_interval 10`, see
    below). Each test collects its own: {test name: (data, launch)}."""
    def launcher() -> list[str]:
        accelerate = Path(sys.executable).with_name("accelerate")
        return [str(accelerate), "launch", "--config_file", str(LAUNCH_CONFIG), "--main_process_port", str(free_port()),
                "--monitor_interval", "10", "-m", "ssl_vit"]

    launches = {}
    if selected(request, PRETRAIN_TEST):
        tmp = tmp_path_factory.mktemp("corrupt_pretrain")
        data = Path(shutil.copytree(pretrain_shards_32, tmp / "data"))
        _cut(data / "train-000001.tar", at_member_boundary=False)
        command = [*launcher(), "pretrain", "--config", str(SMOKE),
                   *smoke_overrides(data, tmp / "run", **{"data.batch_size": 8, "train.total_steps": 4,
                                                         "optim.warmup_steps": 1})]
        launches[PRETRAIN_TEST] = data, Background(command, tmp / "launch")
    if selected(request, EVAL_TEST):
        tmp = tmp_path_factory.mktemp("corrupt_eval")
        data = write_dataset(tmp / "data", train_per_class=8, test_per_class=4)
        _cut(data / "train-000001.tar", at_member_boundary=False)
        command = [*launcher(), "eval", "knn",
                   "--checkpoint", "random:vit_nano_patch4", "--train", str(data), "--test", str(data),
                   "--config", str(REPO / "recipes" / "eval" / "smoke.yaml"), "--out", str(tmp / "eval")]
        launches[EVAL_TEST] = data, Background(command, tmp / "launch")
    yield launches
    for _, launch in launches.values():
        launch.kill()


@pytest.mark.timeout(180)
def test_a_corrupt_shard_on_one_of_two_ranks_stops_both_with_its_error(corrupt_shard_launches):
    """Rank 1 alone reads the cut shard; rank 0 would wait for it in DDP's all-reduce (on CPU gloo then fails
    with "Connection closed by peer" once rank 1 has left; NCCL waits for its timeout). Both must stop with the
    same one-line error. `--monitor_interval 10` gives the second rank time to print it: the launcher kills the
    others as soon as one rank has exited with an error."""
    data, launch = corrupt_shard_launches[PRETRAIN_TEST]
    done = launch.finish(timeout=150)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    errors = _error_lines(done.stderr)
    assert len(errors) == 2 and errors[0] == errors[1], output[-3000:]  # the same line from each rank
    assert f"shard {data / 'train-000001.tar'} is unreadable after" in errors[0]
    assert "Connection closed by peer" not in output and "]: Traceback" not in output, output[-3000:]


@pytest.mark.timeout(180)
def test_a_corrupt_shard_on_one_of_two_ranks_stops_feature_extraction_on_both(corrupt_shard_launches):
    """`ssl-vit eval` under 2 processes: rank 1 alone reads the cut train shard (3 shards, 2 readers: rank 1
    gets shard 1). Rank 0 must not wait for ever in the feature gather; both stop with the same line."""
    data, launch = corrupt_shard_launches[EVAL_TEST]
    done = launch.finish(timeout=150)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    errors = _error_lines(done.stderr)
    assert len(errors) == 2 and errors[0] == errors[1], output[-3000:]
    assert f"shard {data / 'train-000001.tar'}" in errors[0] and "unreadable" in errors[0], errors[0]
    assert "]: Traceback" not in output, output[-3000:]


# ------------------------------------------------------------------------------------------ a full disk
@pytest.mark.timeout(30)
def test_a_really_full_disk_under_torch_save_keeps_latest_and_says_so(tmp_path: Path, monkeypatch):
    """torch.save's own writer hits ENOSPC (/dev/full); the user must read "No space left on device"."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()  # AdamW now has state to save
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    root = tmp_path / "checkpoints"
    save = functools.partial(ckpt.save_checkpoint, root, model=model, optimizer=optimizer, scheduler=scheduler,
                             meta={}, config_yaml="a: 1\n", rank=0, agreement=HostAgreement(), keep_last=3)
    save(1)
    real_write = ckpt._write
    full = lambda obj, path: real_write(obj, Path("/dev/full") if path.name == ckpt.STATE_FILE else path)  # noqa: E731
    monkeypatch.setattr(ckpt, "_write", full)
    with pytest.raises(CheckpointError) as info:
        save(2)
    message = str(info.value)
    assert f"could not write checkpoint {root / 'step_0000002'}" in message and "no space left on /dev while writing /dev/full" in message
    assert f"`latest` still names {root / 'step_0000001'}" in message
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000001"]  # nothing half-written left
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(root) == root / "step_0000001"
    restored = ckpt.load_checkpoint(root / "step_0000001", model=model, optimizer=optimizer, scheduler=scheduler, rank=0)
    assert restored.step == 1


# ----------------------------------------------------------------------- checkpoints of another model, with code
@pytest.fixture(scope="module")
def nano_run(tmp_path_factory, pretrain_shards_32: Path, pretrain) -> Path:
    """A 2-step vit_nano_patch4 run: checkpoints/step_0000002."""
    run = tmp_path_factory.mktemp("nano") / "run"
    assert pretrain(pretrain_shards_32, run, **{"train.total_steps": 2, "optim.warmup_steps": 1}) == 0
    return run


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("eval_data"), train_per_class=2, test_per_class=1)


@pytest.mark.timeout(60)
def test_resume_from_a_checkpoint_of_another_model_size(nano_run: Path, pretrain_shards_32: Path, tmp_path: Path, ssl_vit):
    checkpoint = nano_run / "checkpoints" / "step_0000002"
    rc, err = ssl_vit("pretrain", "--config", str(SMOKE), "model.name=vit_micro_patch4",
                  *smoke_overrides(pretrain_shards_32, tmp_path / "run"), "--resume", str(checkpoint))
    assert rc == 2
    line = one_error_line(err)
    assert f"model.name is 'vit_micro_patch4' but the checkpoint {checkpoint} was trained with 'vit_nano_patch4'" in line
    assert not (tmp_path / "run").exists()  # refused before any write: not even the output directory is left


@pytest.mark.timeout(60)
@pytest.mark.parametrize("form", ["run", "state_dict"])
def test_eval_with_a_model_that_does_not_fit_the_checkpoint(nano_run: Path, eval_data: Path, tmp_path: Path, ssl_vit,
                                                            form: str):
    checkpoint = nano_run
    if form == "state_dict":
        checkpoint = tmp_path / "nano.pth"
        torch.save(create_model("vit_nano_patch4").state_dict(), checkpoint)
    rc, err = ssl_vit("eval", "knn", "--checkpoint", str(checkpoint), "--model", "vit_micro_patch4", "--train",
                  str(eval_data), "--test", str(eval_data), "--out", str(tmp_path / "out"), "--no-cache", *TINY_EVAL)
    assert rc == 2
    line = one_error_line(err)
    assert str(checkpoint) in line and "has 2 blocks but the model has 4" in line
    assert "vit_nano_patch4" in line  # names the size that would fit


@pytest.fixture
def evil_run(nano_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the nano run whose state.pt carries code; returns (run dir, the marker the code would create)."""
    run = Path(shutil.copytree(nano_run, tmp_path / "evil_run"))
    marker = tmp_path / "pwned"
    state_file = run / "checkpoints" / "step_0000002" / "state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "extra": RunsCode(marker)}, state_file)
    return run, marker


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["pretrain --resume", "export", "eval --checkpoint", "eval bare file"])
def test_a_checkpoint_that_carries_code_is_refused(evil_run, pretrain_shards_32: Path, eval_data: Path, tmp_path: Path,
                                                   ssl_vit, command: str):
    run, marker = evil_run
    state_file = run / "checkpoints" / "step_0000002" / "state.pt"
    evaluate = ["knn", "--train", str(eval_data), "--test", str(eval_data), "--out", str(tmp_path / "e"),
                "--no-cache", *TINY_EVAL]
    argv = {
        "pretrain --resume": ["pretrain", "--config", str(SMOKE), *smoke_overrides(pretrain_shards_32, tmp_path / "new"),
                              "--resume", str(state_file.parent)],
        "export": ["export", str(run), str(tmp_path / "b.safetensors")],
        "eval --checkpoint": ["eval", *evaluate[:1], "--checkpoint", str(run), *evaluate[1:]],
        "eval bare file": ["eval", *evaluate[:1], "--checkpoint", str(state_file.with_name("weights.pth")),
                           "--model", "vit_nano_patch4", *evaluate[1:]],
    }[command]
    if command == "eval bare file":
        torch.save({"model": torch.load(state_file, weights_only=False)["model"], "x": RunsCode(marker)},
                   state_file.with_name("weights.pth"))
        marker.unlink()  # weights_only=False above ran the code: that is what loading must never do
    rc, err = ssl_vit(*argv)
    assert rc == 2
    line = one_error_line(err)
    # builtins.open pickles as io.open (`_io.open` from Python 3.12 on: the module it names moved)
    assert f"refusing to load: unpickling it would run code ({io.open.__module__}.open)" in line, line
    assert not marker.exists()


# ---------------------------------------------------------------------------------- names that are paths
def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.timeout(60)
def test_member_names_that_are_paths_are_never_extracted(tmp_path: Path, monkeypatch, capsys):
    """Decision: a tar member is (name, bytes) in memory; a sample's key is an opaque string, kept as the archive
    spells it (`../../evil`), never used as a file name. So nothing is written, by the streams or by verify."""
    shards = tmp_path / "a" / "b" / "shards"
    shards.mkdir(parents=True)
    jpeg = encode(noise_image(random.Random(3), (36, 36)))
    outside = tmp_path / "a" / "abs"  # an absolute member name, somewhere the test may look (we may run as root)
    _tar(shards / "train-000000.tar", {"../../evil.jpg": jpeg, "../../evil.cls": b"0",
                                       f"{outside}/x.jpg": jpeg, f"{outside}/x.cls": b"1"})
    (shards / "_info.json").write_text(json.dumps({"splits": {"train": {
        "name": "train", "num_samples": 2, "filenames": ["train-000000.tar"], "shard_lengths": [2]}}}))
    monkeypatch.chdir(shards)  # where a relative extraction would start
    before = files_under(tmp_path)
    keys = [k for b in build_eval_stream(str(shards), batch_size=4, image_size=8, num_workers=0) for k in b["key"]]
    assert keys == ["../../evil", f"{outside}/x"]
    batch = take(build_train_stream(str(shards), TrainStreamOptions(batch_size=2, image_size=8, num_workers=0,
                                                                    shuffle_buffer=0), seed=0), 1)[0]
    assert sorted(batch["label"].tolist()) == [0, 1] and int(batch["skipped"]) == 0
    assert shards_main(["verify", str(shards), "--no-progress"]) == 1  # not what `build` writes: reported ...
    assert capsys.readouterr().out.splitlines()[-1] == "verified split(s) train: 1 shards, 2 samples: 2 problems"
    assert files_under(tmp_path) == before and not outside.exists()  # ... and, like the streams, wrote nothing


# -------------------------------------------------------------------- _info.json may name only files beside it
@pytest.mark.timeout(60)
@pytest.mark.parametrize("filename", ["pipe:touch {marker}", "http://127.0.0.1:9/x.tar", "../outside.tar",
                                      "{outside}", "file://{outside}"])
def test_info_json_cannot_name_commands_urls_or_files_elsewhere(tmp_path: Path, capsys, filename: str):
    shards, marker = tmp_path / "shards", tmp_path / "pwned"
    write_shards(shards, unique_samples(4), shard_size=4)
    outside = tmp_path / "outside.tar"
    shutil.copy(shards / "train-000000.tar", outside)  # a readable shard: only the rule may refuse it
    name = filename.format(marker=marker, outside=outside)
    info = json.loads((shards / "_info.json").read_text())
    info["splits"]["train"]["filenames"] = [name]
    info["splits"]["train"].pop("sha256")
    info["splits"]["train"].pop("bytes")
    (shards / "_info.json").write_text(json.dumps(info))
    refused = rf"lists shard {name!r}, which is not a file name inside {shards}"
    with pytest.raises(DataError, match=refused.replace("?", r"\?").replace("+", r"\+")):
        resolve_spec(str(shards), "train")
    with pytest.raises(DataError, match="which is not a file name inside"):
        list(build_eval_stream(f"{shards}:train", batch_size=4, image_size=8, num_workers=0))
    assert shards_main(["verify", str(shards), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"_info.json splits.train: shard {name!r} is not a file name inside {shards}" in out, out
    assert "verified split(s) train: 0 shards" in out  # nothing was opened
    assert not marker.exists()
    # The user's own data spec may still name commands and URLs: that is their choice, made on the command line.
    assert resolve_spec(f"pipe:cat {outside}").urls == (f"pipe:cat {outside}",)
    assert isinstance(resolve_spec(ShardSet((str(outside),))), ShardSet)
