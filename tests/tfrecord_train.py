"""Run as a script: trains from TFRecord files on disk through tf.data with an accelerated
`model.fit`, and reports this process's resident memory at the end of each epoch.

`python tfrecord_train.py FOLDER [--records 4500] [--epochs 3]` writes FOLDER/part-*.tfrecord
(each record one serialized [256, 65] float32 chunk: 64 features and a target; 4500
records are 300 MB), then trains the notes' model on
`TFRecordDataset(files).map(parse).unbatch().batch(256).prefetch(2)`. Prints one JSON
line: {"rss_mb": [after epoch 1, 2, ...], "rss_before_fit_mb", "bytes_on_disk", "loss",
"compiled_with"}.
The same pipeline is the example in docs/training.md.
"""

import argparse
import glob
import json
import os

import keras
import tensorflow as tf

import fastcustom

ROWS, FEATURES = 256, 64


def write_records(folder, records, files=4):
    """`records` chunks of ROWS rows (features, then a smooth target) in `files` files."""
    def chunk(index):
        x = tf.random.stateless_normal([ROWS, FEATURES], seed=[index, 0])
        y = tf.tanh(x[:, :1] + 0.5 * x[:, 1:2])
        return tf.io.serialize_tensor(tf.concat([x, y], axis=1))

    for part in range(files):
        chunks = tf.data.Dataset.range(part, records, files).map(chunk)
        tf.data.experimental.TFRecordWriter(
            os.path.join(folder, f"part-{part}.tfrecord")).write(chunks)
    return sorted(glob.glob(os.path.join(folder, "part-*.tfrecord")))


def parse(record):
    rows = tf.ensure_shape(tf.io.parse_tensor(record, tf.float32), [ROWS, FEATURES + 1])
    return rows[:, :FEATURES], rows[:, FEATURES:]


def dataset(files, batch_size=256):
    """The training data, streamed from the files: never held whole."""
    return (tf.data.TFRecordDataset(files, num_parallel_reads=2)
            .map(parse, num_parallel_calls=2).unbatch().batch(batch_size).prefetch(2))


def resident_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--records", type=int, default=4500)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    files = write_records(args.folder, args.records)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)),
                              fastcustom.MyDense(30, activation="selu"),
                              fastcustom.MyDense(30, activation="selu"),
                              fastcustom.MyDense(1)])
    model.compile(optimizer="nadam", loss=fastcustom.HuberLoss())
    fastcustom.accelerate(model)
    rss, before = [], resident_mb()
    history = model.fit(dataset(files), epochs=args.epochs, verbose=0, callbacks=[
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: rss.append(
            resident_mb()))])
    print(json.dumps({"rss_mb": rss, "rss_before_fit_mb": before, "bytes_on_disk": sum(os.path.getsize(f) for f in files),
                      "loss": history.history["loss"],
                      "compiled_with": history.params["compiled_with"]}))


if __name__ == "__main__":
    main()
