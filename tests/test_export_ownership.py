"""`ssl-vit export` replaces only a previous export's files: a destination holding files is refused (naming
them) unless --overwrite, which replaces what an export wrote and recorded — never a user's README, a card edited
since, or a notes file beside it (kept, named) — and a folder with files that are not the export's is not pushed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from trainer_fixtures import tree_digest

from ssl_vit.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, pretrain_shards_32: Path, pretrain) -> Path:
    run = tmp_path_factory.mktemp("export_owned") / "run"
    assert pretrain(pretrain_shards_32, run, **{"train.total_steps": 2, "optim.warmup_steps": 1,
                                                  "train.checkpoint_every": 2}) == 0
    return run


def export(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["export", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error(rc: int, err: str) -> str:
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_folder_holding_a_users_readme_is_refused_and_overwrite_keeps_it(run_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("# My notes on this model\n")
    before = tree_digest(out)
    line = one_error(*export(capsys, run_dir, out, "--format", "hf")[::2])
    assert f"{out} already holds README.md; pass --overwrite" in line
    line = one_error(*export(capsys, run_dir, out, "--format", "hf", "--overwrite")[::2])
    assert "--overwrite: README.md in" in line and "is not a previous export's (README.md: no ssl_vit export beside it)" in line
    assert tree_digest(out) == before


def test_overwrite_replaces_a_previous_exports_files_and_keeps_the_rest(run_dir, tmp_path, capsys):
    out = tmp_path / "folder"
    assert export(capsys, run_dir, out, "--format", "hf")[0] == 0
    recorded = json.loads((out / "config.json").read_text())["ssl_vit"]["files"]
    assert sorted(recorded) == ["README.md", "model.safetensors", "preprocessor_config.json"]
    (out / "notes.txt").write_text("mine\n")
    line = one_error(*export(capsys, run_dir, out, "--format", "timm")[::2])
    assert f"{out} already holds README.md, config.json, model.safetensors, notes.txt, preprocessor_config.json" in line

    rc, printed, err = export(capsys, run_dir, out, "--format", "timm", "--overwrite")
    assert rc == 0, err
    assert "deleting preprocessor_config.json" in printed  # the hf export's, which a timm folder does not have
    assert "kept: 1 file that is not a previous export's: notes.txt" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert "architecture" in json.loads((out / "config.json").read_text())  # timm's now
    assert (out / "notes.txt").read_text() == "mine\n"

    with open(out / "README.md", "a") as f:
        f.write("\nMy own remarks.\n")  # the card is partly the user's now
    before = tree_digest(out)
    line = one_error(*export(capsys, run_dir, out, "--format", "timm", "--overwrite")[::2])
    assert "README.md: changed since the export wrote it" in line and "move it away" in line
    assert tree_digest(out) == before


def test_an_export_of_an_earlier_version_is_recognised_by_its_content(run_dir, tmp_path, capsys):
    """No `files` record (exports before manifests): the card by its front matter, the rest by their markers."""
    out = tmp_path / "old"
    assert export(capsys, run_dir, out, "--format", "hf")[0] == 0
    config = json.loads((out / "config.json").read_text())
    del config["ssl_vit"]["files"]
    (out / "config.json").write_text(json.dumps(config))
    rc, printed, err = export(capsys, run_dir, out, "--format", "hf", "--overwrite")
    assert rc == 0, err
    assert "kept" not in printed and "files" in json.loads((out / "config.json").read_text())["ssl_vit"]


def test_the_card_beside_a_single_file_export_is_the_users_unless_an_export_wrote_it(run_dir, tmp_path, capsys):
    out = tmp_path / "vit.safetensors"
    (tmp_path / "vit.md").write_text("my write-up of vit\n")
    before = tree_digest(tmp_path)
    assert "already holds vit.md" in one_error(*export(capsys, run_dir, out)[::2])
    line = one_error(*export(capsys, run_dir, out, "--overwrite")[::2])
    assert "vit.md: no ssl_vit export beside it" in line
    assert tree_digest(tmp_path) == before

    (tmp_path / "vit.md").unlink()
    assert export(capsys, run_dir, out)[0] == 0
    assert json.loads(out.with_suffix(".json").read_text())["files"]["vit.md"]["size"] > 0
    (tmp_path / "vit.safetensors.notes").write_text("beside, not part of the export\n")
    rc, printed, err = export(capsys, run_dir, out, "--overwrite")
    assert rc == 0 and "--overwrite: replacing vit.json, vit.md, vit.safetensors" in printed, err
    assert (tmp_path / "vit.safetensors.notes").is_file()


def test_a_folder_with_files_that_are_not_the_exports_is_not_pushed(run_dir, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kw: calls.append(kw))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
    out = tmp_path / "timm"
    assert export(capsys, run_dir, out, "--format", "timm")[0] == 0
    (out / "private-notes.txt").write_text("not for the Hub\n")
    line = one_error(*export(capsys, run_dir, out, "--format", "timm", "--overwrite", "--push-to-hub", "me/x")[::2])
    assert "--push-to-hub would upload" in line and "private-notes.txt" in line
    assert calls == []
