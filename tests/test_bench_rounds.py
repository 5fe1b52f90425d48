"""The bench's rounds without a worker: the interval of the median, the rank it allows, the shuffled order, the
floor beside each job, the rows over the rounds (ratio and gain taken within a round), the breakdown's parts with
their spread, and the tables that print them."""
import random
import statistics

import numpy as np
import pytest
from scipy import stats

from backends.contract.spec import ModelSpec, TrainSpec
from experiments.bench import breakdown, intervals, output, rounds, rows as bench_rows
from experiments.running.plan import Job


def test_the_interval_of_the_median_is_the_range_for_few_rounds_and_narrows_with_more():
    three = intervals.median_interval([1.3, 1.0, 1.1])
    assert three.median == 1.1 and (three.low, three.high) == (1.0, 1.3) and three.n == 3
    assert three.coverage == 0.75  # the range of three rounds holds the median with probability 1 - 2^(1-3)
    five = intervals.median_interval([2.0, 1.0, 3.0, 5.0, 4.0])
    assert (five.low, five.high) == (1.0, 5.0) and five.coverage == 1 - 2 ** -4  # still the range, still under 95 %
    many = intervals.median_interval([float(x) for x in range(41)])  # forty-one rounds: the extremes drop out
    assert many.median == 20.0 and 10 < many.low < 20 < many.high < 30 and many.coverage >= 0.95
    one = intervals.median_interval([1.2, None, float("nan")])
    assert one.median == 1.2 and not one.has_interval and not one.holds(1.2) and one.coverage is None
    assert intervals.median_interval([None]) is None


@pytest.mark.parametrize("n", [6, 7, 9, 12, 20, 41])
def test_from_six_rounds_the_interval_is_the_widest_pair_of_rounds_with_95_percent_as_scipy_chooses_it(n):
    values = [float(x) * 1.5 for x in range(n)][::-1]
    spread = intervals.median_interval(values)
    scipy_ci = stats.quantile_test(values, q=float(np.median(values)), p=0.5).confidence_interval(0.95)
    assert (spread.low, spread.high) == (scipy_ci.low, scipy_ci.high)
    j, covered = intervals.interval_ranks(n)
    assert covered == pytest.approx(1 - 2 * stats.binom.cdf(j - 1, n, 0.5)) and covered >= 0.95
    assert 1 - 2 * stats.binom.cdf(j, n, 0.5) < 0.95  # one pair further in would fall short


def test_the_tables_say_the_coverage_of_the_rounds_they_summarise():
    assert intervals.coverage_words(3) == ("the range of the 3 rounds, which holds the median of rounds like these "
                                           "with probability 75 % (95 % needs six rounds)")
    assert "93.8 % (95 % needs six rounds)" in intervals.coverage_words(5)
    assert intervals.coverage_words(9).endswith("without the 1 lowest and the 1 highest, which holds the median of "
                                                "rounds like these with probability 96.1 %")
    assert intervals.coverage_words(1) == intervals.coverage_words(0) == "no interval (fewer than two rounds)"


def test_a_spread_survives_a_table_round_trip_and_prints_with_its_interval():
    row = {**intervals.spread_columns("gain", intervals.median_interval([1.5, 1.2, 1.4])), "rounds_ok": "3"}
    text_row = {k: str(v) for k, v in row.items()}
    assert intervals.spread_of(text_row, "gain") == intervals.spread_of(row, "gain")
    assert intervals.fmt_spread(intervals.spread_of(text_row, "gain")) == "1.40 [1.20, 1.50]"
    assert intervals.fmt_spread(intervals.Spread(1.234, None, None, 1)) == "1.23"
    assert intervals.fmt_spread(None) == "-" and intervals.spread_of({"gain": ""}, "gain") is None


def spread(low, median, high):
    return intervals.Spread(median, low, high, 3)


