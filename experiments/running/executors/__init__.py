"""Where a run's worker processes run: ``local`` (this machine, ``--jobs`` at once) or ``ray`` (a Ray cluster).
Both implement ``base.Executor``; ``experiments.running.runner`` picks one."""


def check_ray_address(executor: str, address: str | None) -> None:
    """Refuse a ``--ray-address`` where no Ray head answers, before a run makes its folder or prints progress.
    Ray is imported only when the address is given."""
    if executor == "ray" and address:
        from experiments.running.executors.ray_executor import reachable

        reachable(address)
