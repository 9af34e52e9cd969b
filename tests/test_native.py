"""The native core: build info, ISA forcing (API and PYSLIM_ISA), threads."""

import os
import subprocess
import sys

import pytest
import torch

import pyslim


def test_native_info_is_consistent():
    info = pyslim.native_info()
    assert info["version"] == pyslim.__version__
    for key in ("built_isas", "detected_isas", "usable_isas"):
        assert "reference" in info[key]
    assert set(info["usable_isas"]) == set(info["built_isas"]) & set(info["detected_isas"])
    assert info["active_isa"] in info["usable_isas"]
    assert isinstance(info["cuda_built"], bool) and isinstance(info["cuda_available"], bool)
    assert info["cuda_available"] == (info["cuda_device_count"] > 0)
    if not info["cuda_built"]:
        assert not info["cuda_available"]


def test_force_isa_refuses_unknown_and_unsupported():
    with pytest.raises(ValueError, match="unknown ISA path 'sse9'"):
        pyslim.force_isa("sse9")
    info = pyslim.native_info()
    missing = [isa for isa in ("avx2", "avx512", "avx512vnni", "neon", "neondot") if isa not in info["usable_isas"]]
    for isa in missing:
        with pytest.raises(ValueError, match=f"ISA path '{isa}' is not"):
            pyslim.force_isa(isa)
    assert pyslim.active_isa() == info["active_isa"]


def _run(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd="/")


def test_pyslim_isa_environment_variable_forces_a_path():
    for isa in pyslim.native_info()["usable_isas"]:
        r = _run("import pyslim; print(pyslim.active_isa())", PYSLIM_ISA=isa)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == isa


def test_pyslim_isa_environment_variable_rejects_a_missing_path():
    arch_missing = "neon" if "avx2" in pyslim.native_info()["detected_isas"] or True else "avx2"
    r = _run("import pyslim", PYSLIM_ISA=arch_missing)
    assert r.returncode != 0
    assert f"PYSLIM_ISA={arch_missing}" in r.stderr and "not" in r.stderr


def test_threads_follow_torch_unless_set():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert pyslim.get_num_threads() == 1
        pyslim.set_num_threads(2)
        assert pyslim.get_num_threads() == 2
        pyslim.set_num_threads(None)
        assert pyslim.get_num_threads() == 1
        with pytest.raises(ValueError, match="n must be a positive int"):
            pyslim.set_num_threads(0)
    finally:
        torch.set_num_threads(before)
        pyslim.set_num_threads(None)


def test_cli_info_runs():
    r = subprocess.run([sys.executable, "-m", "pyslim.cli", "info", "--json"], capture_output=True, text=True,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    assert '"active_isa"' in r.stdout
