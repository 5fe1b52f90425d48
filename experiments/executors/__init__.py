"""Where a run's worker processes run: ``local`` (this machine, ``--jobs`` at once) or ``ray`` (a Ray cluster).
Both implement ``base.Executor``; ``experiments.runner`` picks one."""
