import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # generated datasets are cached per test session, never in the user's home
    monkeypatch.setenv("LOCALLEARN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def keep_gradients(monkeypatch):
    """For tests that compare a step's .grad with a reference: training frees every module's
    gradients right after its update (LocalModule.step); here they stay until the next zero_grad.
    What a step computes is the same either way (test_engine checks the freeing itself)."""
    from locallearn.network import LocalModule

    monkeypatch.setattr(LocalModule, "free_gradients", False)
