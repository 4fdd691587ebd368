"""fastcustom.fit: parity with the eager reference loop and model.fit, XLA fallback, bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom.baselines.training_loop import train_eagerly

WEIGHTS = dict(rtol=1e-5, atol=1e-6)


def twin(model, x):
    """A second model of the same class with the same weights."""
    copy = model.__class__.from_config(model.get_config())
    copy(x[:1])
    copy.set_weights(model.get_weights())
    return copy


def assert_same_weights(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, **WEIGHTS)


@pytest.mark.parametrize("jit_compile", [True, "auto"])
@pytest.mark.parametrize("case", ["sequential-sgd-shuffled", "reconstructing-nadam"])
def test_matches_the_eager_reference_loop(case, jit_compile, regression_data, small_regressor):
    # 100 samples in batches of 16: six full steps and a step of 4, per epoch
    x, y = regression_data(n=100)
    if case == "sequential-sgd-shuffled":
        model, optimizer, shuffle = small_regressor(), lambda: keras.optimizers.SGD(0.05), True
    else:  # its add_loss term counts in the loss, the gradients and the logs
        model = fastcustom.ReconstructingRegressor(1, reconstruction_weight=0.5)
        model(x[:1])
        optimizer, shuffle = lambda: keras.optimizers.Nadam(0.01), False
    reference = twin(model, x)
    history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(), optimizer=optimizer(),
                             metrics=[fastcustom.HuberMetric()], batch_size=16, epochs=2,
                             shuffle=shuffle, seed=7, verbose=0, jit_compile=jit_compile)
    expected = train_eagerly(reference, x, y, loss_fn=fastcustom.HuberLoss(),
                             optimizer=optimizer(), metrics=[fastcustom.HuberMetric()],
                             batch_size=16, epochs=2, shuffle=shuffle, seed=7)
    assert expected["steps"] == 14
    # "auto": a fit this short runs as a graph, XLA's compile would not pay back
    assert history.params["compiled_with"] == ("xla" if jit_compile is True else "graph")
    assert_same_weights(model, reference)
    for name in ("loss", "huber_metric"):
        np.testing.assert_allclose(history.history[name], expected[name], rtol=1e-5)
    if case == "reconstructing-nadam":
        assert history.history["loss"][-1] > history.history["huber_metric"][-1]


@pytest.mark.parametrize("steps_per_call", [None, 3])
def test_two_steps_per_iteration_match_the_eager_reference_loop(steps_per_call, regression_data,
                                                                 small_regressor, monkeypatch):
    # 7 full steps of 16 and a step of 8 per epoch: the loop runs iterations of two
    # steps, then the odd one; with steps_per_call=3 the bounds are tensors (calls of
    # 3, 3, 1 + the tail), so each call needs the second loop when its count is odd.
    # A fit this short unrolls only with the threshold lowered.
    monkeypatch.setattr(fastcustom.training.loop, "UNROLL_AFTER_STEPS", 16)
    x, y = regression_data(n=120)
    model = small_regressor()
    reference = twin(model, x)
    history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(),
                             optimizer=keras.optimizers.SGD(0.05), batch_size=16, epochs=2,
                             seed=3, steps_per_call=steps_per_call, verbose=0,
                             jit_compile=True)
    expected = train_eagerly(reference, x, y, loss_fn=fastcustom.HuberLoss(),
                             optimizer=keras.optimizers.SGD(0.05), batch_size=16, epochs=2,
                             seed=3)
    loops = fastcustom.training.loop.compiled_loops(model, jit_compile=True)
    assert loops.steps_per_iteration(16) == 2 and expected["steps"] == 16
    assert history.params["compiled_with"] == "xla"
    assert_same_weights(model, reference)
    np.testing.assert_allclose(history.history["loss"], expected["loss"], rtol=1e-5)


def test_only_small_steps_in_long_fits_are_unrolled_decided_per_fit(small_regressor):
    loop = fastcustom.training.loop
    wide = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024)])
    loops = {name: loop.CompiledLoops(model, jit_compile)
             for name, model, jit_compile in
             [("small", small_regressor(), True), ("wide", wide, True),
              ("graph", small_regressor(), False), ("unknown length", small_regressor(), True)]}
    assert loops["small"].steps_per_iteration(32) == 1   # no fit planned yet
    for name in ("small", "wide", "graph"):
        loops[name].plan(loop.UNROLL_AFTER_STEPS)
    loops["unknown length"].plan(None)
    assert loops["small"].steps_per_iteration(32) == 2
    assert loops["wide"].steps_per_iteration(32) == 1  # 1M parameters
    assert loops["graph"].steps_per_iteration(32) == 1
    assert loops["unknown length"].steps_per_iteration(32) == 1
    loops["small"].plan(loop.UNROLL_AFTER_STEPS - 1)     # each fit decides for itself
    assert loops["small"].steps_per_iteration(32) == 1
    loops["small"].plan(10 * loop.UNROLL_AFTER_STEPS)
    assert loops["small"].steps_per_iteration(32) == 2


@pytest.fixture(scope="module")
def keras_and_ours(regression_data, small_regressor):
    """model.fit and fastcustom.fit from the same weights, in the same order, with validation."""
    x, y = regression_data(n=200)
    x_val, y_val = regression_data(n=50, seed=1)
    theirs = small_regressor()
    ours, chunked = twin(theirs, x), twin(theirs, x)
    metrics = lambda: ["mae", fastcustom.HuberMetric()]  # noqa: E731
    theirs.compile(optimizer=keras.optimizers.Nadam(0.01), loss=fastcustom.HuberLoss(),
                   metrics=metrics())
    kwargs = dict(batch_size=32, epochs=2, validation_data=(x_val, y_val), shuffle=False)
    expected = theirs.fit(x, y, verbose=0, **kwargs).history
    got = fastcustom.fit(ours, x, y, loss=fastcustom.HuberLoss(),
                         optimizer=keras.optimizers.Nadam(0.01), metrics=metrics(),
                         verbose=0, **kwargs)
    got_chunked = fastcustom.fit(chunked, x, y, loss=fastcustom.HuberLoss(),
                                 optimizer=keras.optimizers.Nadam(0.01), metrics=metrics(),
                                 verbose=0, steps_per_call=3, jit_compile=False, **kwargs)
    return {"keras": (theirs, expected), "ours": (ours, got), "chunked": (chunked, got_chunked)}


def test_history_has_model_fits_keys_and_values(keras_and_ours):
    theirs, expected = keras_and_ours["keras"]
    ours, got = keras_and_ours["ours"]
    assert sorted(got.history) == sorted(expected) == sorted(
        ["loss", "mae", "huber_metric", "val_loss", "val_mae", "val_huber_metric"])
    for name, values in expected.items():  # the epoch mean weights the step of 8 by 8
        np.testing.assert_allclose(got.history[name], values, rtol=1e-5, err_msg=name)
    assert_same_weights(ours, theirs)
    assert got.params["steps"] == 7 and got.params["epochs"] == 2


def test_steps_per_call_and_plain_graph_train_the_same(keras_and_ours):
    ours, got = keras_and_ours["ours"]
    chunked, got_chunked = keras_and_ours["chunked"]
    assert got_chunked.params["compiled_with"] == "graph"
    for name, values in got.history.items():
        np.testing.assert_allclose(got_chunked.history[name], values, rtol=1e-5, err_msg=name)
    assert_same_weights(chunked, ours)


def test_a_second_call_reuses_the_compiled_loop(regression_data, small_regressor):
    x, y = regression_data(n=64)
    model, loss, optimizer = small_regressor(), fastcustom.HuberLoss(), keras.optimizers.SGD(0.1)
    first = fastcustom.fit(model, x, y, loss=loss, optimizer=optimizer, verbose=0)
    loops = fastcustom.training.loop.compiled_loops(model)
    second = fastcustom.fit(model, x, y, loss=loss, optimizer=optimizer, verbose=0)
    assert fastcustom.training.loop.compiled_loops(model) is loops
    assert second.history["loss"][0] < first.history["loss"][0]
    assert int(optimizer.iterations) == 4


def test_a_loop_is_traced_again_only_for_other_containers_shapes_or_dtypes():
    # CompiledLoops calls the trace its `_signature` picks, bypassing tf.function's own
    # matching: whatever tf.function would trace apart must get another signature.
    signature = fastcustom.training.loop._signature
    x, y = tf.zeros([4, 2]), tf.zeros([4, 1])
    same = signature(((x, y, None), tf.constant(0), 3))
    assert signature(((tf.ones([4, 2]), y, None), tf.constant(5), 3)) == same
    for other in [((x, y, None), tf.constant(0), 4), ([x, y, None], tf.constant(0), 3),
                  ((x, y, y), tf.constant(0), 3), ((tf.zeros([5, 2]), y, None), tf.constant(0), 3),
                  ((tf.zeros([4, 2], tf.float64), y, None), tf.constant(0), 3),
                  (({"a": x}, y, None), tf.constant(0), 3)]:
        assert signature(other) != same
    assert signature({"a": x}) != signature({"b": x})
    assert signature({"a": x, "b": y}) == signature({"b": y, "a": x})


class StringRoundTrip(keras.layers.Layer):
    """Identity, through string ops that XLA cannot compile."""

    def call(self, inputs):
        text = tf.strings.as_string(inputs)
        return inputs + 0.0 * tf.strings.to_number(text)


def test_falls_back_to_a_graph_when_xla_cannot_compile(regression_data, monkeypatch):
    monkeypatch.setattr(fastcustom.training.modes, "COMPILE_PER_TRACE", 0.0)  # try XLA at once
    x, y = regression_data(n=64)
    model = keras.Sequential([keras.Input((8,)), StringRoundTrip(), keras.layers.Dense(1)])
    with pytest.warns(RuntimeWarning, match="XLA could not compile"):
        history = fastcustom.fit(model, x, y, loss="mse", optimizer="sgd", epochs=3, verbose=0)
    assert history.params["compiled_with"] == "graph"
    assert history.history["loss"][-1] < history.history["loss"][0]
    with pytest.raises(tf.errors.InvalidArgumentError):
        fastcustom.fit(model, x, y, loss="mse", optimizer="sgd", jit_compile=True, verbose=0)


def test_layers_see_training_true(regression_data):
    # lr 0: the weights stay, so the only difference between the training loss
    # and the validation loss on the same data is the noise added while training
    x, y = regression_data(n=64)
    model = keras.Sequential([keras.Input((8,)), fastcustom.AddGaussianNoise(3.0, seed=1),
                              keras.layers.Dense(1)])
    history = fastcustom.fit(model, x, y, loss="mse", optimizer=keras.optimizers.SGD(0.0),
                             validation_data=(x, y), verbose=0).history
    assert history["loss"][0] > 3 * history["val_loss"][0]


def test_builds_an_unbuilt_model_and_takes_names(capsys, regression_data):
    x, y = regression_data(n=40)
    model = keras.Sequential([keras.layers.Dense(4, activation="selu"), keras.layers.Dense(1)])
    history = fastcustom.fit(model, x, y, loss="mse", optimizer="nadam", metrics=["mae"],
                             batch_size=16, epochs=2, verbose=1)
    assert model.built and sorted(history.history) == ["loss", "mae"]
    printed = capsys.readouterr().out
    assert "Epoch 2/2" in printed and "mae:" in printed
    fastcustom.fit(model, x, y, loss="mse", optimizer="sgd", verbose=0)
    assert capsys.readouterr().out == ""


def test_a_batch_larger_than_the_data_is_one_step(regression_data, small_regressor):
    x, y = regression_data(n=40)
    optimizer = keras.optimizers.SGD(0.1)
    history = fastcustom.fit(small_regressor(), x, y, loss="mse", optimizer=optimizer,
                             batch_size=100, epochs=3, verbose=0)
    assert history.params["steps"] == 1 and int(optimizer.iterations) == 3
    assert history.params["compiled_with"] == "graph"


def test_shuffling_depends_on_the_seed_only(regression_data, small_regressor):
    x, y = regression_data(n=64)
    runs = []
    for seed in (3, 3, 4):
        model = small_regressor()
        fastcustom.fit(model, x, y, loss="mse", optimizer=keras.optimizers.SGD(0.1),
                       batch_size=8, seed=seed, verbose=0, jit_compile=False)
        runs.append(model.get_weights()[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


@pytest.mark.parametrize("kwargs,match", [
    (dict(y=np.zeros((9, 1))), "(?s)cardinality.*'y' sizes: 9"),
    (dict(x=np.zeros((0, 8)), y=np.zeros((0, 1))), "empty"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(epochs=-1), "epochs"),
    (dict(steps_per_call=0), "steps_per_call"),
    (dict(validation_data=(np.zeros((4, 8)), np.zeros((3, 1)))), "(?s)cardinality.*'y' sizes: 3"),
    (dict(loss="no_such_loss"), "loss"),
    (dict(optimizer="no_such_optimizer"), "optimizer"),
    (dict(metrics=["mae", "mae"]), "unique"),
    (dict(jit_compile="yes"), "jit_compile"),
])
def test_bad_input_raises_value_error(kwargs, match, small_regressor):
    args = {"x": np.zeros((10, 8), "float32"), "y": np.zeros((10, 1), "float32"), "loss": "mse",
            "optimizer": "sgd", "verbose": 0, **kwargs}
    model = small_regressor()
    with pytest.raises(ValueError, match=match):
        fastcustom.fit(model, args.pop("x"), args.pop("y"), **args)


def test_a_model_that_cannot_be_built_from_x_raises_value_error():
    model = keras.Sequential([fastcustom.MyDense(3)])   # needs inputs of rank >= 2
    with pytest.raises(ValueError, match="expected min_ndim=2, found ndim=1"):
        fastcustom.fit(model, np.zeros(10, "float32"), np.zeros(10, "float32"), loss="mse",
                       optimizer="sgd", verbose=0)


def test_mirrored_strategy_matches_one_device(mirrored_fit):
    single, mirrored = mirrored_fit("fastcustom.fit")
    assert (single["compiled_with"], mirrored["compiled_with"]) == ("graph", "graph")
    assert sorted(mirrored["history"]) == ["huber_metric", "loss", "val_huber_metric", "val_loss"]
    for name, values in single["history"].items():
        np.testing.assert_allclose(mirrored["history"][name], values, rtol=1e-5, err_msg=name)
    for a, b in zip(mirrored["weights"], single["weights"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
