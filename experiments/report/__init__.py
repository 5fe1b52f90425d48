"""A run read back and written up: ``results`` (a run folder as data frames), ``stats`` (intervals and tests),
``sections`` (the report's shared sections), ``plots`` (the figures), ``writer`` (``report.md`` and its plots)."""
