"""AtomicBackupAndRestore (the BackupAndRestore of a multi-worker fit) in one process: what it
writes, through tf.io.gfile (a `ram://` folder stands in for `gs://`: neither is a local
path); what it refuses to restore (BackupError naming the folder, before any step);
double_checkpoint; Keras's own folder format; a non-chief worker's scratch files. The runs
with several workers and the launcher are in test_multi_worker.py.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom.distributed import callbacks as backup
from fastcustom.distributed.guard import SCRATCH_ENV

EPOCHS = 4


class Interrupted(Exception):
    pass


class StopAt(keras.callbacks.Callback):
    """Interrupts training when `epoch` begins (after the backup of the epoch before)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupted(f"stopped at epoch {epoch}")


def model_and_data():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return model, x, np.tanh(x[:, :1] * 2)


def train(callbacks, epochs=EPOCHS, model_data=None):
    """A fresh model (the same every time) trained with `callbacks`: (model, history)."""
    model, x, y = model_data or model_and_data()
    history = fastcustom.fit(model, x, y, batch_size=16, epochs=epochs, seed=0, verbose=0,
                             callbacks=callbacks)
    return model, history


def interrupted(callback, at=2):
    """Train with `callback` until epoch `at` begins."""
    with pytest.raises(Interrupted):
        train([callback, StopAt(at)])


@pytest.fixture(scope="module")
def uninterrupted():
    return [w.copy() for w in train([])[0].get_weights()]


def assert_same_weights(model, weights):
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_ram_folder_backup_resumes_to_the_same_weights(uninterrupted, tmp_path, monkeypatch):
    """Every write goes through tf.io.gfile: a `ram://` folder holds the weights file and the
    state.json naming it, nothing appears on the local disk, and the resumed fit ends bitwise
    where the uninterrupted one does; the folder is removed at the end."""
    monkeypatch.chdir(tmp_path)
    folder = "ram://fastcustom-test/backup"
    interrupted(backup.AtomicBackupAndRestore(folder), at=2)
    assert sorted(tf.io.gfile.listdir(folder)) == ["epoch-2-batch-0.weights.h5", "state.json"]
    with tf.io.gfile.GFile(f"{folder}/state.json") as f:
        assert json.loads(f.read()) == {"epoch": 2, "batch": 0,
                                        "weights": "epoch-2-batch-0.weights.h5"}
    model, history = train([backup.AtomicBackupAndRestore(folder)])
    assert history.epoch == [2, 3]
    assert_same_weights(model, uninterrupted)
    assert not tf.io.gfile.exists(folder) and os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def good_backup(tmp_path_factory):
    """A folder with the backup of epoch 2 of the run."""
    folder = str(tmp_path_factory.mktemp("good") / "backup")
    interrupted(backup.AtomicBackupAndRestore(folder), at=2)
    return folder


WEIGHTS = "epoch-2-batch-0.weights.h5"


