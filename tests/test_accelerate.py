"""`accelerate(model)`: `model.fit`, `evaluate` and `predict` give what Keras's give, faster.

Each test trains two models with the same weights and compile arguments on the
same data, one with Keras's own methods and one accelerated (`shuffle=False`),
and compares the history (keys and values, 1e-5 relative), the final weights
(1e-5) and what the callbacks wrote.
"""

import csv
import glob
import importlib
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom.training import keras_internals

RTOL = 1e-5


def classifier(outputs, activation, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, "relu"),
                             keras.layers.Dense(outputs, activation)])


def regressor(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, "selu"),
                             keras.layers.Dense(1)])


def two_outputs(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, "tanh")(inputs)
    return keras.Model(inputs, {"a": keras.layers.Dense(1, name="a")(hidden),
                                "b": keras.layers.Dense(2, name="b")(hidden)})


def data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, :1] - 0.5 * x[:, 1:2]).astype("float32")
    return x, y


def twins(build, **compile_args):
    """(Keras's, ours): the same weights, compiled alike; ours accelerated."""
    theirs, ours = build(), build()
    ours.set_weights(theirs.get_weights())
    for model in (theirs, ours):
        model.compile(**{name: (value() if callable(value) and name == "optimizer" else value)
                         for name, value in compile_args.items()})
    return theirs, fastcustom.accelerate(ours)


def assert_same(theirs, ours, expected=None, got=None):
    if expected is not None:
        assert sorted(got.history) == sorted(expected.history)
        for name, values in expected.history.items():
            np.testing.assert_allclose(got.history[name], values, rtol=RTOL, err_msg=name)
    for a, b in zip(theirs.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=1e-6)


def fit_both(theirs, ours, *args, **kwargs):
    kwargs.setdefault("verbose", 0)
    kwargs.setdefault("shuffle", False)
    expected = theirs.fit(*args, **kwargs)
    got = ours.fit(*args, **kwargs)
    return expected, got


# -- what model.compile set up -----------------------------------------------------------
@pytest.mark.parametrize("case", ["binary", "categorical", "sparse-acc"])
def test_accuracy_is_resolved_as_compile_resolves_it(case):
    x, y = data(120)
    if case == "binary":
        build, loss, labels = lambda: classifier(1, "sigmoid"), "binary_crossentropy", y > 0
        metric = "accuracy"
    elif case == "categorical":
        build, loss, metric = lambda: classifier(3, "softmax"), "categorical_crossentropy", "accuracy"
        labels = keras.utils.to_categorical(np.digitize(y[:, 0], [-0.5, 0.5]), 3)
    else:
        build, loss, metric = lambda: classifier(3, "softmax"), "sparse_categorical_crossentropy", "acc"
        labels = np.digitize(y[:, 0], [-0.5, 0.5])
    theirs, ours = twins(build, optimizer=lambda: keras.optimizers.Adam(0.02), loss=loss,
                         metrics=[metric])
    expected, got = fit_both(theirs, ours, x, labels.astype("float32"), batch_size=16, epochs=3)
    assert_same(theirs, ours, expected, got)
    assert got.history[metric][-1] > 0.5


@pytest.mark.parametrize("losses", ["mse", "per-output"])
def test_two_outputs_sum_their_losses_and_log_each(losses):
    x, y = data(96)
    targets = {"a": y, "b": np.concatenate([y, -y], axis=1)}
    kwargs = dict(loss="mse") if losses == "mse" else dict(
        loss={"a": "mse", "b": "mae"}, loss_weights={"a": 1.0, "b": 0.5},
        metrics={"a": ["mae"], "b": ["mse"]})
    theirs, ours = twins(two_outputs, optimizer=lambda: keras.optimizers.SGD(0.05), **kwargs)
    expected, got = fit_both(theirs, ours, x, targets, batch_size=32, epochs=2)
    assert_same(theirs, ours, expected, got)
    assert {"a_loss", "b_loss"} <= set(got.history)


