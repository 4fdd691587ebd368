"""TensorFlow's persistent XLA compilation cache, for fastcustom's compiled loops, on request.

A process that compiles a loop another process already compiled (the same model,
shapes, loss, optimizer and TensorFlow) loads the executable from the cache folder
instead of running XLA again: the first epoch of a fresh `fit` pays for tracing,
not for compilation. It is TensorFlow's own cache (`--tf_xla_persistent_cache_directory`
in `TF_XLA_FLAGS`), so it covers every XLA compilation in the process, and it is
set only if the user has not set it. TensorFlow reads the flag once, at the first
use of its XLA flags (building a Keras layer is enough), which is why `import
fastcustom` sets it: import fastcustom before building models. This module does
not import TensorFlow.

`FASTCUSTOM_XLA_CACHE=1` turns it on in `$XDG_CACHE_HOME/fastcustom/xla/tf-<version>`
(else under `~/.cache`), one folder per installed TensorFlow version;
`FASTCUSTOM_XLA_CACHE=DIR` puts it in DIR. It is off unless asked, because TensorFlow
2.21 reads each cached entry as a text proto before the binary one and so logs
"Error parsing text-format tensorflow.XlaSerializedCacheEntry" (an E-level line) on
every cache hit, harmless but alarming; the entry then loads.

>>> folder = enable()   # before the process first uses XLA
"""

import os
from importlib import metadata

_FLAG = "--tf_xla_persistent_cache_directory"


def default_folder():
    """Where the cache goes when `FASTCUSTOM_XLA_CACHE` does not say."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastcustom", "xla", f"tf-{_tensorflow_version()}")


def _tensorflow_version():
    """The installed TensorFlow's version, read from its metadata (no import)."""
    for distribution in ("tensorflow", "tensorflow-cpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def enable():
    """Point TensorFlow's XLA cache at our folder; the folder in use, or None when off.

    Respects a `--tf_xla_persistent_cache_directory` the user put in `TF_XLA_FLAGS`.
    Has no effect once TensorFlow has read its XLA flags in this process.
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    for flag in flags.split():
        if flag.startswith(_FLAG + "="):
            return flag.split("=", 1)[1] or None
    setting = os.environ.get("FASTCUSTOM_XLA_CACHE", "")
    if setting in ("", "0"):
        return None
    folder = default_folder() if setting == "1" else setting
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:   # a read-only home: no cache, nothing else changes
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {_FLAG}={folder}".strip()
    return folder