def test_only_intervals_that_do_not_overlap_are_ranked():
    items = [("c", spread(2.0, 2.1, 2.2)), ("a", spread(1.0, 1.1, 1.2)), ("b", spread(1.15, 1.3, 1.4)),
             ("d", spread(1.35, 1.5, 1.6)), ("e", spread(3.0, 3.0, 3.0)), ("f", intervals.Spread(0.5, None, None, 1))]
    groups, unranked = intervals.tie_groups(items)
    # a overlaps b, b overlaps d: one chain, tied, though a and d do not overlap each other
    assert groups == [["a", "b", "d"], ["c"], ["e"]] and unranked == ["f"]
    lines = output.rank_lines([{"backend": k, "mode": "eager", "tuning": "stock", "status": "ok",
                                **intervals.spread_columns("ratio_to_floor", s)} for k, s in items])
    assert "1. tied on this machine: a eager 1.10 [1.00, 1.20]; b eager 1.30 [1.15, 1.40]; d eager" in "\n".join(lines)
    assert "2. c eager 2.10 [2.00, 2.20]" in lines and "not ranked (one round: no interval): f eager 0.50" in lines[-2]


def job(backend, mode, tuning, variant="d2l"):
    return Job(backend=backend, variant=variant, model=ModelSpec(), train=TrainSpec(mode=mode, tuning=tuning))


def test_a_round_runs_every_job_once_in_shuffled_blocks_of_one_backend_and_mode():
    jobs = [job(b, m, t, v) for b in ("numpy", "jax", "mxnet") for m in ("eager", "compiled")
            for t in ("stock", "tuned") for v in ("d2l", rounds.NOISE_OFF)]
    rng = random.Random(0)
    orders = [rounds.round_order(jobs, rng) for _ in range(6)]
    for order in orders:
        assert sorted(j.key for j in order) == sorted(j.key for j in jobs)
        blocks = [(j.backend, j.train.mode) for j in order]
        for start in range(0, len(blocks), 4):  # a backend x mode's four jobs run back to back
            assert len(set(blocks[start:start + 4])) == 1
    assert len({tuple(j.key for j in order) for order in orders}) == 6  # a new order every round
    assert len({order[0].train.tuning for order in orders}) == 2  # neither tier always goes first
    again = random.Random(0)
    assert [[j.key for j in rounds.round_order(jobs, again)] for _ in range(6)] == \
        [[j.key for j in order] for order in orders]  # the seed gives the orders back


def test_a_jobs_floor_pools_the_passes_timed_beside_it_and_a_failed_pass_is_said_not_hidden():
    from experiments.bench.floor import PASS_ROUNDS, step_gemms

    floors = rounds.Floors(threads=1, sizes=(784, 8, 10), batch=16)
    gemms = step_gemms((784, 8, 10), 16)
    opened = {"peak_samples": [2e9, 1e9, 3e9], "numpy": "2.0", "blas": {}, "environment": {}, "interpreter": "py"}
    passes = [{"event": "floor", "when": "before epoch 2", "samples": [[1.0] * PASS_ROUNDS] * len(gemms)},
              {"event": "floor", "when": "before epoch 3", "samples": [[3.0] * PASS_ROUNDS] * len(gemms)},
              {"event": "floor", "when": "after epoch 3", "error": "the floor beside the job failed: boom"}]
    main, other = job("numpy", "eager", "tuned"), job("numpy", "eager", "stock")
    floors.record(2, main, opened, passes)
    floors.record(2, other, {"error": "the floor beside the job could not start: no python"}, [])
    floor = floors.beside[(2, main.key)]
    necessary = sum(g["necessary"] for g in gemms)
    assert floor["step_seconds"] == 2.0 * necessary  # each product's median over both passes' rounds
    assert floor["passes"] == 2 and floor["rounds"] == 2 * PASS_ROUNDS and floor["peak_gflops"] == 2.0
    assert floor["threads"] == 1 and floor["interpreter"] == "py"
    assert floors.beside[(2, other.key)] is None  # its row takes the pooled floor, and says so
    assert floors.labels == ["round 2, beside numpy eager tuned", "round 2, beside numpy eager stock"]
    assert floors.errors == ["the floor beside the job failed: boom",
                             "the floor beside the job could not start: no python"]
    assert floors.any()


def round_row(tuning, number, steady, floor, **extra):
    return {"backend": "x", "mode": "eager", "tuning": tuning, "round": number, "status": "ok", "error": "",
            "steady_median_seconds": steady, "floor_seconds": floor, "ratio_to_floor": steady / floor, "n_train": 100,
            "batch_size": 10, **extra}


