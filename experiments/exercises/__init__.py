"""One file per experiment: its catalog entry (``ENTRY``) and its analysis side by side.

``experiments.catalog`` finds every module here that defines ``ENTRY``; adding an exercise is one new file (and its
test). Probes are shared and named from ``experiments.exercises.probes``.
"""
