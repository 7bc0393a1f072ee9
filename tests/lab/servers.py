"""A pool of local TF-Serving-compatible servers shared by a test session (or a benchmark lab)."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

from tests.lab.tfserving import EMPTY_CONFIG

# Failed loads end in END at once (the default, like TF Serving, retries 5 times a minute apart).
# No --allow_version_labels_for_unavailable_models: label rules are strict.
MODEL_SERVER_ARGS = ("--max_num_load_retries=0",)


class ServerPool:
    """Started servers are expensive (a TensorFlow import each): a test borrows one with a clean
    base and gives it back at teardown, when it is reset (empty models.config, empty base). Each
    test uses its own model name, so TF Serving keeps nothing of one test that another could see.
    A server a test stopped is not reused."""

    def __init__(self, factory, root: Path):
        self.factory, self.root = factory, root
        self.free: list = []
        self.started = 0
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            while self.free:
                handle = self.free.pop()
                if handle.proc is not None and handle.proc.poll() is None:
                    return handle
            self.started += 1
            base = self.root / f"pool-{self.started}"
        return self.factory(base, grpc=True, extra_args=MODEL_SERVER_ARGS)

    def give_back(self, handle) -> None:
        if handle.proc is None or handle.proc.poll() is not None:
            return
        handle.write_config(EMPTY_CONFIG)
        for child in handle.base.iterdir():
            if child.name == "models.config" or child.name.startswith(".models.config.tmp"):
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        with self._lock:
            self.free.append(handle)