def test_ratio_and_gain_are_taken_within_each_round_then_the_median_over_rounds():
    # the machine slows down in round 2: the floor beside it and both tiers with it
    rows = [round_row("stock", 1, 2.0, 1.0), round_row("tuned", 1, 1.0, 1.0),
            round_row("stock", 2, 4.4, 2.0), round_row("tuned", 2, 2.0, 2.0),
            round_row("stock", 3, 2.1, 1.0), round_row("tuned", 3, 1.05, 1.0)]
    bench_rows.add_gains(rows)
    assert [r["gain"] for r in rows] == pytest.approx([2.0, 2.0, 2.2, 2.2, 2.0, 2.0])
    stock, tuned = bench_rows.aggregate_all(rows, 3)
    assert stock["ratio_to_floor"] == 2.1 and (stock["ratio_to_floor_low"], stock["ratio_to_floor_high"]) == (2.0, 2.2)
    assert tuned["ratio_to_floor"] == 1.0 and tuned["gain"] == stock["gain"] == 2.0
    assert stock["steady_median_seconds"] == 2.1 and stock["samples_per_second"] == pytest.approx(100 / 2.1)
    assert stock["rounds_ok"] == 3 and stock["status"] == "ok" and stock["error"] == ""
    # the ratio of the medians would mix rounds: 2.1 / 1.0 here only by chance; the pooled floor's would be 2.1 / 1
    assert stock["floor_seconds"] == statistics.median([1.0, 2.0, 1.0])


def test_a_round_that_failed_is_left_out_and_named_and_a_job_that_never_finished_keeps_its_status():
    rows = [round_row("stock", 1, 2.0, 1.0), dict(round_row("stock", 2, 0, 1.0), status="failed",
                                                  error="diverged", steady_median_seconds=None),
            {"backend": "x", "mode": "eager", "tuning": "tuned", "round": 1, "status": "interrupted",
             "error": "SIGINT stopped the bench before this job"}]
    stock, tuned = bench_rows.aggregate_all(rows, 2)
    assert stock["status"] == "ok" and stock["rounds_ok"] == 1 and stock["error"] == "round 2 failed: diverged"
    assert stock["ratio_to_floor"] == 2.0 and stock["ratio_to_floor_low"] is None  # one round: no interval
    assert tuned["status"] == "interrupted" and tuned["rounds_ok"] == 0 and tuned.get("ratio_to_floor") is None
    table = output.two_tier_table(bench_rows.aggregate_all(rows, 2))
    assert table[1].split()[:4] == ["x", "eager", "2.00", "-"]


def test_the_breakdown_adds_up_in_every_round_and_says_within_noise_instead_of_a_negative_share():
    rows = []
    for number, (noise, steady) in enumerate([(0.02, 2.0), (-0.03, 2.2), (0.01, 2.1)], start=1):
        rows.append(round_row("stock", number, steady, 0.8, noise_seconds=noise, noise_off_seconds=steady - noise))
        rows.append(round_row("tuned", number, 1.0, 0.8, noise_seconds=0.1 + noise, noise_off_seconds=0.9 - noise))
    per_round, parts = breakdown.breakdown_rows(rows, 100, {("x", "eager", "stock", 1): {"t0_seconds": 0.01, "k": 1}})
    for p in per_round:
        assert sum(p[k] for k in ("floor_seconds", "noise_seconds", "fixed_seconds", "rest_seconds")) == \
            pytest.approx(p["epoch_seconds"], rel=1e-12)
    assert per_round[0]["fixed_seconds"] == pytest.approx(0.1) and not per_round[1]["fixed_measured"]
    stock, tuned = parts
    assert (stock["tuning"], tuned["tuning"]) == ("stock", "tuned")
    assert stock["noise_seconds_low"] < 0 < stock["noise_seconds_high"]  # its interval holds zero
    assert stock["removed_epoch_seconds"] == pytest.approx(1.1) and stock["removed_epoch_seconds_low"] > 0
    text = "\n".join(breakdown.breakdown_lines(parts, 10, None))
    stock_line = next(line for line in text.splitlines() if line.startswith("| x | eager | stock"))
    assert "within noise (0.010 [-0.030, 0.020])" in stock_line
    assert text.splitlines()[-1].endswith("| removed: rest; added: noise |")  # beyond the noise, each way
    # a part below zero in every round is named so, in seconds, never as a negative share
    below = intervals.median_interval([-0.2, -0.1, -0.15])
    cell = breakdown.part_cell(below, 1.0)
    assert "%" not in cell and "overlap" in cell
    assert "%" not in breakdown.part_cell(intervals.Spread(-0.1, None, None, 1), 1.0)
    assert breakdown.part_cell(intervals.median_interval([0.2, 0.3, 0.25]), 1.0).endswith("(25%)")


