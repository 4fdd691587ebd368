"""What one compiled call reads: a window of consecutive batches.

Two kinds, one interface (`steps`, `batch(i)`, `tail_batch(tail)`), both plain nests
that pass through `tf.function` as arguments:

- `Indexed`: arrays on the device, batch `i` the rows `order[i * B:(i + 1) * B]`,
  gathered inside the compiled call when the step reads them (nothing is copied
  per epoch: an epoch's order is `n` indices), or the stored rows `i * B...` when
  `order` is None, as in a stream's window (its batches' rows, concatenated as they
  were read); its tail is the rows after the last full batch.
- `Stacked`: per-replica values under several replicas, batches stacked on a new
  leading axis (`[steps, batch, ...]`); its tail, a smaller last batch, is a tensor of
  its own.

Each step sees its batch with the batch axis of unknown static size, as Keras's data
sets give it (`as_keras_batch`).
"""

from typing import Any, NamedTuple

import tensorflow as tf


def map_arrays(fn, data):
    """`fn` on every tensor of the nest `data`, keeping its None entries."""
    return tf.nest.map_structure(lambda t: None if t is None else fn(t), data)


def batch_spec(data, rows):
    """The `tf.TensorSpec`s of a batch of `rows` rows (None: any number) of the arrays
    `data`, from their shapes alone.

    >>> batch_spec((tf.zeros([100, 8]), None), 32)
    (TensorSpec(shape=(32, 8), dtype=tf.float32, name=None), None)
    """
    return map_arrays(lambda t: tf.TensorSpec([rows, *t.shape[1:]], t.dtype), data)


def first_tensor(data):
    """The first tensor of the nest `data` (of the first replica, for per-replica values)."""
    return next(t for t in tf.nest.flatten(data, expand_composites=True) if t is not None)


def as_keras_batch(batch):
    """`batch` with its batch axis of unknown static size, as Keras's data sets give it.

    Keras's step reads static shapes in places (the per-output loss trackers weight
    a batch by `y_pred.shape[0]`, and by nothing when it is None), so the step must
    see what it sees in `model.fit`; XLA still compiles the real sizes.
    """
    return map_arrays(lambda t: tf.raw_ops.PlaceholderWithDefault(
        input=t, shape=[None, *t.shape[1:]]), batch)


class Indexed(NamedTuple):
    """Arrays `data` (a nest of `[n, ...]` tensors), batched by `order` (int32 `[n]`, or
    None for the stored order) in batches of `batch_size` rows."""

    data: Any
    order: Any
    batch_size: int

    @property
    def num_samples(self):
        return int(first_tensor(self.data).shape[0])

    @property
    def steps(self):
        """The full batches."""
        return self.num_samples // self.batch_size

    def _rows(self, first, size):
        if self.order is None:
            return map_arrays(lambda t: tf.slice(
                t, tf.concat([[first], tf.zeros([t.shape.rank - 1], tf.int32)], 0),
                [size, *t.shape[1:]]), self.data)
        indices = tf.slice(self.order, [first], [size])
        return map_arrays(lambda t: tf.gather(t, indices), self.data)

    def batch(self, index):
        """Full batch `index` (a scalar tensor) as the step reads it."""
        return as_keras_batch(self._rows(index * self.batch_size, self.batch_size))

    @property
    def tail_rows(self):
        """The rows after the last full batch (0: none)."""
        return self.num_samples - self.steps * self.batch_size

    def tail_batch(self, tail):
        """The rows after the last full batch (`tail` is True when there are some)."""
        return as_keras_batch(self._rows(self.num_samples - self.tail_rows, self.tail_rows))


class Stacked(NamedTuple):
    """Batches stacked on a new leading axis: a nest of `[steps, batch, ...]` tensors (or
    per-replica values of them)."""

    batches: Any

    @property
    def steps(self):
        return 0 if self.batches is None else int(first_tensor(self.batches).shape[0])

    def batch(self, index):
        return as_keras_batch(map_arrays(lambda t: t[index], self.batches))

    def tail_batch(self, tail):
        return as_keras_batch(tail)

