"""The benchmark's parts: ``floor`` (the FLOP count and the floor's measurement), ``rounds`` (a round's shuffled order
and the floor beside each job), ``session`` (one batch size's rounds), ``rows`` (a row per backend x mode x tier x
round, and over the rounds), ``intervals`` (the median over rounds, its interval, the rank it allows),
``breakdown`` (where the epoch goes), ``scaling`` (the fit over batch sizes), ``output`` (tables, markdown, chart).
The command that runs it is ``experiments.commands.bench``; the method is in ``docs/bench.md``."""
