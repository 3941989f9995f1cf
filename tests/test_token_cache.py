"""The token cache (task.cache_tokens): a second build of the same loader reads the ids from disk without
calling the tokenizer and yields the same ids; a changed max length, data file, prompt budget or
tokenizer misses; a corrupt file is rebuilt; task.cache_tokens=false writes nothing."""

from __future__ import annotations

import logging
import shutil

import pytest
from omegaconf import OmegaConf

from peftlab.config import compose_config
from peftlab.models import build_model
from peftlab.registry import TASKS
from peftlab.tasks.data_root import data_root_candidates

DATA = next(p for p in data_root_candidates(None) if (p / "glue" / "MRPC").is_dir())


def mrpc(folder, data_root=DATA, **options):
    cfg = {"name": "mrpc", "max_train_samples": 40, "token_cache_dir": str(folder), **options}
    return TASKS.get("mrpc")(OmegaConf.create(cfg), str(data_root))


@pytest.fixture(scope="module")
def tokenizer():
    return build_model(compose_config(["model=tiny_bert"]).model, num_labels=2)[1]


def ids(loader) -> list:
    return [loader.dataset[i] for i in range(len(loader.dataset))]


def poisoned(tokenizer, monkeypatch):
    """The tokenizer, made to fail when called: a build that reads the cache never calls it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was called although the cache holds these ids")

    monkeypatch.setattr(type(tokenizer), "__call__", refuse)


def test_second_build_reads_the_cache_and_gives_the_same_ids(tmp_path, tokenizer, monkeypatch):
    task = mrpc(tmp_path)
    examples = task.load_split("train")
    uncached = ids(mrpc(tmp_path, cache_tokens=False).build_loader(examples, tokenizer, 8, 64))
    assert not list(tmp_path.iterdir())  # cache_tokens=false writes nothing
    first = ids(task.build_loader(examples, tokenizer, 8, 64))
    assert len(list(tmp_path.glob("*.npz"))) == 1 and not list(tmp_path.glob("*.tmp"))
    with monkeypatch.context() as patch:
        poisoned(tokenizer, patch)
        second = ids(mrpc(tmp_path).build_loader(examples, tokenizer, 8, 64))
    assert first == uncached and second == uncached


def test_changed_max_length_data_file_sample_count_or_tokenizer_misses(tmp_path, tokenizer):
    examples = mrpc(tmp_path).load_split("train")
    mrpc(tmp_path).build_loader(examples, tokenizer, 8, 64)
    mrpc(tmp_path).build_loader(examples, tokenizer, 8, 32)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # another max length: another entry
    root = tmp_path / "data"
    shutil.copytree(DATA / "glue" / "MRPC", root / "glue" / "MRPC")
    train = root / "glue" / "MRPC" / "train.tsv"
    lines = train.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    first = lines[1].split("\t")
    lines[1] = "\t".join([*first[:3], "A sentence that was edited.", first[4]])
    train.write_text("".join(lines), encoding="utf-8")
    edited = mrpc(tmp_path, data_root=root).load_split("train")
    mrpc(tmp_path, data_root=root).build_loader(edited, tokenizer, 8, 64)
    assert len(list(tmp_path.glob("*.npz"))) == 3  # an edited data file misses
    fewer = mrpc(tmp_path, max_train_samples=20).load_split("train")
    loader = mrpc(tmp_path).build_loader(fewer, tokenizer, 8, 64)
    assert len(list(tmp_path.glob("*.npz"))) == 4 and len(loader.dataset) == 20
    tokenizer.truncation_side = "left"  # another tokenizer setting that changes the ids
    try:
        mrpc(tmp_path).build_loader(examples, tokenizer, 8, 64)
    finally:
        tokenizer.truncation_side = "right"
    assert len(list(tmp_path.glob("*.npz"))) == 5


def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rebuilt(tmp_path, tokenizer, caplog):
    examples = mrpc(tmp_path).load_split("train")
    good = ids(mrpc(tmp_path).build_loader(examples, tokenizer, 8, 64))
    (entry,) = tmp_path.glob("*.npz")
    for damage in (b"not a zip file", entry.read_bytes()[:200]):
        entry.write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger="peftlab.tasks.token_cache"):
            again = ids(mrpc(tmp_path).build_loader(examples, tokenizer, 8, 64))
        assert again == good
        assert "unreadable" in caplog.text
        caplog.clear()
    assert ids(mrpc(tmp_path).build_loader(examples, tokenizer, 8, 64)) == good  # rewritten: reads


def test_generation_tasks_cache_and_miss_on_their_token_budgets(tmp_path, monkeypatch):
    cfg = compose_config(["task=gsm8k", "model=tiny_llama", "task.max_train_samples=12"])
    model, tokenizer = build_model(cfg.model, 0, "lm")

    def gsm8k(**options):
        task = TASKS.get("gsm8k")(
            OmegaConf.merge(cfg.task, {"token_cache_dir": str(tmp_path), **options}), None
        )
        task.use_model(model)
        return task

    examples = gsm8k().load_split("train")
    uncached = ids(gsm8k(cache_tokens=False).build_loader(examples, tokenizer, 4, 0, None))
    first = ids(gsm8k().build_loader(examples, tokenizer, 4, 0, None))
    with monkeypatch.context() as patch:
        poisoned(tokenizer, patch)
        second = ids(gsm8k().build_loader(examples, tokenizer, 4, 0, None))
    assert first == uncached and second == uncached
    gsm8k(max_target_tokens=16).build_loader(examples, tokenizer, 4, 0, None)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_default_folder_is_the_users_cache_not_the_repository(monkeypatch, tmp_path):
    from peftlab.tasks.token_cache import cache_folder

    monkeypatch.delenv("PEFTLAB_TOKEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_folder(None) == tmp_path / "peftlab" / "tokens"
    monkeypatch.setenv("PEFTLAB_TOKEN_CACHE", str(tmp_path / "mine"))
    assert cache_folder(None) == tmp_path / "mine"
    assert cache_folder(str(tmp_path / "set")) == tmp_path / "set"
