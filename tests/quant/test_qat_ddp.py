"""QAT under DistributedDataParallel: 2 CPU processes (gloo), real MNIST shards. The moving-average scale
buffers are averaged across ranks by the quantizers themselves (DDP runs with broadcast_buffers=False, so
nothing else syncs them): they must be identical on both ranks, equal to the EMA of the ranks' mean
batch abs-max, and the whole run must be deterministic."""

import socket
import subprocess
import sys
import textwrap

import pytest
import torch

STEPS = 4
BATCH = 32

WORKER = textwrap.dedent(
    """
    import sys

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch import nn

    from pyslim.quant.qat import QAT


    def build():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


    def train_once(rank, data, steps, batch):
        model = QAT().quantize(build())
        ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        x, y = data["x"][rank], data["y"][rank]
        ddp.train()
        for step in range(steps):
            xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(xb), yb).backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


    def worker(rank, world, port, data_path, out_dir, steps, batch):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        data = torch.load(data_path)
        first = train_once(rank, data, steps, batch)
        second = train_once(rank, data, steps, batch)
        torch.save({"first": first, "second": second}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()


    if __name__ == "__main__":
        port, data_path, out_dir, steps, batch = sys.argv[1:6]
        mp.spawn(worker, args=(2, int(port), data_path, out_dir, int(steps), int(batch)), nprocs=2, join=True)
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_moving_average_scales_synced_and_deterministic(tmp_path, mnist):
    x_train, y_train, _, _ = mnist
    n = STEPS * BATCH
    # Two shards; rank 1's images are dimmed so the ranks' batch abs-max differ (1.0 vs 0.5).
    xs = torch.stack([x_train[:n].clone(), x_train[n:2 * n].clone() * 0.5])
    ys = torch.stack([y_train[:n].clone(), y_train[n:2 * n].clone()])
    data_path = tmp_path / "data.pt"
    torch.save({"x": xs, "y": ys}, data_path)
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, str(script), str(_free_port()), str(data_path), str(tmp_path), str(STEPS),
                           str(BATCH)], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    state0 = ranks[0]["first"]
    scale_keys = [k for k in state0 if k.endswith("activation_quanter.scale")]
    assert len(scale_keys) == 3
    for key in state0:
        # parameters identical across ranks (DDP), quantizer buffers too (their own sync); BN statistics are
        # per rank (broadcast_buffers=False)
        if ".running_" not in key:
            assert torch.equal(state0[key], ranks[1]["first"][key]), key
        # deterministic: a second identical run gives bit-identical results
        assert torch.equal(state0[key], ranks[0]["second"][key]), key
        assert torch.equal(ranks[1]["first"][key], ranks[1]["second"][key]), key
    # the first layer sees the raw images: its scale is the EMA of the ranks' mean batch abs-max
    state, accum = 1.0, 1.0
    for step in range(STEPS):
        batch_max = [float(xs[r, step * BATCH:(step + 1) * BATCH].abs().max()) for r in range(2)]
        state, accum = 0.9 * state + 1, 0.9 * accum + sum(batch_max) / 2
    assert float(state0["0.activation_quanter.state"]) == pytest.approx(state, rel=1e-6)
    assert float(state0["0.activation_quanter.scale"]) == pytest.approx(accum / state, rel=1e-6)
    # BatchNorm running stats are not synced (broadcast_buffers=False) and do differ: the sync above is real
    assert not torch.equal(state0["1.running_mean"], ranks[1]["first"]["1.running_mean"])
