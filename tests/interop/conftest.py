"""Fixtures of the cross-framework tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """torch's OpenMP workers spin when the cores are shared (with XLA, or a neighbour's job):
    one thread runs these small batches ~10x faster than two."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