def test_mixed_float16_scales_the_loss_and_updates_small_gradients():
    x, y = data(64)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        theirs, ours = twins(regressor, optimizer=lambda: keras.optimizers.SGD(0.1), loss="mse")
        before = ours.get_weights()[0].copy()
        assert isinstance(ours.optimizer, keras.optimizers.LossScaleOptimizer)
        expected, got = fit_both(theirs, ours, x, 1e-4 * y, batch_size=16, epochs=2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.all(ours.get_weights()[0] != before)   # gradients ~1e-9 survive the scaling
    # float16 activations and gradients (eps 9.8e-4): XLA and TF's kernels round differently,
    # so the two agree to float16 rounding of the weights' scale (~0.03), not to float32's
    for a, b in zip(theirs.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=3e-5)
    np.testing.assert_allclose(got.history["loss"], expected.history["loss"], rtol=1e-3)


def test_a_train_step_override_is_the_step_that_runs():
    class CountingModel(keras.Sequential):
        """The notes' custom step: plain GradientTape, its own logs."""

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
            self.optimizer.apply_gradients(zip(tape.gradient(loss, self.trainable_variables),
                                               self.trainable_variables))
            return {"custom_loss": loss}

    def build():
        keras.utils.set_random_seed(0)
        return CountingModel([keras.Input((6,)), keras.layers.Dense(1)])

    x, y = data(80)
    theirs, ours = twins(build, optimizer=lambda: keras.optimizers.SGD(0.05))
    expected, got = fit_both(theirs, ours, x, y, batch_size=16, epochs=2)
    assert sorted(got.history) == ["custom_loss"]
    assert_same(theirs, ours, expected, got)


# -- fit's arguments ---------------------------------------------------------------------
@pytest.mark.parametrize("case", ["sample_weight", "class_weight", "validation_split",
                                  "validation_3_tuple_freq_2", "initial_epoch"])
def test_fit_arguments_mean_what_they_mean_in_keras(case):
    x, y = data(100)
    kwargs = dict(batch_size=16, epochs=3)
    build, labels, loss = regressor, y, "mse"
    if case == "sample_weight":
        kwargs["sample_weight"] = np.linspace(0, 2, len(x)).astype("float32")
    elif case == "class_weight":
        build, loss = (lambda: classifier(1, "sigmoid")), "binary_crossentropy"
        labels, kwargs["class_weight"] = (y > 0).astype("float32"), {0: 0.3, 1: 2.0}
    elif case == "validation_split":
        kwargs["validation_split"] = 0.25
    elif case == "validation_3_tuple_freq_2":
        kwargs["validation_data"] = (x[:30], y[:30], np.arange(30, dtype="float32"))
        kwargs["validation_freq"] = 2
    else:
        kwargs["initial_epoch"] = 1
    theirs, ours = twins(build, optimizer=lambda: keras.optimizers.Adam(0.01), loss=loss,
                         metrics=["mae"], weighted_metrics=["mse"])
    expected, got = fit_both(theirs, ours, x, labels, **kwargs)
    assert_same(theirs, ours, expected, got)
    if case == "validation_3_tuple_freq_2":
        assert len(got.history["val_loss"]) == 1


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


def uneven_batches(x, y, bounds):
    """A data set whose batches are the rows between consecutive `bounds`."""
    parts = [tf.data.Dataset.from_tensor_slices((x[a:b], y[a:b])).batch(b - a)
             for a, b in zip(bounds, bounds[1:])]
    stream = parts[0]
    for part in parts[1:]:
        stream = stream.concatenate(part)
    return stream


@pytest.mark.parametrize("source", ["dataset", "dataset-steps_per_epoch", "dataset-uneven",
                                    "dataset-windows", "generator", "pydataset"])
def test_streams_train_as_model_fit_does(source, monkeypatch):
    x, y = data(100)   # batches of 16: six full and one of 4
    kwargs = dict(epochs=2)
    if source == "dataset":
        stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    elif source == "dataset-uneven":
        # batches of 16, 8, 16, 16, 4, 12, 16, 12: runs of one size, a smaller last batch
        stream = uneven_batches(x, y, [0, 16, 24, 40, 56, 60, 72, 88, 100])
    elif source == "dataset-windows":
        # windows of 2 batches (rows of 7 float32: 28 bytes), each read while one trains
        monkeypatch.setattr(fastcustom.training.sources, "WINDOW_BYTES", 28 * 17)
        stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    elif source == "dataset-steps_per_epoch":
        stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
        kwargs = dict(epochs=3, steps_per_epoch=5)   # the third epoch crosses a data pass
    elif source == "generator":
        stream = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 100, 16))
        kwargs = dict(epochs=1)
    else:
        stream = Batches(x, y, 16)
    theirs, ours = twins(regressor, optimizer=lambda: keras.optimizers.Adam(0.01), loss="mse",
                         metrics=["mae"])
    kwargs["shuffle"] = False   # a PyDataset's batch order would be drawn
    expected = theirs.fit(stream, verbose=0, **kwargs)
    if source == "generator":
        stream = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 100, 16))
    got = ours.fit(stream, verbose=0, **kwargs)
    assert_same(theirs, ours, expected, got)
    assert got.params["compiled_with"] == "graph"   # ours (not handed back): short, a graph


