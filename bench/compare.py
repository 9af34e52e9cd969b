#!/usr/bin/env python3
"""Side-by-side benchmark: pyslim vs torch's own fake-quant ops, a pure-PyTorch PACT and a same-run copy.

Same as ``pyslim bench``; see ``python bench/compare.py --help``.
"""

import sys

from pyslim._bench import main

if __name__ == "__main__":
    sys.exit(main())
