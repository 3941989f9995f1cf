"""A run deletes only what peftlab runs recorded as their own (the folder's manifest), never the user's or
another tool's files, and a finished run whose results.json cannot be read is refused, never cleared."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import tiny_config

from peftlab.errors import ConfigError
from peftlab.run.experiment import run_experiment
from peftlab.run.finished import completed_config
from peftlab.run.folder import RunDir
from peftlab.run.manifest import MANIFEST

SHORT = ["schedule.max_steps=2", "measure.flops=false", "curves=false"]


def foreign_files(folder, names):
    """Files another tool (or the user) left in ``folder``: name -> content."""
    files = {name: f"{name} of another tool\n" for name in names}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def assert_kept(folder, files):
    assert {name: (folder / name).read_text() for name in files} == files


def manifest(folder):
    return set(json.loads((folder / MANIFEST).read_text())["entries"])


def test_overwrite_into_a_folder_of_foreign_files_leaves_them(tmp_path):
    files = foreign_files(tmp_path, ["notes.txt", "wandb/run-1/log.txt", "export/model.bin", "data.csv"])
    run_experiment(tiny_config(tmp_path, *SHORT, "overwrite=true"))
    assert_kept(tmp_path, files)
    assert {"config.yaml", "results.json", "metrics.jsonl", "adapter.safetensors"} <= manifest(tmp_path)
    assert not {"notes.txt", "wandb", "export", "data.csv"} & manifest(tmp_path)
    run_experiment(tiny_config(tmp_path, *SHORT, "overwrite=true", "seed=3"))  # clears the first run only
    assert_kept(tmp_path, files)
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 3


@pytest.mark.parametrize("overwrite", ["overwrite=false", "overwrite=true"])
def test_names_a_run_would_write_over_are_refused_and_kept(tmp_path, overwrite):
    names = ["notes.txt", "checkpoints/model.bin", "wandb/x", ".hydra/config.yaml", "config.yaml"]
    files = foreign_files(tmp_path, [*names, "eval_results.json"])
    message = (
        rf"output dir {tmp_path} holds \.hydra, checkpoints, config\.yaml, eval_results\.json, which no "
        r"peftlab run recorded \(\.peftlab-manifest\.json\) and a run would write over"
    )
    with pytest.raises(ConfigError, match=message):
        run_experiment(tiny_config(tmp_path, *SHORT, overwrite))
    assert_kept(tmp_path, files)
    assert not (tmp_path / MANIFEST).exists()


def test_a_foreign_log_is_not_truncated(tmp_path):
    files = foreign_files(tmp_path, ["wandb/run-1/log.txt", "peftlab.log"])
    handler = logging.FileHandler(tmp_path / "peftlab.log")  # as Hydra's job logging opens it
    logging.getLogger().addHandler(handler)
    try:
        run_experiment(tiny_config(tmp_path, *SHORT))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert (tmp_path / "peftlab.log").read_text().startswith(files["peftlab.log"])
    assert_kept(tmp_path, {"wandb/run-1/log.txt": files["wandb/run-1/log.txt"]})


def test_a_folder_of_an_earlier_peftlab_without_a_manifest_is_cleared_by_name(tmp_path):
    run_experiment(tiny_config(tmp_path, *SHORT, "checkpoint.every_steps=1"))
    (tmp_path / MANIFEST).unlink()  # as a run before the manifest left it
    files = foreign_files(tmp_path, ["notes.txt"])
    run_experiment(tiny_config(tmp_path, *SHORT, "overwrite=true", "seed=5"))
    assert_kept(tmp_path, files)
    assert json.loads((tmp_path / "results.json").read_text())["seed"] == 5
    assert not (tmp_path / "checkpoints").exists()  # the earlier run's, deleted by name
    assert "notes.txt" not in manifest(tmp_path)


def test_a_manifest_pointing_outside_the_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    outside = foreign_files(tmp_path, ["precious.txt"])
    run.mkdir()
    (run / MANIFEST).write_text(json.dumps({"peftlab_manifest": 1, "entries": ["../precious.txt"]}))
    with pytest.raises(ConfigError, match=r"is not a peftlab manifest \(its entries must be plain names\)"):
        run_experiment(tiny_config(run, *SHORT, "overwrite=true"))
    assert_kept(tmp_path, outside)


def test_an_unreadable_results_json_is_refused_not_cleared(tmp_path):
    run_experiment(tiny_config(tmp_path, *SHORT))
    (tmp_path / "results.json").write_text('{"status": "compl')  # cut short, or damaged
    adapter = (tmp_path / "adapter.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"results\.json cannot be read \(.*\); it may hold a finished run"):
        run_experiment(tiny_config(tmp_path, *SHORT))
    assert (tmp_path / "adapter.safetensors").read_bytes() == adapter
    with pytest.raises(ConfigError, match=r"results\.json cannot be read .*whether that run completed"):
        completed_config(tmp_path, "load_from")
    with pytest.raises(ConfigError, match=r"resume: .*results\.json cannot be read"):
        RunDir(tmp_path).reopen()


def test_a_run_dir_under_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=rf"output dir {tmp_path}/file/run cannot be created or written"):
        run_experiment(tiny_config(tmp_path / "file" / "run", *SHORT))


def test_a_run_dir_without_permission_is_one_line_naming_it(tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run"))

    monkeypatch.setattr("peftlab.run.lock.os.open", refused)  # root ignores chmod: simulate the refusal
    with pytest.raises(ConfigError, match=r"cannot be created or written \(Permission denied: "):
        run_experiment(tiny_config(tmp_path / "run", *SHORT))
