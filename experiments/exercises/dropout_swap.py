"""Exercise 1: what if the dropout rates of the two hidden layers are changed, or swapped?"""
from __future__ import annotations


from experiments.entry import SEEDS, Entry, rates
from experiments.report.results import Run
from experiments.report.sections import (
    final_accuracy_section, findings, rates_label, setup_frames, setup_heading,
)
from experiments.report.stats import describe, paired, stat


def dropout_swap(run: Run) -> list[str]:
    """Exercise 1: every (p1, p2) against its swap, and against D2L's (0.5, 0.5) and no dropout."""
    rates = {v: run.rates(v) for v in run.variants}
    reference = next((v for v, r in rates.items() if r == (0.5, 0.5)), run.variants[0])
    sections = final_accuracy_section(run, reference, [("dropout_1", "p1"), ("dropout_2", "p2")])
    text = []
    for setup, frame in setup_frames(run):
        head = setup_heading(run, setup)
        present = [v for v in run.variants if v in set(frame["variant"])]
        means = {v: stat(frame[frame["variant"] == v]["final_val_acc"] * 100).mean for v in present}
        if not means:
            continue
        best, worst = max(means, key=means.get), min(means, key=means.get)
        text.append(f"{head}highest mean test accuracy: {rates_label(rates[best])} at {means[best]:.2f} %; lowest: "
                    f"{rates_label(rates[worst])} at {means[worst]:.2f} %.")
        second_wins, clear_wins, pairs = 0, 0, 0
        for v in present:
            r = rates[v]
            if len(r) != 2 or not r[0] < r[1]:
                continue
            swapped = next((w for w in present if rates[w] == (r[1], r[0])), None)
            if swapped is None:
                continue
            s = paired(frame, "final_val_acc", v, swapped).scaled(100)
            pairs += 1
            second_wins += s.mean < 0
            clear_wins += s.mean < 0 and s.clear
            text.append(f"{head}swapping {rates_label(r)} to {rates_label(rates[swapped])} (the larger rate moves to "
                        f"the first hidden layer) changes test accuracy by {describe(s)}.")
        if pairs:
            text.append(f"{head}in {second_wins} of {pairs} swap pairs the larger rate on the *second* layer gives "
                        f"the higher mean accuracy ({clear_wins} of them beyond the seed noise).")
        none = next((v for v in present if all(p == 0 for p in rates[v])), None)
        if none is not None and reference in present and none != reference:
            s = paired(frame, "final_val_acc", none, reference).scaled(100)
            text.append(f"{head}D2L's {rates_label(rates[reference])} against no dropout: {describe(s)}.")
    return sections + [""] + findings(text)


ENTRY = Entry("dropout-swap", "ex. 1: dropout rates (p1, p2) = (0.5, 0.5), (0.2, 0.5) vs (0.5, 0.2), (0.1, 0.9) vs "
              "(0.9, 0.1), (0, 0); final accuracy over seeds", number=1,
              variants=(rates("0.5-0.5", 0.5, 0.5), rates("0.2-0.5", 0.2, 0.5), rates("0.5-0.2", 0.5, 0.2),
                        rates("0.1-0.9", 0.1, 0.9), rates("0.9-0.1", 0.9, 0.1), rates("0-0", 0.0, 0.0)),
              seeds=SEEDS, analysis=dropout_swap)
