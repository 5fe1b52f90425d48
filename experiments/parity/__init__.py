"""The parity ladder: every backend against the NumPy float64 oracle, as functions that return what they measured.

- ``checks``: one measured comparison (``Check``) and the ladder's tolerance, ``RTOL``;
- ``factory``: builds backends in this process or in their own venv's worker (``BackendFactory``), and the oracle;
- ``rungs``, ``noise_rungs``: the rungs, each ``(case, make, fashion) -> list[Check]``;
- ``ladder``: which rung runs for which backend x impl x mode x noise (``cases``), shared by the tests and the command;
- ``session``: runs the ladder for a selection and turns its checks into rows; ``output``: parity.csv/.md/.png.
"""
