"""The notes' custom training loop: eager, one Python iteration per batch, GradientTape.

The baseline `fastcustom.fit` is checked against (same weights after the same
steps) and benchmarked against. Slow on purpose: every step is dozens of eager
op dispatches from Python.

Batch order, shared with `fastcustom.fit`: one `np.random.default_rng(seed)`
per run; each epoch takes `rng.permutation(n)` when shuffling (else `0..n-1`)
and cuts it into batches of `batch_size`, the last one smaller.

>>> import keras, numpy as np
>>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
>>> logs = train_eagerly(model, x, x[:, :1], loss_fn=keras.losses.MeanSquaredError(),
...                      optimizer=keras.optimizers.SGD(0.1), batch_size=16, epochs=2, seed=0)
>>> len(logs["loss"]), logs["steps"]
(2, 8)
"""

import keras
import numpy as np
import tensorflow as tf


def train_eagerly(model, x, y, *, loss_fn, optimizer, metrics=(), batch_size=32, epochs=1,
                  shuffle=True, seed=None, max_steps=None):
    """Train `model` eagerly, batch by batch; returns {"loss": [...], name: [...], "steps": n}.

    Per epoch, `loss` is the mean of the batch losses weighted by batch size and
    each metric its result (both reset per epoch), as `model.fit` reports them.
    `max_steps` stops early (the last epoch's logs cover the steps it ran).
    """
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    mean_loss = keras.metrics.Mean(name="loss")
    logs = {"loss": [], **{metric.name: [] for metric in metrics}}
    steps = 0
    for _ in range(epochs):
        order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
        for start in range(0, len(x), batch_size):
            if max_steps is not None and steps >= max_steps:
                break
            batch = order[start:start + batch_size]
            x_batch, y_batch = x[batch], y[batch]
            with tf.GradientTape() as tape:
                y_pred = model(x_batch, training=True)
                main_loss = tf.reduce_mean(loss_fn(y_batch, y_pred))
                loss = tf.add_n([main_loss] + model.losses)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            mean_loss.update_state(loss, sample_weight=len(batch))
            for metric in metrics:
                metric.update_state(y_batch, y_pred)
            steps += 1
        logs["loss"].append(float(mean_loss.result()))
        for metric in metrics:
            logs[metric.name].append(float(metric.result()))
        for metric in [mean_loss, *metrics]:
            metric.reset_state()
    logs["steps"] = steps
    return logs
