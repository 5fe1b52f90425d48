#!/usr/bin/env python3
"""dropbench: D2L's dropout MLP on Fashion-MNIST, trained by several frameworks side by side.

    python harness.py --backend jax            # the D2L run on one backend
    python harness.py --backend all            # every installed backend, side by side
    python harness.py --list                   # backends, their versions, and the experiments
    python harness.py bench --backend all --mode all   # timings side by side against the machine's floor
"""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
