"""The run machinery: ``plan`` (experiment -> jobs), ``runner`` (the jobs' events -> rows, signals, exit status),
``worker`` (the job loop inside each worker process), ``executors`` (this machine or Ray), ``rundir`` (the run
folder's tables and ``meta.json``), ``lock`` (one harness per folder), ``resume`` and ``fingerprint`` (which jobs of a
folder are reused), ``progress`` (the bars). Every worker imports from here, the MXNet venv's too: NumPy and the
standard library only in the modules a worker imports."""
