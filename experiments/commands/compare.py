"""``python harness.py compare RUN_A RUN_B``: placeholder while the command is written."""