@pytest.mark.parametrize("state, why", [
    ({"epoch": 99, "batch": 0, "weights": WEIGHTS},
     "state.json: \"epoch\" is 99, past this fit's last epoch (epochs=4): the backup comes "
     "from another training run"),
    ({"epoch": -1, "batch": 0, "weights": WEIGHTS}, "\"epoch\" must be an integer >= 0, got -1"),
    ({"epoch": "3", "batch": 0, "weights": WEIGHTS}, "\"epoch\" must be an integer >= 0, got '3'"),
    ({"epoch": True, "weights": WEIGHTS}, "\"epoch\" must be an integer >= 0, got True"),
    ({"epoch": 2, "batch": 1.5, "weights": WEIGHTS}, "\"batch\" must be an integer >= 0, got 1.5"),
    ({"epoch": 2, "weights": "epoch-9-batch-0.weights.h5"},
     "state.json names epoch-9-batch-0.weights.h5, which is not in the folder"),
    ({"epoch": 2, "weights": "../" + WEIGHTS}, "\"weights\" must name a .weights.h5 file in the"),
    ([2, WEIGHTS], "state.json holds list, not an object"),
    ("{\"epoch\": 2,", "state.json cannot be read: JSONDecodeError"),
    (b"\xff\xfe", "state.json cannot be read: UnicodeDecodeError"),
])
def test_an_unusable_state_stops_fit_before_any_step_naming_the_folder(good_backup, tmp_path,
                                                                        state, why):
    folder = str(tmp_path / "backup")
    shutil.copytree(good_backup, folder)
    content = state if isinstance(state, (str, bytes)) else json.dumps(state)
    with open(os.path.join(folder, "state.json"), "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    model, x, y = model_and_data()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(backup.BackupError) as error:
        train([backup.AtomicBackupAndRestore(folder)], model_data=(model, x, y))
    message = str(error.value)
    assert message.startswith(f"fastcustom: the BackupAndRestore folder '{folder}' cannot be "
                              "used: ")
    assert why in message
    assert "To train from the beginning, remove the folder" in message
    assert_same_weights(model, before)


@pytest.mark.parametrize("damage", ["garbage", "another model's weights"])
def test_weights_that_do_not_load_stop_fit_naming_the_file(good_backup, tmp_path, damage):
    folder = str(tmp_path / "backup")
    shutil.copytree(good_backup, folder)
    path = os.path.join(folder, WEIGHTS)
    if damage == "garbage":
        with open(path, "wb") as f:
            f.write(b"not an HDF5 file" * 64)
    else:
        other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        other.save_weights(path)
    with pytest.raises(backup.BackupError, match=f"{WEIGHTS} does not load into this model"):
        train([backup.AtomicBackupAndRestore(folder)])


def test_double_checkpoint_keeps_the_previous_backup_and_falls_back_to_it(uninterrupted,
                                                                          tmp_path):
    """Keras's double_checkpoint survives the change of callback: state.json names the
    backup before the newest, whose file stays; when the newest cannot be loaded the fit
    resumes from the previous one (with a warning) and still ends on the same weights."""
    folder = str(tmp_path / "backup")
    # The conversion a multi-worker fit makes, as the chief.
    callback = backup.AtomicBackupAndRestore.like(
        keras.callbacks.BackupAndRestore(folder, double_checkpoint=True), is_chief=True)
    assert callback.double_checkpoint
    interrupted(callback, at=3)
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    assert state == {"epoch": 3, "batch": 0, "weights": "epoch-3-batch-0.weights.h5",
                     "previous": {"epoch": 2, "batch": 0, "weights": WEIGHTS}}
    assert sorted(os.listdir(folder)) == [WEIGHTS, "epoch-3-batch-0.weights.h5", "state.json"]
    with open(os.path.join(folder, "epoch-3-batch-0.weights.h5"), "wb") as f:
        f.write(b"torn")
    with pytest.warns(UserWarning, match="resuming from the one before it, at epoch 2"):
        model, history = train([backup.AtomicBackupAndRestore.like(
            keras.callbacks.BackupAndRestore(folder, double_checkpoint=True), is_chief=True)])
    assert history.epoch == [2, 3]
    assert_same_weights(model, uninterrupted)


def test_without_double_checkpoint_one_backup_is_kept(tmp_path):
    folder = str(tmp_path / "backup")
    interrupted(backup.AtomicBackupAndRestore(folder), at=3)
    assert sorted(os.listdir(folder)) == ["epoch-3-batch-0.weights.h5", "state.json"]


def test_a_folder_written_by_keras_own_callback_is_resumed_then_replaced(tmp_path):
    """A backup Keras's BackupAndRestore wrote (model.fit on one machine) resumes at its
    epoch; the first backup of ours replaces Keras's files, which would be stale."""
    folder = str(tmp_path / "backup")
    model, x, y = model_and_data()
    with pytest.raises(Interrupted):
        model.fit(x, y, batch_size=16, epochs=EPOCHS, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(folder), StopAt(2)])
    saved = [w.copy() for w in model.get_weights()]
    assert sorted(os.listdir(folder)) == ["latest.weights.h5", "training_metadata.json"]

    class Restored(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = [w.copy() for w in self.model.get_weights()]

    restored = Restored()
    with pytest.raises(Interrupted):
        train([backup.AtomicBackupAndRestore(folder), restored, StopAt(3)])
    for a, b in zip(restored.weights, saved, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(folder)) == ["epoch-3-batch-0.weights.h5", "state.json"]


def test_a_worker_that_is_not_the_chief_keeps_no_file(tmp_path, monkeypatch):
    """It saves as the chief does (TensorFlow's rule), into a scratch folder removed at once:
    the backup folder is the chief's alone, and nothing stays behind in the scratch folder."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv(SCRATCH_ENV, str(scratch))
    folder = str(tmp_path / "backup")

    class Counted(backup.AtomicBackupAndRestore):
        saves = 0

        def _save_discarded(self):
            super()._save_discarded()
            self.saves += 1

    callback = Counted(folder, is_chief=False, task_id=1)
    train([callback], epochs=2)
    assert callback.saves == 2 and not os.path.exists(folder) and os.listdir(scratch) == []


def test_like_keeps_what_keras_callback_was_asked(tmp_path):
    keras_callback = keras.callbacks.BackupAndRestore(str(tmp_path), save_freq=3,
                                                      double_checkpoint=True,
                                                      delete_checkpoint=False)
    callback = backup.AtomicBackupAndRestore.like(keras_callback, is_chief=False, task_id=2)
    assert (callback.backup_dir, callback.save_freq, callback.double_checkpoint,
            callback.delete_checkpoint, callback.is_chief, callback.task_id) == \
        (str(tmp_path), 3, True, False, False, 2)


@pytest.mark.parametrize("arguments, message", [
    (("",), "`backup_dir` must name a folder"),
    (("b", 0), "`save_freq` must be 'epoch', an integer >= 1 or False"),
    (("b", "batch"), "`save_freq` must be 'epoch', an integer >= 1 or False"),
])
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        backup.AtomicBackupAndRestore(*arguments)


# A fit that backs up after every batch, for ever (the test kills it): a backup is being
# written most of the time.
BACKING_UP = textwrap.dedent("""
    import sys
    import keras, numpy as np
    import fastcustom
    from fastcustom.distributed.callbacks import AtomicBackupAndRestore
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(512, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    fastcustom.fit(model, x, x[:, :1], batch_size=16, epochs=10_000, verbose=0, seed=0,
                   steps_per_call=1, callbacks=[AtomicBackupAndRestore(sys.argv[1], save_freq=1)])
""")


@pytest.mark.long
def test_a_worker_killed_while_writing_leaves_a_backup_that_restores(tmp_path):
    """SIGKILL at three moments while backups are written after every batch: each time
    state.json is whole and names a weights file that loads."""
    folder = str(tmp_path / "backup")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                           *sys.path]))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(512, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    for delay in (0.0, 0.37, 1.1):
        process = subprocess.Popen([sys.executable, "-c", BACKING_UP, folder], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while not os.path.exists(os.path.join(folder, "state.json")):
                assert process.poll() is None and time.monotonic() < deadline, \
                    process.stderr.read().decode()[-3000:] if process.poll() is not None else ""
                time.sleep(0.02)
            time.sleep(delay)
        finally:
            process.kill()
            process.wait(30)
            process.stderr.close()
        callback = backup.AtomicBackupAndRestore(folder)
        callback.set_model(model)
        callback.set_params({"epochs": 10_000})
        callback.on_train_begin()
        assert model._initial_epoch == json.load(open(os.path.join(folder, "state.json")))["epoch"]
