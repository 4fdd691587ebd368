"""The accelerated loop's one seam to Keras's private trainer code: every private Keras
symbol or attribute the loop uses is reached here and nowhere else.

Keras keeps these private (underscored, or under `keras.src`), but they are what
`model.fit` itself runs; calling them, rather than copying them, keeps the loop on
Keras's semantics (its data adapters and their conversions and errors, its epoch
bookkeeping, its compiled loss and metrics). This module is imported only when a
loop runs (`accelerate`, `fit`, `evaluate`, `predict`), never by `import fastcustom`,
a component or `keras.models.load_model`, so a Keras release that moves one of these
breaks the accelerated loop at most. `tests/test_accelerate.py` checks every name in
`PRIVATE_SYMBOLS` and `MODEL_ATTRIBUTES` exists.
"""

import keras
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer, reduce_per_replica
from keras.src.trainers.data_adapters import array_slicing, data_adapter_utils
from keras.src.trainers.data_adapters.array_data_adapter import (ArrayDataAdapter,
                                                                 can_convert_arrays)
from keras.src.trainers.epoch_iterator import EpochIterator
from keras.src.trainers.trainer import model_supports_jit
from keras.src.utils import is_default as _is_default
from keras.src.utils.python_utils import pythonify_logs

# The private modules and names imported above, for the test that checks they exist.
PRIVATE_SYMBOLS = (
    "keras.src.backend.tensorflow.trainer.TensorFlowTrainer",
    "keras.src.backend.tensorflow.trainer.reduce_per_replica",
    "keras.src.trainers.data_adapters.array_slicing.convert_to_sliceable",
    "keras.src.trainers.data_adapters.array_slicing.train_validation_split",
    "keras.src.trainers.data_adapters.data_adapter_utils.unpack_x_y_sample_weight",
    "keras.src.trainers.data_adapters.array_data_adapter.ArrayDataAdapter",
    "keras.src.trainers.data_adapters.array_data_adapter.can_convert_arrays",
    "keras.src.trainers.epoch_iterator.EpochIterator",
    "keras.src.trainers.trainer.model_supports_jit",
    "keras.src.utils.is_default",
    "keras.src.utils.python_utils.pythonify_logs",
)
# The private attributes of a compiled Keras model the loop reads or calls.
MODEL_ATTRIBUTES = ("_compile_loss", "_compile_metrics", "_assert_compile_called",
                    "_symbolic_build", "_should_eval", "_initial_epoch",
                    "_flatten_metrics_in_order", "_get_metrics_result_or_logs")

__all__ = ["can_convert_arrays", "pythonify_logs", "reduce_per_replica"]


# -- the model ---------------------------------------------------------------------------
def overrides(model, *methods):
    """Whether the model's class replaces any of Keras's TF trainer `methods`."""
    return any(getattr(type(model), name) is not getattr(TensorFlowTrainer, name)
               for name in methods)


def compile_loss(model):
    """The `CompileLoss` `model.compile` built (None when compiled without a loss, or never)."""
    return getattr(model, "_compile_loss", None)


def compile_metrics(model):
    """The `CompileMetrics` `model.compile` built (None without metrics, or never compiled)."""
    return getattr(model, "_compile_metrics", None)


def assert_compiled(model, method):
    """Keras's error for `fit` / `evaluate` before `compile`."""
    model._assert_compile_called(method)