def test_stream_windows_hold_8_mib_or_32_batches_of_strings():
    """A window without batch hooks: batches up to `WINDOW_BYTES` (a batch larger than that
    alone), or 32 batches where the element spec does not give the bytes (strings)."""
    def windows(stream):
        source = fastcustom.training.sources.StreamSource(stream)
        return [call.steps for call in source.calls()]

    rows = np.zeros((300, 1024), np.float32)   # 4 KiB a row
    assert windows(tf.data.Dataset.from_tensor_slices(rows).batch(100)) == [3]
    huge = np.zeros((3, 1024, 1024), np.float32)  # 4 MiB a row
    assert windows(tf.data.Dataset.from_tensor_slices(huge).batch(2)) == [1, 1]
    text = tf.data.Dataset.from_tensor_slices((["a few words"] * 70, np.zeros(70))).batch(1)
    assert windows(text) == [32, 32, 6]


def test_a_first_batch_spec_is_the_first_batch_keras_would_build_from():
    """What the model is built from (`first_spec`: shapes and dtypes, no op run) describes
    the first batch itself: a stream's calls (16 rows, then the last 5 alone), arrays of
    fewer rows than a batch, and a call of such arrays' tail alone."""
    def spec_of(batch):
        return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)

    x = {"numbers": np.zeros((37, 3), np.float32), "codes": np.zeros((37, 2, 2), np.int32)}
    y = np.zeros((37,), np.int64)
    stream = fastcustom.training.sources.StreamSource(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16), per_call=2)
    calls = list(stream.calls())
    assert [call.steps for call in calls] == [2, 1]
    arrays = fastcustom.training.sources.ArraySource(x, y, batch_size=64)
    calls += list(arrays.calls(None, None))
    assert (calls[-1].stop, calls[-1].tail) == (0, True)    # the tail alone
    for call in calls:
        assert call.first_spec() == spec_of(call.first_batch())
    assert arrays.first_spec() == spec_of(arrays.first_batch())
    assert tf.nest.flatten(arrays.first_spec())[0].shape[0] == 37


