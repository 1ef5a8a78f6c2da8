"""Suite-wide settings: tiny models run fastest on one thread.

On a 2-core machine, PyTorch's default of one thread per core makes tiny
models up to 100x slower whenever anything else is running (oversubscription).
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
