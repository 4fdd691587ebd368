"""Run as a script: fits one model on one device and under a two-CPU MirroredStrategy.

Prints a JSON line with both runs' losses, metrics and final weights' digest so
tests/test_fit.py can compare them. Logical devices must be configured before
TensorFlow initializes, hence a separate process.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fastcustom  # noqa: E402
from models_for_tests import everything_model, regression_data  # noqa: E402


def run(strategy, jit_compile):
    x, y = regression_data(n=512)
    with strategy.scope():
        model = everything_model(noise=0.0)
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=fastcustom.HuberLoss(1.0),
                      metrics=[fastcustom.HuberMetric(1.0)], jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    return {"loss": history.history["loss"], "metric": history.history["huber_metric"],
            "weights": [float(np.sum(w)) for w in model.get_weights()]}


if __name__ == "__main__":
    jit = sys.argv[1] == "jit"
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    print(json.dumps({"devices": devices,
                      "single": run(tf.distribute.OneDeviceStrategy(devices[0]), jit),
                      "mirrored": run(tf.distribute.MirroredStrategy(devices), jit)}))
