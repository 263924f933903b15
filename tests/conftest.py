"""Shared fixtures: tiny random models per architecture, a private cache, deterministic torch.

The whole session runs on a fresh temporary ``$COMPACTLM_CACHE`` (removed at the end), never the
user's ``~/.cache/compactlm``: fast tests need neither network nor a warm cache. Slow tests that
fetch real models and data sets download them into it again each session unless
``COMPACTLM_TEST_CACHE`` names a cache folder to reuse (e.g. ``COMPACTLM_TEST_CACHE=~/.cache/compactlm
make test-slow``).
"""

import os
import shutil
import tempfile

import pytest
import torch

from compactlm.models.tiny import DECODER_TYPES, ENCODER_TYPES, TINY_TYPES, tiny_model

torch.set_num_threads(1)  # two threads spin-wait on a loaded 2-core host (12 s -> 150 s seen)


_SESSION_CACHE: dict[str, str | None] = {}


def pytest_configure(config):
    reuse = os.environ.get("COMPACTLM_TEST_CACHE")
    _SESSION_CACHE["previous"] = os.environ.get("COMPACTLM_CACHE")
    _SESSION_CACHE["temporary"] = None if reuse else tempfile.mkdtemp(prefix="compactlm-test-cache-")
    os.environ["COMPACTLM_CACHE"] = os.path.expanduser(reuse) if reuse else _SESSION_CACHE["temporary"]


def pytest_unconfigure(config):
    if _SESSION_CACHE.get("temporary"):
        shutil.rmtree(_SESSION_CACHE["temporary"], ignore_errors=True)
    if _SESSION_CACHE.get("previous") is None:
        os.environ.pop("COMPACTLM_CACHE", None)
    else:
        os.environ["COMPACTLM_CACHE"] = _SESSION_CACHE["previous"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private, empty $COMPACTLM_CACHE (for tests of fetching and caching)."""
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(params=TINY_TYPES)
def any_tiny(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(params=DECODER_TYPES)
def decoder_tiny(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(params=ENCODER_TYPES)
def encoder_tiny(request):
    return request.param, tiny_model(request.param)


@pytest.fixture
def token_batch():
    """(4, 32) random token ids inside the tiny vocabulary (ids 0-1 kept for special tokens)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(2, 128, (4, 32), generator=g)


@pytest.fixture
def run_cli(capsys):
    """Run ``compactlm`` with ``argv``; returns ``(exit code, stdout, stderr)``."""
    from compactlm.cli import main

    def run(argv):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse / parser.exit
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def local_sarcasm(monkeypatch):
    """120 synthetic headlines in place of the sarcasm rows (which come from a PyPI wheel), with
    splits of 40 / 20 / 60, so encoder tests and the CLI run without network or cache."""
    from compactlm.data import classification

    rows = [classification.Example(text=f"headline number {i} about {'cats' if i % 3 else 'dogs'}", label=i % 2)
            for i in range(120)]
    monkeypatch.setitem(classification._READERS, "sarcasm", lambda: rows)
    task = classification.TASKS["sarcasm"]
    monkeypatch.setitem(classification.TASKS, "sarcasm", classification.ClassificationTask(
        task.name, task.labels, task.description, 40, 20, task.max_length))
    classification._splits.cache_clear()
    yield
    classification._splits.cache_clear()
