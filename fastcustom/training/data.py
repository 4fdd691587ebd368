"""The data of a `fit`, `evaluate` or `predict` call as `[steps, batch, ...]` tensors.

Two sources, one output: chunks `(full, start, stop, tail)`, the data of
`steps` batches stacked on a new leading axis, the steps `start .. stop - 1` of
it to run in one compiled call, and a smaller last batch or None. The data are
Keras's packed `(x, y, sample_weight)` tuples, as its steps take them.

- `ArrayData`: arrays and tensors (what Keras's `ArrayDataAdapter` takes, which
  checks them, turns `class_weight` into sample weights and replicates one
  `sample_weight` over several outputs), moved to the device once. An epoch's
  batches are one `tf.gather` by its permutation and a reshape of the first
  `steps * batch_size` rows, plus the `n % batch_size` rows left over; that
  happens inside the compiled call when it runs the whole epoch.
- `StreamData`: a `tf.data.Dataset`, a generator or a `keras.utils.PyDataset`,
  through Keras's own data adapter. tf.data stacks `window` consecutive
  batches (`padded_batch`, with each batch's row count) so that one compiled
  call runs them; the data set is never held whole.

Shuffling arrays: one `np.random.default_rng(seed)` per `fit`, `rng.permutation(n)`
per epoch (`fastcustom.baselines.training_loop` documents the same order).

>>> import numpy as np
>>> x = as_tensors(np.arange(10.0).reshape(5, 2), "x")
>>> full, tail = epoch_batches(x, order=None, batch_size=2)
>>> full.shape, tail.shape
(TensorShape([2, 2, 2]), TensorShape([1, 2]))
"""

import warnings

import keras
import tensorflow as tf

from fastcustom.training import keras_internals


def map_arrays(fn, data):
    """`fn` on every tensor of the nest `data`, keeping its None entries."""
    return tf.nest.map_structure(lambda t: None if t is None else fn(t), data)


def as_tensors(data, name):
    """`data` (an array, tensor or a nest of them) as tensors of rank >= 1 on the device.

    float64 arrays become `keras.backend.floatx()`, as in `model.fit`. The
    tensors stay on the default device (the GPU when there is one) for the run.
    """
    def convert(leaf):
        try:
            tensor = tf.convert_to_tensor(leaf)
        except (TypeError, ValueError) as err:
            raise ValueError(f"`{name}` could not be converted to a tensor: {err}") from None
        if tensor.dtype == tf.float64:
            tensor = tf.cast(tensor, keras.backend.floatx())
        if tensor.shape.rank == 0:
            raise ValueError(f"`{name}` must have a leading samples axis, got a scalar.")
        return tf.identity(tensor)

    return map_arrays(convert, data)


def epoch_order(rng, num_samples, shuffle):
    """This epoch's order: `rng.permutation(n)` as an int32 tensor when shuffling, else None."""
    return tf.constant(rng.permutation(num_samples), tf.int32) if shuffle else None


def epoch_batches(data, order, batch_size):
    """(full, tail): `data` in `order` as `[steps, batch_size, ...]` and the leftover rows.

    `order` is an int32 tensor of sample indices, or None for the stored
    order; `full` is None when there is no full batch, `tail` when
    `batch_size` divides the number of samples.
    """
    if order is not None:
        data = map_arrays(lambda t: tf.gather(t, order), data)
    num_samples = int(next(t for t in tf.nest.flatten(data) if t is not None).shape[0])
    steps, leftover = divmod(num_samples, batch_size)
    cut = steps * batch_size
    full = map_arrays(lambda t: tf.reshape(t[:cut], [steps, batch_size, *t.shape[1:]]),
                      data) if steps else None
    tail = map_arrays(lambda t: t[cut:], data) if leftover else None
    return full, tail


# One graph call per epoch instead of a dozen eager ops.
epoch_batches_graph = tf.function(epoch_batches, autograph=False)


