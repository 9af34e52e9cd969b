import os

import pytest
import torch

import pyslim

USABLE_ISAS = pyslim.native_info()["usable_isas"]


@pytest.fixture(params=USABLE_ISAS)
def isa(request):
    """Runs a test once per CPU path this machine supports, forcing it, then restores the default."""
    before = pyslim.active_isa()
    pyslim.force_isa(request.param)
    yield request.param
    pyslim.force_isa(before)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    pyslim.set_num_threads(request.param)
    yield request.param
    pyslim.set_num_threads(None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(int(os.environ.get("PYSLIM_TEST_SEED", "0")))
