"""Run as a script: trains one model on one device and under a two-CPU MirroredStrategy.

`python mirrored_fit_check.py model.fit` trains the model of every component with Keras's
`model.fit` (graph mode); `python mirrored_fit_check.py fastcustom.fit` trains a small Keras
regressor with `fastcustom.fit`, with validation. Prints one JSON line: the logical devices
and, for "single" and "mirrored", the history, how the loop was compiled and the final
weights. Logical devices must be configured before TensorFlow initializes, hence a process
of its own (tests/test_fit.py and tests/test_training.py compare the two runs).
"""

import contextlib
import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import fastcustom  # noqa: E402
from conftest import make_everything_model, make_regression_data, make_small_regressor  # noqa: E402


def with_model_fit(strategy):
    """Every component, SGD, `model.fit` without XLA: Keras 3.15's own Dense fails with
    jit_compile=True under a MirroredStrategy over logical CPUs ("Trying to access resource
    ... located in device CPU:1 from device CPU:0"), so that combination is not ours."""
    x, y = make_regression_data(n=512)
    with strategy.scope():
        model = make_everything_model(noise=0.0)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=fastcustom.HuberLoss(1.0),
                      metrics=[fastcustom.HuberMetric(1.0)], jit_compile=False)
    history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    return model, history


def with_fastcustom_fit(strategy, initial_weights):
    """The small regressor, Nadam, `fastcustom.fit` with validation; batches of 32 over 200
    samples split 16 + 16 per replica, the last step of 8 as 4 + 4."""
    x, y = make_regression_data(n=200)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = make_small_regressor()
        model.set_weights(initial_weights)
        optimizer, metric = keras.optimizers.Nadam(0.01), fastcustom.HuberMetric()
    history = fastcustom.fit(model, x, y, loss=fastcustom.HuberLoss(), optimizer=optimizer,
                             metrics=[metric], epochs=2, seed=0, validation_data=(x, y),
                             verbose=0)
    return model, history


def main(trainer):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    mirrored = tf.distribute.MirroredStrategy(devices)
    if trainer == "model.fit":
        runs = {"single": with_model_fit(tf.distribute.OneDeviceStrategy(devices[0])),
                "mirrored": with_model_fit(mirrored)}
    elif trainer == "fastcustom.fit":
        initial = make_small_regressor().get_weights()
        runs = {"single": with_fastcustom_fit(None, initial),
                "mirrored": with_fastcustom_fit(mirrored, initial)}
    else:
        raise SystemExit(f"usage: {sys.argv[0]} model.fit | fastcustom.fit")
    report = {"devices": devices}
    for name, (model, history) in runs.items():
        report[name] = {"history": history.history,
                        "compiled_with": history.params.get("compiled_with"),
                        "weights": [w.tolist() for w in model.get_weights()]}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
