"""Graph or XLA (`fastcustom.training.modes`): a short fit stays a graph, a long one moves to
XLA when it can repay the compile, XLA that is not faster gives way, a stream of unknown
length follows the rent-or-buy rule; and a fit that changes form mid-way trains as one that
does not."""

import keras
import numpy as np
import pytest

import fastcustom
from fastcustom.baselines.training_loop import train_eagerly
from fastcustom.training import modes


def test_a_short_fit_stays_a_graph():
    mode = modes.Mode("auto", xla_allowed=True)
    mode.plan(64)
    mode.record(0.5, 32)          # trace + first call
    mode.record(0.01, 32)         # 312 us a step: 10 ms left, far below a compile
    assert not mode.xla


def test_a_long_fit_moves_to_xla_and_keeps_it_when_faster():
    mode = modes.Mode("auto", xla_allowed=True)
    mode.plan(100_000)
    mode.record(0.5, 32)
    mode.record(0.01, 32)                    # 31 s of graph steps left > 1.25 compiles of 1.25 s
    assert mode.xla
    mode.record(2.0, 32)                     # the compile
    mode.record(0.002, 32)                   # 62 us a step
    assert mode.xla and mode.adaptive


def test_xla_that_is_not_faster_gives_way_for_good():
    mode = modes.Mode("auto", xla_allowed=True)
    mode.plan(100_000)
    mode.record(0.5, 32)
    mode.record(0.01, 32)
    mode.record(2.0, 32)
    mode.record(0.04, 32)                    # 1.25 ms a step: slower than the graph
    assert mode.xla                          # judged after a few calls, not one
    mode.record(0.05, 32)
    mode.record(0.04, 32)
    assert not mode.xla and not mode.adaptive
    mode.record(0.01, 32)
    assert not mode.xla


def test_a_call_that_traces_a_new_shape_is_not_rent():
    mode = modes.Mode("auto", xla_allowed=True)
    mode.plan(None)
    mode.record(0.5, 32)                     # compile estimate: 1.25 s
    for _ in range(4):
        mode.record(0.4, 4, traced=True)     # a tail of each size traced: 1.6 s, no steps' time
    mode.record(0.01, 32)
    assert not mode.xla and mode.graph_time == pytest.approx(0.01)
    assert mode.graph_step == pytest.approx(0.01 / 32)


def test_unknown_length_rents_until_it_has_spent_a_compile():
    mode = modes.Mode("auto", xla_allowed=True)
    mode.plan(None)
    mode.record(0.5, 32)                     # compile estimate: 1.25 s
    for _ in range(10):
        mode.record(0.1, 32)                 # 1.0 s spent
    assert not mode.xla
    for _ in range(3):
        mode.record(0.1, 32)                 # 1.3 s spent
    assert mode.xla


@pytest.mark.parametrize("jit_compile, xla_allowed, expected", [
    (True, True, True), (False, True, False), ("auto", False, False)])
def test_explicit_choices_are_kept(jit_compile, xla_allowed, expected):
    mode = modes.Mode(jit_compile, xla_allowed)
    mode.plan(10**9)
    for seconds in (0.5, 0.01, 0.01):
        mode.record(seconds, 32)
    assert mode.xla is expected


def test_a_fit_that_moves_to_xla_midway_trains_as_the_eager_loop(monkeypatch, regression_data,
                                                                   small_regressor):
    monkeypatch.setattr(modes, "COMPILE_PER_TRACE", 0.0)     # XLA repays at once
    x, y = regression_data(n=160)
    model = small_regressor()
    reference = small_regressor()
    reference.set_weights(model.get_weights())
    history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(),
                             optimizer=keras.optimizers.Nadam(0.01), batch_size=16, epochs=4,
                             seed=5, steps_per_call=4, verbose=0)
    expected = train_eagerly(reference, x, y, loss_fn=fastcustom.HuberLoss(),
                             optimizer=keras.optimizers.Nadam(0.01), batch_size=16, epochs=4,
                             seed=5)
    assert history.params["compiled_with"] == "graph, then xla"
    np.testing.assert_allclose(history.history["loss"], expected["loss"], rtol=1e-5)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
