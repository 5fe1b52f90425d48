"""The package's version, in one place: ``pyproject.toml`` reads it (``[tool.setuptools.dynamic]``),
``python harness.py --version`` prints it, and every run's ``meta.json`` records it (``dropbench_version``)."""
__version__ = "0.1.0"