def replica_rows(batch_size, replicas):
    """(first, stop) rows of each replica's part of a batch of `batch_size` rows.

    Contiguous blocks, the first replicas a row more when the batch does not
    divide evenly, as `tf.distribute` splits a batch.

    >>> replica_rows(5, 2)
    [(0, 3), (3, 5)]
    """
    sizes = [batch_size // replicas + (1 if r < batch_size % replicas else 0)
             for r in range(replicas)]
    stops = [sum(sizes[:r + 1]) for r in range(replicas)]
    return [(stop - size, stop) for size, stop in zip(sizes, stops)]


def replica_batches(strategy, data, order, batch_size):
    """(full, tail) as per-replica values: each replica gathers its own rows of every batch.

    The global batches are those of `epoch_batches` (`batch_size` rows in
    `order`); replica `r` of `num_replicas_in_sync` takes its `replica_rows`
    block of each, by sample index, on its own device. Under
    `MultiWorkerMirroredStrategy` every worker holds the same arrays and the
    same `order`, and forms only its own replicas' parts (the strategy calls
    the value function for the local replicas, with their global ids), so the
    workers together run exactly the global batches one device would.
    """
    num_samples = int(next(t for t in tf.nest.flatten(data) if t is not None).shape[0])
    steps, leftover = divmod(num_samples, batch_size)
    indices = tf.range(num_samples) if order is None else order
    full_indices = tf.reshape(indices[:steps * batch_size], [steps, batch_size])
    tail_indices = indices[steps * batch_size:]
    replicas = strategy.num_replicas_in_sync
    devices = strategy.extended.worker_devices   # this worker's devices only

    def per_replica(indices_of, size):
        if not size:
            return None

        def value_for(context):
            replica = context.replica_id_in_sync_group          # global id
            first, stop = replica_rows(size, replicas)[replica]
            with tf.device(devices[replica % len(devices)]):     # its local device
                rows = indices_of(first, stop)
                return map_arrays(lambda t: tf.gather(t, rows), data)

        return strategy.experimental_distribute_values_from_function(value_for)

    full = per_replica(lambda first, stop: full_indices[:, first:stop], batch_size * (steps > 0))
    tail = per_replica(lambda first, stop: tail_indices[first:stop], leftover)
    return full, tail


class ArrayData:
    """Arrays or tensors on the device, batched per epoch.

    `steps` per epoch: `full_steps` of `batch_size` and, when `has_tail`, a
    smaller last one.
    """

    def __init__(self, x, y=None, sample_weight=None, batch_size=None, class_weight=None,
                 what="training data"):
        adapter = keras_internals.ArrayDataAdapter(x, y, sample_weight=sample_weight,
                                                   batch_size=batch_size,
                                                   class_weight=class_weight)
        self.data = as_tensors(adapter._inputs, what)
        self.num_samples = int(adapter._num_samples)
        self.batch_size = int(adapter.batch_size)
        self.full_steps, leftover = divmod(self.num_samples, self.batch_size)
        self.has_tail = leftover > 0
        self.steps = self.full_steps + int(self.has_tail)
        self._unshuffled = None

    def batches(self, order, strategy):
        """(full, tail) in `order` (None: the stored order, formed once and kept)."""
        if order is None and self._unshuffled is not None:
            return self._unshuffled
        if strategy.num_replicas_in_sync > 1:
            full, tail = replica_batches(strategy, self.data, order, self.batch_size)
        else:
            full, tail = epoch_batches_graph(self.data, order, self.batch_size)
        if order is None:
            self._unshuffled = (full, tail)
        return full, tail

    def chunks(self, order, strategy, steps_per_call):
        """[(full, start, stop, tail)]: an epoch as calls of `steps_per_call` steps."""
        full, tail = self.batches(order, strategy)
        per_call = steps_per_call or self.steps
        chunks = []
        for first in range(0, self.steps, per_call):
            last = min(first + per_call, self.steps)
            with_tail = self.has_tail and last == self.steps
            chunks.append((full, first, min(last, self.full_steps), tail if with_tail else None))
        return chunks


