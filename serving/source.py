"""Where versions come from, as TF Serving's FileSystemStoragePathSource: integer-named version directories under a
model's base path, complete (saved_model.pb written) and inside --model_base_path_roots; and the polling thread."""
import logging
import os
import posixpath
import threading
from typing import Callable, Dict, Optional, Sequence, Set, Tuple

import grpc
import tensorflow as tf

from serving.errors import ServingError
from serving.policy import SAVED_MODEL_FILES

log = logging.getLogger(__name__)
Fingerprint = Tuple[Tuple[str, int, int], ...]


def fingerprint(path: str) -> Fingerprint:
    """(file, size, mtime) of everything under a version directory, via tf.io.gfile (works on GCS/S3 too): a
    version that failed to load is retried only once this changes."""
    entries = []
    for root, _, files in tf.io.gfile.walk(path):
        for f in files:
            try:
                st = tf.io.gfile.stat(os.path.join(root, f))
            except tf.errors.OpError:
                continue
            entries.append((os.path.relpath(os.path.join(root, f), path), st.length, st.mtime_nsec))
    return tuple(sorted(entries))


def list_versions(base_path: str) -> Dict[int, str]:
    """Integer-named sub-directories of a model's base path, by version."""
    try:
        names = tf.io.gfile.listdir(base_path)
    except tf.errors.OpError:
        return {}
    found = {}
    for name in names:
        name = name.rstrip("/")
        path = os.path.join(base_path, name)
        if name.isdigit() and tf.io.gfile.isdir(path):
            found[int(name)] = path
    return found


def _resolved(path: str) -> str:
    """A path with symlinks and '..' resolved: realpath locally, normalised for URLs (gs://, s3://: no symlinks)."""
    scheme, sep, rest = path.partition("://")
    if sep and scheme != "file":
        return scheme + sep + posixpath.normpath("/" + rest).lstrip("/")
    return os.path.realpath(rest if sep else path)


def outside_roots(path: str, roots: Sequence[str]) -> Optional[str]:
    """None when `path` resolves under one of `roots` (or there are none), else where it resolves to."""
    if not roots:
        return None
    real = _resolved(path)
    for root in roots:
        top = _resolved(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return None
    return real


class VersionSource:
    """The loadable version directories of each model; each skipped directory is logged once, not every poll."""

    def __init__(self, base_path_roots: Sequence[str] = ()):
        self.roots = tuple(base_path_roots)
        self._incomplete: Set[Tuple[str, int]] = set()
        self._outside: Set[Tuple[str, int]] = set()  # versions symlinked out of the roots

    def check_base_path(self, name: str, base_path: str) -> None:
        """PERMISSION_DENIED for a base path resolving outside --model_base_path_roots."""
        real = outside_roots(base_path, self.roots)
        if real is not None:
            raise ServingError(grpc.StatusCode.PERMISSION_DENIED,
                               f"Model {name}: base_path {base_path} resolves to {real}, outside "
                               f"--model_base_path_roots={','.join(self.roots)}")

    def versions(self, name: str, base_path: str) -> Dict[int, str]:
        """Complete version directories inside the roots, by version."""
        found = list_versions(base_path)
        for version, path in list(found.items()):
            real = outside_roots(path, self.roots)  # a version directory symlinked out of the roots
            if real is not None:
                if (name, version) not in self._outside:
                    log.error("Version %d of model %s resolves to %s, outside --model_base_path_roots; not loaded",
                              version, name, real)
                    self._outside.add((name, version))
                del found[version]
            elif not any(tf.io.gfile.exists(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
                # TFX's Pusher writes saved_model.pb last: until then the version is still being copied.
                if (name, version) not in self._incomplete:
                    log.warning("Version %d of model %s has no saved_model.pb yet; waiting for it", version, name)
                    self._incomplete.add((name, version))
                del found[version]
        if not found:
            log.warning("No versions of servable %s found under base path %s", name, base_path)
        return found


class Poller:
    """Calls `fn` every `interval` seconds in a daemon thread until stop() (interval <= 0: never)."""

    def __init__(self, interval: float, fn: Callable[[], None], name: str):
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, args=(interval, fn), name=name, daemon=True)
            self._thread.start()

    def _loop(self, interval: float, fn: Callable[[], None]) -> None:
        while not self._stop.wait(interval):
            fn()

    def stop(self) -> None:
        """Ask the thread to stop and wait for the call in progress, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
