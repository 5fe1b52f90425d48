#!/usr/bin/env python3
"""dropbench: D2L's dropout MLP on Fashion-MNIST, trained by several frameworks side by side.

    python harness.py --backend jax            # the D2L run on one backend
    python harness.py --backend all            # every installed backend, side by side
    python harness.py --list                   # backends, their versions, and the experiments
    python harness.py bench                    # timings of every backend x mode x tier against the machine's floor
    python harness.py parity                   # every backend against the float64 NumPy oracle
    python harness.py compare RUN_A RUN_B      # two run folders: accuracy and time, beyond the noise
    python harness.py --version                # the package's version (experiments/version.py)

Each command's --help lists its flags with their defaults and ends with examples.
"""
import sys

from experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
