"""The contract refuses invalid hyperparameters when a spec is built, naming the field and the allowed range."""
import dataclasses

import pytest

from experiments.catalog import CatalogError, build
from backends.contract.spec import ModelSpec, SpecError, TrainSpec
from experiments.running.plan import Experiment, Job, Variant


def test_defaults_are_d2ls():
    model, train = ModelSpec(), TrainSpec()
    assert model.layer_sizes == (784, 256, 256, 10) and model.dropouts == (0.5, 0.5)
    assert (train.epochs, train.batch_size, train.lr, train.weight_decay) == (10, 256, 0.1, 0.0)
    assert model.num_params() == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10 == 269_322
    assert model.param_shapes()["dense_0/kernel"] == (784, 256) and model.param_shapes()["dense_2/bias"] == (10,)


@pytest.mark.parametrize("kwargs,field", [
    ({"dropouts": (1.5, 0.5)}, "dropouts[0]"), ({"dropouts": (0.5, -0.1)}, "dropouts[1]"),
    ({"dropouts": (0.5,)}, "dropouts"), ({"hiddens": ()}, "hiddens"), ({"hiddens": (256, 0)}, "hiddens[1]"),
    ({"impl": "fancy"}, "impl"), ({"noise": "salt"}, "noise"), ({"init": "zeros"}, "init"),
    ({"noise": "gaussian", "dropouts": (1.0, 0.5)}, "dropouts[0]"), ({"dropouts": (float("nan"), 0.5)}, "dropouts[0]"),
])
def test_model_spec_refuses(kwargs, field):
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]")) as info:
        ModelSpec(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs,field", [
    ({"lr": -1}, "lr"), ({"lr": 0}, "lr"), ({"batch_size": 0}, "batch_size"), ({"epochs": 0}, "epochs"),
    ({"weight_decay": -1e-3}, "weight_decay"), ({"train_limit": 0}, "train_limit"), ({"mode": "turbo"}, "mode"),
    ({"device": "tpu"}, "device"), ({"seed": -1}, "seed"), ({"epochs": 2.5}, "epochs"),
])
def test_train_spec_refuses(kwargs, field):
    with pytest.raises(SpecError, match=field):
        TrainSpec(**kwargs)


def test_p_one_and_zero_are_valid_dropout():
    assert ModelSpec(dropouts=(1.0, 0.0)).dropouts == (1.0, 0.0)


def test_job_round_trips_through_json_dict():
    job = Job(backend="torch", variant="v", model=ModelSpec(hiddens=(64, 32), dropouts=(0.1, 0.2), noise="additive"),
              train=TrainSpec(seed=3, epochs=2, train_limit=100), experiment="x", probes=("p",))
    assert Job.from_dict(job.to_dict()) == job


def test_experiment_jobs_cover_backends_modes_variants_seeds_in_backend_major_order():
    experiment = Experiment(name="e", description="d", variants=(Variant("a", model={"dropouts": (0.2, 0.5)}),
                                                                 Variant("b", model={"dropouts": (0.5, 0.2)})),
                            backends=("numpy", "torch"), seeds=(0, 1), modes=("eager", "compiled"))
    jobs = experiment.jobs(lambda b: ("eager",) if b == "numpy" else ("eager", "compiled"))
    assert len(jobs) == 2 * 2 + 2 * 2 * 2
    assert [j.backend for j in jobs] == ["numpy"] * 4 + ["torch"] * 8
    assert {(j.variant, j.model.dropouts) for j in jobs} == {("a", (0.2, 0.5)), ("b", (0.5, 0.2))}
    assert len({j.key for j in jobs}) == len(jobs)


def test_experiment_validates_variants_up_front():
    with pytest.raises(SpecError, match="dropouts"):
        Experiment(name="e", description="d", variants=(Variant("bad", model={"dropouts": (2.0, 0.5)}),))
    with pytest.raises(SpecError, match="unknown model field"):
        Variant("bad", model={"dropout": 0.5})


def test_catalog_refuses_a_flag_that_an_experiment_varies(monkeypatch):
    from experiments import catalog
    from experiments.entry import Entry

    entry = Entry("grid", "test", number=99, variants=(Variant("a", model={"dropouts": (0.1, 0.1)}),))
    monkeypatch.setitem(catalog.CATALOG, "grid", entry)
    with pytest.raises(CatalogError, match="varies dropouts"):
        build("grid", backends=["numpy"], model_overrides={"dropouts": (0.3, 0.3)})
    experiment = build("grid", backends=["numpy"], train_overrides={"epochs": 3})
    assert experiment.base_train.epochs == 3
    with pytest.raises(CatalogError, match="unknown experiment"):
        build("nosuch", backends=["numpy"])


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelSpec().impl = "scratch"