def test_the_tuning_verdict_names_a_faster_tier_only_beyond_the_rounds_spread():
    assert output.gain_verdict(spread(1.1, 1.3, 1.5)) == "tuned faster"
    assert output.gain_verdict(spread(0.7, 0.8, 0.9)) == "stock faster"
    assert output.gain_verdict(spread(0.9, 1.2, 1.5)) == "tied on this machine"
    assert output.gain_verdict(intervals.Spread(1.3, None, None, 1)) == "one round: no interval"



def test_the_chart_draws_the_ratio_its_label_names_not_seconds_against_another_moments_floor():
    # round 2's machine is slower for the stock job: its seconds over the pooled floor (3.0 / 1.0) is no figure
    # of the bench, its median per-round ratio (2.0) is
    rows = [round_row("stock", 1, 2.0, 1.0), round_row("tuned", 1, 1.0, 1.0),
            round_row("stock", 2, 4.0, 2.0), round_row("tuned", 2, 1.1, 1.0),
            round_row("stock", 3, 3.0, 1.5), round_row("tuned", 3, 1.2, 1.0)]
    bench_rows.add_gains(rows)
    summary = bench_rows.aggregate_all(rows, 3)
    ax = output.chart_figure(summary, 1.0, "t").axes[0]
    bars = sorted(ax.patches, key=lambda bar: bar.get_y())
    assert [bar.get_width() for bar in bars] == pytest.approx([2.0, 1.1])  # stock, tuned: the median ratios
    assert summary[0]["steady_median_seconds"] == 3.0  # not the bar's length
    labels = [t.get_text() for t in ax.texts]
    assert "  2.00 [2.00, 2.00]x, 3.000 s" in labels
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [1.0]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "stock", "the floor (1, pooled over the run: 1.000 s an epoch)", "tuned"]
    for row in summary:  # no floor anywhere: the chart says seconds, and draws them
        row.update(ratio_to_floor=None, ratio_to_floor_low=None, ratio_to_floor_high=None)
    ax = output.chart_figure(summary, None, "t").axes[0]
    assert sorted(bar.get_width() for bar in ax.patches) == pytest.approx([1.1, 3.0])
    assert "no floor timed" in ax.get_xlabel()
    ax = output.chart_figure([], None, "t").axes[0]  # nothing finished: said, with no axis to read
    assert [t.get_text() for t in ax.texts] == ["no job finished"] and not ax.patches and not len(ax.get_xticks())

def test_a_signal_between_two_rounds_stops_the_rounds_and_keeps_those_that_ran(monkeypatch):
    """The runner handles SIGINT and SIGTERM while a round runs; between two rounds the bench does: the rounds that
    ran are kept, with the signal, so that every table is still written for them."""
    import os
    import signal
    from types import SimpleNamespace

    from experiments.bench import session

    ran = []

    def one_round(args, argv, number, **kwargs):
        if number == 2:  # the signal lands after round 1, before round 2's jobs start
            os.kill(os.getpid(), signal.SIGTERM)
        ran.append(number)
        return session._Round(number, kwargs["order"], bench_rows.EventLog(), {}, None)

    monkeypatch.setattr(session, "_run_round", one_round)
    args = SimpleNamespace(order_seed=0, executor="local", rounds=3)
    experiment = SimpleNamespace(jobs=lambda offered: [job("numpy", "eager", "stock")])
    before = signal.getsignal(signal.SIGTERM)
    done, stopped = session._run_rounds(args, [], experiment=experiment, out=None, floors=None, top=None)
    assert ran == [1] and [r.number for r in done] == [1]
    assert stopped is not None and stopped.signal_name == "SIGTERM" and stopped.status == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are given back
