"""A multi-worker `fit`'s callbacks: only the chief writes, and backups are atomic.

TensorFlow's rule for `MultiWorkerMirroredStrategy`: every worker runs the
same saving code (reading a variable may be a collective), but only the chief
writes where the user asked; the others write to temporary folders they
remove. `for_this_worker` applies it to the callbacks of one `fit`:

- `keras.callbacks.BackupAndRestore` becomes `AtomicBackupAndRestore`: each
  backup is a new weights file, then a small `state.json` naming it, replaced
  atomically (`os.replace`), so a worker killed while one is written leaves
  the previous backup whole. Every worker restores from the chief's
  `backup_dir` (one machine, or storage all hosts see: NFS, GCS).
- `ModelCheckpoint`, `TensorBoard` and `CSVLogger` write to a temporary
  folder on the other workers, removed when training ends.
- The progress bar prints on the chief only.

>>> callbacks, verbose = for_this_worker([keras.callbacks.BackupAndRestore("/tmp/b")], "auto",
...                                     strategy)      # in a multi-worker `fit`
"""

import contextlib
import copy
import glob
import json
import os
import shutil
import tempfile

import keras

STATE_FILE = "state.json"


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """`keras.callbacks.BackupAndRestore`, written so that no kill leaves a broken backup.

    At every epoch end (or every `save_freq` batches) it saves the model's and
    optimizer's weights to `epoch-E-batch-B.weights.h5`, then commits it by
    replacing `state.json` ({"epoch", "batch", "weights"}) in one `os.replace`;
    older weight files go after. At train begin it loads the committed weights
    and the epoch to start at. `is_chief=False`: writes to a temporary folder
    it removes, and restores from `backup_dir` like the chief.

    A resume is exact at epoch ends; with an integer `save_freq` the epoch in
    which the backup was taken starts again from the backed-up weights, as
    with Keras's callback.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True, is_chief=True):
        super().__init__()
        self.backup_dir, self.save_freq = backup_dir, save_freq
        self.delete_checkpoint, self.is_chief = delete_checkpoint, is_chief
        self._write_dir = backup_dir if is_chief else tempfile.mkdtemp(prefix="fastcustom-backup-")
        self._epoch, self._batches = 0, 0

    @classmethod
    def like(cls, callback, is_chief):
        return cls(callback.backup_dir, callback.save_freq, callback.delete_checkpoint, is_chief)

    def on_train_begin(self, logs=None):
        state_path = os.path.join(self.backup_dir, STATE_FILE)
        if not os.path.exists(state_path):
            return
        with open(state_path) as f:
            state = json.load(f)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        # What Keras's BackupAndRestore sets, and fit reads (keras_internals.initial_epoch).
        self.model._initial_epoch = state["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        if batch + 1 - self._batches >= self.save_freq:
            self._batches = batch + 1
            self._save(epoch=self._epoch, batch=batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._batches = 0
        if self.save_freq == "epoch":
            self._save(epoch=epoch + 1, batch=0)

    def _save(self, epoch, batch):
        os.makedirs(self._write_dir, exist_ok=True)
        name = f"epoch-{epoch}-batch-{batch}.weights.h5"
        partial = os.path.join(self._write_dir, f".writing-{os.getpid()}.weights.h5")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, os.path.join(self._write_dir, name))
        state = os.path.join(self._write_dir, f".{STATE_FILE}.{os.getpid()}")
        with open(state, "w") as f:
            json.dump({"epoch": epoch, "batch": batch, "weights": name}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(state, os.path.join(self._write_dir, STATE_FILE))   # the commit
        for old in glob.glob(os.path.join(self._write_dir, "epoch-*.weights.h5")):
            if os.path.basename(old) != name:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(old)

    def on_train_end(self, logs=None):
        if not self.is_chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
        elif self.delete_checkpoint:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


class RemoveFolderAtEnd(keras.callbacks.Callback):
    """Removes `folder` when training ends (a non-chief worker's temporary output)."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def on_train_end(self, logs=None):
        shutil.rmtree(self.folder, ignore_errors=True)


def _to_temporary(callback, attribute):
    """A copy of `callback` writing under a new temporary folder; the folder's remover."""
    folder = tempfile.mkdtemp(prefix="fastcustom-worker-")
    moved = copy.copy(callback)
    setattr(moved, attribute, os.path.join(folder, os.path.basename(
        str(getattr(callback, attribute)).rstrip(os.sep)) or "out"))
    return moved, RemoveFolderAtEnd(folder)


def for_this_worker(callbacks, verbose, strategy):
    """(callbacks, verbose) for this worker of a multi-worker `fit`: the chief writes."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks, verbose
    is_chief = strategy.extended.should_checkpoint
    adapted, removers = [], []
    for callback in callbacks or []:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            callback = AtomicBackupAndRestore.like(callback, is_chief)
        elif not is_chief and isinstance(callback, keras.callbacks.ModelCheckpoint):
            callback, remover = _to_temporary(callback, "filepath")
            removers.append(remover)
        elif not is_chief and isinstance(callback, keras.callbacks.TensorBoard):
            callback, remover = _to_temporary(callback, "log_dir")
            removers.append(remover)
        elif not is_chief and isinstance(callback, keras.callbacks.CSVLogger):
            callback, remover = _to_temporary(callback, "filename")
            removers.append(remover)
        adapted.append(callback)
    return adapted + removers, verbose if is_chief else 0