def _has_static_rows(spec):
    """Whether every tensor of an element spec has a known shape past its batch axis."""
    return all(isinstance(s, tf.TensorSpec) and s.shape.rank is not None
               and s.shape[1:].is_fully_defined() for s in tf.nest.flatten(spec))


class StreamData:
    """A data set, generator or PyDataset read `window` batches at a time.

    `why_not` says why the stream cannot be stacked (a tensor whose shape past
    the batch axis varies, a sparse or ragged one); `fit` then hands the call
    back to Keras.
    """

    def __init__(self, x, y=None, sample_weight=None, batch_size=None, steps_per_epoch=None,
                 shuffle=False, class_weight=None, window=32):
        self.adapter = keras_internals.get_data_adapter(
            x, y, sample_weight=sample_weight, batch_size=batch_size,
            steps_per_epoch=steps_per_epoch, shuffle=shuffle, class_weight=class_weight)
        self.steps_per_epoch = steps_per_epoch
        self.steps = steps_per_epoch or self.adapter.num_batches
        dataset = self.adapter.get_tf_dataset()
        self.why_not = None if _has_static_rows(dataset.element_spec) else (
            f"its batches' shapes past the batch axis are not fixed ({dataset.element_spec})")
        if self.why_not:
            return

        def with_rows(*element):
            rows = tf.shape(next(t for t in tf.nest.flatten(element)))[0]
            return element, rows

        self._windows = dataset.map(with_rows).padded_batch(window)
        self._iterator = None
        self._pending = []
        self.ran_out = False

    def _runs(self):
        """(full, rows, tail) from each window: consecutive batches of one size, stacked."""
        for window, rows in self._iterator:
            rows = rows.numpy()
            first = 0
            while first < len(rows):
                last = first
                while last < len(rows) and rows[last] == rows[first]:
                    last += 1
                size = int(rows[first])
                full = window if (first, last, size) == (0, len(rows), window_rows(window)) else (
                    map_arrays(lambda t, f=first, la=last, s=size: t[f:la, :s], window))
                tail = None
                if last == len(rows) - 1 and rows[last] < size:
                    tail = map_arrays(lambda t, la=last, s=int(rows[last]): t[la, :s], window)
                    last += 1
                yield full, tail
                first = last

    def epoch_chunks(self):
        """This epoch's (full, start, stop, tail): `steps_per_epoch` steps, or the data's.

        With `steps_per_epoch` the stream goes on where the last epoch stopped,
        as in Keras; without, each epoch reads it anew.
        """
        self.adapter.on_epoch_begin()
        if self._iterator is None or self.steps_per_epoch is None:
            self._iterator = iter(self._windows)
            self._pending = []
            self._run_iterator = self._runs()
        remaining = self.steps_per_epoch or float("inf")
        while remaining > 0:
            if self._pending:
                full, start, tail = self._pending.pop()
            else:
                try:
                    (full, tail), start = next(self._run_iterator), 0
                except StopIteration:
                    self._iterator = None
                    if self.steps_per_epoch is not None:
                        self.ran_out = True
                        warnings.warn("Your input ran out of data; interrupting training. Make "
                                      "sure that your dataset or generator can generate at "
                                      "least `steps_per_epoch * epochs` batches.", stacklevel=3)
                    break
            stop = window_steps(full)
            if stop - start + (tail is not None) > remaining:
                take = int(remaining)
                self._pending.append((full, start + take, tail))
                stop, tail = start + take, None
            remaining -= stop - start + (tail is not None)
            yield full, start, stop, tail
        self.adapter.on_epoch_end()


def window_steps(full):
    """The number of stacked batches in `full` (0 for None)."""
    return 0 if full is None else int(next(t for t in tf.nest.flatten(full)
                                           if t is not None).shape[0])


def window_rows(full):
    """The rows of each stacked batch in `full`."""
    return int(next(t for t in tf.nest.flatten(full) if t is not None).shape[1])