def symbolic_build(model, data_batch):
    """Build the model, compiled loss, metrics and optimizer from one batch, as `fit` does."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def should_eval(model, epoch, validation_freq):
    """Whether `fit` validates after `epoch` (Keras's reading of `validation_freq`)."""
    return model._should_eval(epoch, validation_freq)


def initial_epoch(model, initial_epoch):
    """The epoch to start at: the one `BackupAndRestore` restored, else `initial_epoch`."""
    return model._initial_epoch or initial_epoch


def set_initial_epoch(model, epoch):
    """What `BackupAndRestore` sets on restoring: the epoch `fit` resumes at."""
    model._initial_epoch = epoch


def metrics_in_order(model, logs):
    """`evaluate(return_dict=False)`'s list: the logs in the order of `model.metrics_names`."""
    return model._flatten_metrics_in_order(logs)


def metrics_result_or_logs(model, logs):
    """The epoch's logs as `fit` reports them: the model's metric results, unless the
    step's own logs have other keys (a custom `train_step`)."""
    return model._get_metrics_result_or_logs(logs)


def supports_xla(model):
    """Keras's own answer to whether XLA may compile the model's steps: every layer
    supports it, op determinism is off (it disables XLA), XLA runs on this platform."""
    return model_supports_jit(model)


def multi_worker(strategy):
    """Whether `strategy` spans several workers (processes), as MultiWorkerMirroredStrategy."""
    return strategy.extended._in_multi_worker_mode()


# -- callbacks ---------------------------------------------------------------------------
def is_default(method):
    """Whether a callback's hook is `keras.callbacks.Callback`'s own (does nothing)."""
    return _is_default(method)


def profile_window(tensorboard):
    """The (first, last) batches a `keras.callbacks.TensorBoard` traces, or None."""
    if tensorboard._start_batch > 0:
        return tensorboard._start_batch, tensorboard._stop_batch
    return None


def tensorboard_profiles(tensorboard, on):
    """Let a `keras.callbacks.TensorBoard` start and stop its profile in its batch hooks
    (`on`), or not (the accelerated loop does it)."""
    tensorboard._should_trace = on


def start_tensorboard_trace(tensorboard):
    """The callback's own start of its profile (the profiler, into its `train` folder)."""
    tensorboard._start_trace()


def stop_tensorboard_trace(tensorboard, batch):
    """The callback's own end of its profile (the trace saved, named after `batch`)."""
    tensorboard._stop_trace(batch=batch)


def set_tensorboard_batch(tensorboard, batch):
    """Set the batch counter a `keras.callbacks.TensorBoard` steps its summaries and its
    profile window by (it adds one in `on_train_batch_begin`)."""
    tensorboard._global_train_batch = batch


# -- data --------------------------------------------------------------------------------
def unpack_x_y_sample_weight(data):
    """(x, y, sample_weight) of a data tuple, as Keras's steps unpack it."""
    return data_adapter_utils.unpack_x_y_sample_weight(data)


def train_validation_split(arrays, validation_split):
    """Keras's `validation_split`: the last fraction of the arrays, not shuffled."""
    return array_slicing.train_validation_split(arrays, validation_split=validation_split)


def array_inputs(x, y=None, sample_weight=None, batch_size=None, class_weight=None):
    """(inputs, num_samples, batch_size) of arrays as `model.fit` takes them: Keras's
    `ArrayDataAdapter` checks them (cardinality, weight structures), turns `class_weight`
    into sample weights and packs `(x, y, sample_weight)`; its conversion makes them
    TensorFlow-ready as the data set it would build does (float64 and float16 to
    `floatx`, strings and objects refused with its error)."""
    adapter = ArrayDataAdapter(x, y, sample_weight=sample_weight, batch_size=batch_size,
                               class_weight=class_weight)
    inputs = array_slicing.convert_to_sliceable(adapter._inputs, target_backend="tensorflow")
    return inputs, int(adapter._num_samples), int(adapter.batch_size)


class StreamEpochIterator(EpochIterator):
    """Keras's `EpochIterator` (its adapter, its `iter()` and `on_epoch_begin/end` points,
    its step accounting, `steps_per_epoch` carried across epochs) over the adapter's data
    set, as `model.fit` iterates it on one device (`dataset`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dataset = self.data_adapter.get_tf_dataset()

    def _get_iterator(self):
        return self.dataset

    def epoch_steps(self):
        """This epoch's steps as Keras enumerates them: (step, iterator) per step, each
        before that step's batch is read; the epoch's bookkeeping when exhausted."""
        self._epoch_iterator = self._enumerate_iterator()
        for pulled in self._epoch_iterator:   # (step, iterator); Keras 3.11+: (step, end, it)
            yield pulled[0], pulled[-1]
