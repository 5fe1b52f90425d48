"""One module per command of ``harness.py``: its parser (``build_parser``) and what it does (``run(args, argv)``).
``experiments.cli`` dispatches to them and turns user errors into one line and exit status 2."""
