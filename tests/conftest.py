import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the test helpers' modules, named in the configs of runs the tests resume (see ldm/config_trust.py)
os.environ.setdefault("LDM_ALLOW_TARGETS",
                      "cli_fixtures,test_e2e_resume,test_callbacks,test_checkpoint_io,test_ddp_stages")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test tensors: one intra-op thread avoids oversubscription on small CI machines
# (with 2 threads per process several tests ran 10-100x slower on a loaded 2-core box).
torch.set_num_threads(int(os.environ.get("LDM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


#: per-test limit for unit tests (not marked ``slow``); slow tests keep ``timeout`` of pyproject.toml
UNIT_TIMEOUT_S = 300


def pytest_collection_modifyitems(config, items):
    """A hung unit test fails after UNIT_TIMEOUT_S instead of the end-to-end runs' limit (unless
    ``--timeout`` is given on the command line, which then applies to every test)."""
    if not config.pluginmanager.hasplugin("timeout") or config.getoption("timeout", None) is not None:
        return
    for item in items:
        if item.get_closest_marker("slow") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))