# -- callbacks ---------------------------------------------------------------------------
class Recorder(keras.callbacks.Callback):
    """Every hook's call, with the batch or epoch, as the model saw it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch", batch, round(logs["loss"], 5)))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch", epoch, sorted(logs)))


def test_batch_hooks_run_once_per_call_with_its_last_step():
    x, y = data(100)   # 7 steps of 16 per epoch
    _, ours = twins(regressor, optimizer="sgd", loss="mse")
    recorder = Recorder()
    ours.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[recorder])
    assert [c[:2] for c in recorder.calls] == [("batch", 6), ("epoch", 0), ("batch", 6),
                                                ("epoch", 1)]
    recorder.calls.clear()
    fastcustom.accelerate(ours, steps_per_call=3)
    ours.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[recorder])
    assert [c[:2] for c in recorder.calls] == [("batch", 2), ("batch", 5), ("batch", 6),
                                                ("epoch", 0)]


@pytest.mark.parametrize("source", ["arrays", "dataset"])
def test_stop_training_is_honoured_at_the_next_call(source):
    x, y = data(100)
    _, ours = twins(regressor, optimizer="sgd", loss="mse")
    stopper = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: setattr(ours, "stop_training", batch >= 2))
    fastcustom.accelerate(ours, steps_per_call=3)
    args = (x, y) if source == "arrays" else \
        (tf.data.Dataset.from_tensor_slices((x, y)).batch(16),)
    history = ours.fit(*args, batch_size=16 if source == "arrays" else None, epochs=5,
                       verbose=0, callbacks=[stopper])
    assert len(history.history["loss"]) == 1 and int(ours.optimizer.iterations) == 3


def test_terminate_on_nan_stops_within_one_call():
    x, y = data(200)
    x[70] = np.nan   # in step 4 of 13
    _, ours = twins(regressor, optimizer="sgd", loss="mse")
    history = ours.fit(x, y, batch_size=16, epochs=3, verbose=0,
                       callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert int(ours.optimizer.iterations) <= fastcustom.training.methods.DEFAULT_STEPS_PER_CALL


def epoch_callbacks(tmp_path, kind):
    """Each epoch-level callback the issue names, writing under tmp_path/kind."""
    folder = tmp_path / kind
    folder.mkdir()
    return {
        "early_stopping": lambda: [keras.callbacks.EarlyStopping(
            monitor="loss", min_delta=10.0, patience=1, restore_best_weights=True)],
        "checkpoint_keras": lambda: [keras.callbacks.ModelCheckpoint(
            str(folder / "best.keras"), monitor="val_loss", save_best_only=True)],
        "checkpoint_weights": lambda: [keras.callbacks.ModelCheckpoint(
            str(folder / "e{epoch}.weights.h5"), save_weights_only=True)],
        "reduce_lr": lambda: [keras.callbacks.ReduceLROnPlateau(
            monitor="loss", factor=0.5, patience=0, min_delta=10.0)],
        "scheduler": lambda: [keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.5)],
        "csv": lambda: [keras.callbacks.CSVLogger(str(folder / "log.csv"))],
        "lambda": lambda: [keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: (folder / f"lambda{e}.json").write_text(
                json.dumps({k: round(v, 5) for k, v in logs.items()})))],
    }[kind], folder


@pytest.mark.parametrize("kind", ["early_stopping", "checkpoint_keras", "checkpoint_weights",
                                  "reduce_lr", "scheduler", "csv", "lambda"])
def test_epoch_level_callbacks_do_what_they_do_in_model_fit(tmp_path, kind):
    x, y = data(100)
    results = {}
    for name in ("keras", "ours"):
        (tmp_path / name).mkdir()
        make, folder = epoch_callbacks(tmp_path / name, kind)
        model = regressor()
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
        if name == "ours":
            fastcustom.accelerate(model)
        history = model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                            validation_data=(x[:20], y[:20]), callbacks=make())
        files = {p.name: p for p in sorted(folder.iterdir())}
        results[name] = (model, history, files)
    (theirs, expected, their_files), (ours, got, our_files) = results["keras"], results["ours"]
    assert_same(theirs, ours, expected, got)
    assert sorted(our_files) == sorted(their_files)
    for file_name, path in our_files.items():
        if file_name.endswith(".keras"):
            mine, theirs_loaded = (keras.models.load_model(p) for p in
                                   (path, their_files[file_name]))
            assert_same(theirs_loaded, mine)
        elif file_name.endswith(".weights.h5"):
            mine, other = regressor(), regressor()
            mine.load_weights(path)
            other.load_weights(their_files[file_name])
            assert_same(other, mine)
        elif file_name.endswith(".csv"):
            rows = [list(csv.reader(open(p))) for p in (path, their_files[file_name])]
            assert rows[0][0] == rows[1][0]
            np.testing.assert_allclose(np.array(rows[0][1:], float), np.array(rows[1][1:], float),
                                       rtol=RTOL)
        else:
            mine, other = (json.loads(p.read_text()) for p in (path, their_files[file_name]))
            assert mine.keys() == other.keys()
            np.testing.assert_allclose(list(mine.values()), list(other.values()), rtol=1e-4)
    if kind == "early_stopping":
        assert len(got.history["loss"]) == 2
    if kind in ("reduce_lr", "scheduler"):   # halved after epochs 1-3 / before epochs 0-3
        halvings = 3 if kind == "reduce_lr" else 4
        np.testing.assert_allclose(float(ours.optimizer.learning_rate), 0.01 / 2 ** halvings,
                                   rtol=1e-6)


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_an_interrupted_run(tmp_path):
    x, y = data(100)

    def run(callbacks):
        model = regressor()
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        fastcustom.accelerate(model)
        return model, model.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                                callbacks=callbacks)

    uninterrupted, _ = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, Interrupt(1)])
    resumed, history = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert len(history.history["loss"]) == 2   # epochs 2 and 3 only
    assert_same(uninterrupted, resumed)


def test_tensorboard_writes_scalars_and_a_profile(tmp_path):
    x, y = data(200)
    _, ours = twins(regressor, optimizer="sgd", loss="mse")
    fastcustom.accelerate(ours, steps_per_call=2)
    ours.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y),
             callbacks=[keras.callbacks.TensorBoard(str(tmp_path), profile_batch=(2, 4))])
    tags = set()
    for path in glob.glob(str(tmp_path / "train" / "events*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert "epoch_loss" in tags
    assert glob.glob(str(tmp_path / "validation" / "events*"))
    assert glob.glob(str(tmp_path / "train" / "plugins" / "profile" / "*" / "*.xplane.pb"))


def test_the_progress_bar_shows_epochs_and_logs(capsys):
    x, y = data(64)
    _, ours = twins(regressor, optimizer="sgd", loss="mse", metrics=["mae"])
    ours.fit(x, y, batch_size=16, epochs=2, verbose=1)
    printed = capsys.readouterr().out
    assert "Epoch 2/2" in printed and "mae:" in printed and "4/4" in printed


# -- evaluate and predict ----------------------------------------------------------------
def test_evaluate_and_predict_match_keras():
    x, y = data(100)
    theirs, ours = twins(two_outputs, optimizer="sgd", loss={"a": "mse", "b": "mae"},
                         metrics={"a": ["mae"]})
    targets = {"a": y, "b": np.concatenate([y, y], axis=1)}
    expected = theirs.evaluate(x, targets, batch_size=16, verbose=0)
    got = ours.evaluate(x, targets, batch_size=16, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    assert ours.evaluate(x, targets, batch_size=16, verbose=0, return_dict=True).keys() == \
        theirs.evaluate(x, targets, batch_size=16, verbose=0, return_dict=True).keys()
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16)
    for inputs in (x, dataset):
        predicted, reference = ours.predict(inputs, verbose=0), theirs.predict(inputs, verbose=0)
        assert predicted.keys() == reference.keys()
        for name in reference:
            assert predicted[name].shape == reference[name].shape == (100, 1 + (name == "b"))
            np.testing.assert_allclose(predicted[name], reference[name], rtol=RTOL, atol=1e-7)


# -- accelerate itself -------------------------------------------------------------------
def test_accelerate_is_idempotent_and_leaves_saving_alone(tmp_path):
    x, y = data(64)
    plain = regressor()
    plain.compile(optimizer="sgd", loss="mse")
    plain.fit(x, y, verbose=0)
    plain.save(tmp_path / "plain.keras")
    accelerated = fastcustom.accelerate(fastcustom.accelerate(plain))
    assert accelerated is plain and fastcustom.training.is_accelerated(accelerated)
    accelerated.save(tmp_path / "accelerated.keras")
    configs = [json.loads(zipfile.ZipFile(tmp_path / f"{name}.keras").read("config.json"))
               for name in ("plain", "accelerated")]
    assert configs[0] == configs[1]
    loaded = keras.models.load_model(tmp_path / "accelerated.keras")
    assert type(loaded) is type(plain) and not fastcustom.training.is_accelerated(loaded)
    assert_same(plain, loaded)


def test_calls_the_loop_cannot_run_go_to_keras_with_one_warning():
    x, y = data(64)
    theirs, ours = twins(regressor, optimizer=lambda: keras.optimizers.SGD(0.05), loss="mse",
                         run_eagerly=True)
    with pytest.warns(UserWarning, match="runs eagerly") as caught:
        expected, got = fit_both(theirs, ours, x, y, batch_size=16, epochs=2)
        ours.fit(x, y, batch_size=16, epochs=0, verbose=0)
    assert sum("runs eagerly" in str(w.message) for w in caught) == 1
    assert_same(theirs, ours, expected, got)


def test_bad_input_is_refused_before_anything_compiles():
    x, y = data(20)
    _, ours = twins(regressor, optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="batch_size"):
        ours.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="cardinality"):
        ours.fit(x, y[:10], verbose=0)
    with pytest.raises(ValueError, match="validation_freq"):
        ours.fit(x, y, validation_data=(x, y), validation_freq="often", verbose=0)
    uncompiled = fastcustom.accelerate(regressor())
    with pytest.raises(ValueError, match="compile"):
        uncompiled.fit(x, y, verbose=0)
    assert "_fastcustom_loops" not in vars(ours)


@pytest.mark.parametrize("symbol", keras_internals.PRIVATE_SYMBOLS)
def test_every_private_keras_symbol_the_loop_uses_exists(symbol):
    module, _, name = symbol.rpartition(".")
    assert hasattr(importlib.import_module(module), name), symbol


def test_the_private_model_attributes_the_loop_uses_exist():
    model = regressor()
    model.compile(optimizer="sgd", loss="mse")
    for name in keras_internals.MODEL_ATTRIBUTES:
        assert hasattr(model, name), name
    assert keras_internals.overrides(model, "train_step") is False
    assert keras_internals.profile_window(keras.callbacks.TensorBoard(profile_batch=3)) == (3, 3)
    assert keras_internals.profile_window(keras.callbacks.TensorBoard()) is None
    assert not keras_internals.multi_worker(model.distribute_strategy)
    assert keras_internals.supports_xla(model)
