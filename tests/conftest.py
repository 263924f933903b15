"""Shared fixtures: tiny random models per architecture, a private cache, deterministic torch."""


import pytest
import torch

from compactlm.models.tiny import DECODER_TYPES, ENCODER_TYPES, TINY_TYPES, tiny_model

torch.set_num_threads(1)  # two threads spin-wait on a loaded 2-core host (12 s -> 150 s seen)


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
