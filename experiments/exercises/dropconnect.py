"""Exercise 6: DropConnect (masks on the weights) against dropout (masks on the activations)."""
from __future__ import annotations


from experiments.entry import SEEDS, Entry, rates
from experiments.report.results import Run
from experiments.report.sections import (
    final_accuracy_section, findings, matched_comparisons, noise_kinds_note,
)


def dropconnect(run: Run) -> list[str]:
    """Exercise 6: DropConnect against dropout at the same rates, and both against none."""
    info = {v: (str(run.param(v, "noise")), run.rates(v)) for v in run.variants}
    none = next((v for v, (_, r) in info.items() if all(p == 0 for p in r)), None)
    pairs = [(d, c) for c, (nc, rc) in info.items() if nc == "dropconnect"
             for d, (nd, rd) in info.items() if nd == "dropout" and rd == rc]
    sections = final_accuracy_section(run, none, [("noise", "noise"), ("dropout_1", "p1"), ("dropout_2", "p2")])
    return (noise_kinds_note(run) + ["Matched rates: the same p_i for both kinds.", ""] + sections + [""]
            + findings(matched_comparisons(run, pairs, none)))


ENTRY = Entry("dropconnect", "ex. 6: DropConnect (masks on weights) vs dropout (masks on activations) at rates "
              "(0.5, 0.5) and (0.2, 0.2), and none", number=6,
              variants=(rates("none", 0.0, 0.0), rates("dropout-0.5", 0.5, 0.5),
                        rates("dropconnect-0.5", 0.5, 0.5, noise="dropconnect"), rates("dropout-0.2", 0.2, 0.2),
                        rates("dropconnect-0.2", 0.2, 0.2, noise="dropconnect")),
              seeds=SEEDS, analysis=dropconnect)
