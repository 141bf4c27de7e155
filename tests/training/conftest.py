"""Fixtures shared by the training tests: a tiny synthetic store and one trained model (CPU, 1 thread)."""

from __future__ import annotations

import pytest
import torch

from pipeline.prepare.patches import write_patch_index
from tests.store_factory import make_store

SHAPE = (40, 56, 48)
PATCH = (32, 32, 32)
THREADS = 1  # on a shared 2-core CPU one busy neighbour makes 2 torch threads ~7x slower; 1 is ~1.2x slower at worst


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """3 labelled cases, 1 unlabelled, 1 lacking T2; a patch index stored for the first case only."""
    root = tmp_path_factory.mktemp("train") / "store"
    labelled = make_store(root, n_cases=3, shape_zyx=SHAPE, seed=0)
    unlabelled = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=1, with_label=False, start=10)
    two_channel = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=2, channels=("FLAIR", "T1"), start=20)
    write_patch_index(root, labelled[0], PATCH, seed=0)
    return {"root": root, "labelled": labelled, "unlabelled": unlabelled[0], "two_channel": two_channel[0]}


@pytest.fixture(scope="session")
def trained(store):
    """40 iterations with today's keyword style (overrides, old names lr/num_threads), saved in the store."""
    from training.loop import train

    events = []
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        result = train(
            store["root"],
            case_ids=store["labelled"][:2] + [store["unlabelled"], store["two_channel"]],
            val_case_ids=store["labelled"][2:],
            patch_zyx=PATCH,
            batch_size=2,
            iterations=40,
            lr=2e-3,
            seed=0,
            progress=events.append,
            log_every=10,
            pipeline_config_hash="abc123",
            num_threads=THREADS,
        )
    finally:
        torch.set_num_threads(previous)
    return result, events
