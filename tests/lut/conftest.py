"""Fixtures for NN-LUT tests: tables fitted once per session with few Adam steps (fast)."""

import pytest

from compactlm.lut.fit import fit_lut
from compactlm.lut.functions import TARGETS


@pytest.fixture(scope="session")
def tables16():
    """16-entry NN-LUT tables for every target (initialisation + 50 Adam steps)."""
    return {f: fit_lut(f, 16, steps=50) for f in TARGETS}
