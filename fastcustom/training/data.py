"""The training data as device-resident tensors, and each epoch's batches.

An epoch's batches are formed once, before its first step: one `tf.gather` by
the epoch's permutation, then a reshape of the first `steps * batch_size` rows
into `[steps, batch_size, ...]` so that step `i` reads the contiguous slice
`batches[i]`, plus the `n % batch_size` rows left over (the smaller last step
`model.fit` takes too). That happens at the start of the compiled call when it
runs the whole epoch, else in one graph call before the epoch's calls; never
row by row inside the step loop, which is what makes such loops slow.

The batch order is the one `fastcustom.reference.training_loop` documents:
one `np.random.default_rng(seed)` per training run, `rng.permutation(n)` per
epoch when shuffling, `arange(n)` otherwise.

>>> import numpy as np
>>> x = as_tensors(np.arange(10.0).reshape(5, 2), "x")
>>> full, tail = epoch_batches(x, order=None, batch_size=2)
>>> full.shape, tail.shape
(TensorShape([2, 2, 2]), TensorShape([1, 2]))
"""

import keras
import tensorflow as tf


def as_tensors(data, name):
    """`data` (an array, tensor or a nest of them) as tensors of rank >= 1.

    float64 arrays become `keras.backend.floatx()`, as in `model.fit`. The
    tensors are placed on the default device (the GPU when there is one),
    where they stay for the whole run.
    """
    leaves = tf.nest.flatten(data)
    if not leaves:
        raise ValueError(f"`{name}` is empty: it holds no arrays.")
    tensors = []
    for leaf in leaves:
        if leaf is None:
            raise ValueError(f"`{name}` must be an array or a nest of arrays, got None.")
        try:
            tensor = tf.convert_to_tensor(leaf)
        except (TypeError, ValueError) as err:
            raise ValueError(f"`{name}` could not be converted to a tensor: {err}") from None
        if tensor.dtype == tf.float64:
            tensor = tf.cast(tensor, keras.backend.floatx())
        if tensor.shape.rank == 0:
            raise ValueError(f"`{name}` must have a leading samples axis, got a scalar.")
        tensors.append(tf.identity(tensor))
    return tf.nest.pack_sequence_as(data, tensors)


def count_samples(x, y, what="training data"):
    """The number of samples: the common leading dimension of every array in x and y."""
    counts = {name: {int(t.shape[0]) for t in tf.nest.flatten(arrays)}
              for name, arrays in (("x", x), ("y", y))}
    for name, sizes in counts.items():
        if len(sizes) > 1:
            raise ValueError(f"The arrays of {what} `{name}` have different numbers of "
                             f"samples: {sorted(sizes)}.")
    (n_x,), (n_y,) = counts["x"], counts["y"]
    if n_x != n_y:
        raise ValueError(f"x and y of the {what} have different numbers of samples: "
                         f"x has {n_x}, y has {n_y}.")
    if n_x == 0:
        raise ValueError(f"The {what} is empty: x and y have 0 samples.")
    return n_x


def first_rows(data, count):
    """The first `count` samples of every array in `data`."""
    return tf.nest.map_structure(lambda t: t[:count], data)


def epoch_order(rng, num_samples, shuffle):
    """This epoch's order: `rng.permutation(n)` as an int32 tensor when shuffling, else None."""
    return tf.constant(rng.permutation(num_samples), tf.int32) if shuffle else None


def epoch_batches(data, order, batch_size):
    """(full, tail): `data` in `order` as `[steps, batch_size, ...]` and the leftover rows.

    `order` is an int32 tensor of sample indices, or None for the stored
    order; `tail` is None when `batch_size` divides the number of samples.
    """
    if order is not None:
        data = tf.nest.map_structure(lambda t: tf.gather(t, order), data)
    num_samples = int(tf.nest.flatten(data)[0].shape[0])
    steps, leftover = divmod(num_samples, batch_size)
    cut = steps * batch_size

    def full_batches(t):
        return tf.reshape(t[:cut], [steps, batch_size] + t.shape[1:].as_list())

    full = tf.nest.map_structure(full_batches, data)
    tail = tf.nest.map_structure(lambda t: t[cut:], data) if leftover else None
    return full, tail


# One graph call per epoch instead of a dozen eager ops (a few ms on a small CPU).
epoch_batches_graph = tf.function(epoch_batches, autograph=False)


def split_for_replicas(strategy, data, axis):
    """`data` split along `axis` into one part per replica, each on its replica's device.

    Returns per-replica values for `strategy.run`: each replica gets a
    contiguous block of every batch, the first ones a row more when the batch
    does not divide evenly.
    """
    replicas = strategy.num_replicas_in_sync
    devices = strategy.extended.worker_devices

    def parts(t):
        size = int(t.shape[axis])
        sizes = [size // replicas + (1 if r < size % replicas else 0) for r in range(replicas)]
        return tf.split(t, sizes, axis=axis)

    flat_parts = [parts(t) for t in tf.nest.flatten(data)]

    def value_for(context):
        replica = context.replica_id_in_sync_group
        with tf.device(devices[replica]):
            return tf.nest.pack_sequence_as(
                data, [tf.identity(leaf_parts[replica]) for leaf_parts in flat_parts])

    return strategy.experimental_distribute_values_from_function(value_for)


class FitData:
    """The training (or validation) x and y of a `fit` run on the device, and their batches.

    `steps` per epoch: `full_steps` of `batch_size` and, when `has_tail`, a
    smaller last one. Under a strategy with several replicas, `batches` are
    split per replica. Batches in the stored order are formed once and kept.
    """

    def __init__(self, x, y, batch_size, strategy, validation=False):
        prefix = "validation " if validation else ""
        self.x, self.y = as_tensors(x, prefix + "x"), as_tensors(y, prefix + "y")
        self.batch_size, self.strategy = batch_size, strategy
        self.num_samples = count_samples(self.x, self.y, prefix + "data" if validation
                                         else "training data")
        self.full_steps, leftover = divmod(self.num_samples, batch_size)
        self.has_tail = leftover > 0
        self.steps = self.full_steps + int(self.has_tail)
        self._unshuffled = None

    def batches(self, order=None):
        """(full, tail): (x, y) as `[steps, batch, ...]` and the leftover rows (or None)."""
        if order is None and self._unshuffled is not None:
            return self._unshuffled
        full, tail = epoch_batches_graph((self.x, self.y), order, self.batch_size)
        if self.strategy.num_replicas_in_sync > 1:
            full = split_for_replicas(self.strategy, full, axis=1)
            tail = None if tail is None else split_for_replicas(self.strategy, tail, axis=0)
        if order is None:
            self._unshuffled = (full, tail)
        return full, tail

    def call_ranges(self, steps_per_call):
        """[(start, stop, with_tail)]: the full batches each call runs; the tail in the last."""
        per_call = steps_per_call or self.steps
        ranges = []
        for first in range(0, self.steps, per_call):
            last = min(first + per_call, self.steps)
            ranges.append((first, min(last, self.full_steps), self.has_tail and last == self.steps))
        return ranges
