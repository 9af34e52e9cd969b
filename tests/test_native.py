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
    import platform

    arch_missing = "avx2" if platform.machine().lower() in ("aarch64", "arm64") else "neon"
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


_THREAD_COUNT_SCRIPT = """
import os, torch, pyslim
torch.set_num_threads(2)
x = torch.randn(1 << 20)
(x * 2).sum()  # a torch parallel region: torch's OpenMP team exists from here on
before = len(os.listdir("/proc/self/task"))
y = pyslim.ops.fake_quant_abs_max(x)  # large enough for several tasks on 2 threads
print(pyslim.native_info()["parallel_backend"], before, len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif("parallel backend: OpenMP" not in torch.__config__.parallel_info(),
                    reason="torch's parallel backend is not OpenMP")
def test_kernels_run_on_torchs_openmp_threads_by_default():
    r = _run(_THREAD_COUNT_SCRIPT)
    assert r.returncode == 0, r.stderr
    backend, before, after = r.stdout.split()
    assert backend == "openmp"
    assert int(after) == int(before), "pyslim started threads of its own beside torch's OpenMP team"
    r = _run(_THREAD_COUNT_SCRIPT, PYSLIM_PARALLEL_BACKEND="own")
    assert r.returncode == 0, r.stderr
    backend, before, after = r.stdout.split()
    assert backend == "own" and int(after) == int(before) + 1  # the own pool's one helper


def test_parallel_backends_give_identical_results():
    before_threads = torch.get_num_threads()
    torch.manual_seed(0)
    x = torch.randn(64, 256, 33)
    w = torch.nn.Linear(512, 300).eval()
    a = torch.randn(200, 512)
    from pyslim.quant import nn as qnn

    q = qnn.Int8Linear.from_float(w)
    results = {}
    try:
        torch.set_num_threads(2)
        for backend in ("own", "auto"):
            used = pyslim.set_parallel_backend(backend)
            results[used] = (pyslim.ops.fake_quant_channel_wise_abs_max(x, axis=1), q(a))
    finally:
        pyslim.set_parallel_backend()
        torch.set_num_threads(before_threads)
    outs = list(results.values())
    for got in outs[1:]:
        assert torch.equal(got[0], outs[0][0]) and torch.equal(got[1], outs[0][1])


_FORK_SCRIPT = """
import os, sys, torch, pyslim
torch.set_num_threads(2)
x = torch.randn(1 << 20)
pyslim.ops.fake_quant_abs_max(x)  # the own pool's helper thread exists from here on
pid = os.fork()
if pid == 0:
    ok = all(torch.equal(pyslim.ops.fake_quant_abs_max(x), pyslim.ops.fake_quant_abs_max(x)) for _ in range(20))
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_own_pool_works_in_a_forked_child():
    # The child has none of the parent's helper threads: the pool must start over there, not wait forever.
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, cwd="/", timeout=120,
                       env=dict(os.environ, PYSLIM_PARALLEL_BACKEND="own"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


def test_parallel_backend_errors():
    with pytest.raises(ValueError, match="name must be 'auto', 'openmp' or 'own'"):
        pyslim.set_parallel_backend("tbb")
    r = _run("import pyslim", PYSLIM_PARALLEL_BACKEND="tbb")
    assert r.returncode != 0 and "PYSLIM_PARALLEL_BACKEND=tbb" in r.stderr


def test_cli_info_runs():
    r = subprocess.run([sys.executable, "-m", "pyslim.cli", "info", "--json"], capture_output=True, text=True,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    assert '"active_isa"' in r.stdout
