"""The benchmark's parts: ``floor`` (the FLOP count and the floor's measurement), ``rows`` (a row per backend x mode),
``output`` (table, markdown, chart). The command that runs it is ``experiments.commands.bench``."""
