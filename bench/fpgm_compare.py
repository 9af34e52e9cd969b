"""Side-by-side FPGM scores: pyslim.ops.fpgm_scores vs torch.cdist(W, W).sum(1) for (64,576), (256,2304),
(512,4608), (2048,4608), at 1 and 2 threads, interleaved call by call, medians; with each side's worst relative
error against the float64 reference (torch.cdist's float32 matrix-product form is not accurate to 1e-6;
pyslim's kernel is). The same table as ``pyslim bench --suite fpgm`` / ``bench/compare.py --suite fpgm``.

Usage: python bench/fpgm_compare.py [--threads 1,2] [--repeats N] [--json PATH]
"""

import sys

from pyslim._bench import main

if __name__ == "__main__":
    sys.exit(main(["--suite", "fpgm", *sys.argv[1:]]))
