"""Distiller with a DDP-wrapped student: 2 gloo processes on CPU; both ranks end with identical student and
adapter parameters (adapters are synced by Distiller.all_reduce_adapter_grads)."""

import socket
import subprocess
import sys
import textwrap

import torch

WORKER = textwrap.dedent(
    """
    import sys

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn.functional as F
    from torch import nn

    from pyslim.dist import Distiller


    def net(width):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(width * 4, 10))


    def worker(rank, world, port, out_dir):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        torch.manual_seed(0)
        teacher, student = net(8), net(4)
        ddp = nn.parallel.DistributedDataParallel(student)
        d = Distiller(teacher, ddp, [("1", "1", "l2", 1.0), ("", "", "soft_label", 1.0)])
        assert len(d.adapters) == 1
        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        d.train()
        for _ in range(4):
            x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
            opt.zero_grad()
            out = d(x)
            (F.cross_entropy(out, y) + d.loss()).backward()
            d.all_reduce_adapter_grads()
            opt.step()
        torch.save({"student": student.state_dict(), "adapters": d.adapters.state_dict()}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()


    if __name__ == "__main__":
        port, out_dir = sys.argv[1:3]
        mp.spawn(worker, args=(2, int(port), out_dir), nprocs=2, join=True)
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_student_identical_across_ranks(tmp_path):
    script = tmp_path / "dist_worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp_path)], check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for part in ("student", "adapters"):
        for key in r0[part]:
            assert torch.equal(r0[part][key], r1[part][key]), (part, key)
