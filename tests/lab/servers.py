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
    test uses its own model name, so TF Serving keeps nothing of one test that another could see
    (a monitored server's Prometheus page has a line set per model name, and the bake reads only
    its model's). A server a test stopped is not reused. Servers started with other flags
    (``extra_args``, e.g. ``--monitoring_config_file``) are lent only for the same flags."""

    def __init__(self, factory, root: Path):
        self.factory, self.root = factory, root
        self.free: dict[tuple, list] = {}
        self.started = 0
        self._lock = threading.Lock()
        self._flags: dict[int, tuple] = {}          # id(handle) -> the extra_args it was started with

    def monitoring_config(self) -> Path:
        """One monitoring config file for every monitored server of the pool (the same flag each)."""
        from mlops.local_services import MONITORING_CONFIG

        cfg = self.root / "monitoring.config"
        with self._lock:
            if not cfg.exists():
                self.root.mkdir(parents=True, exist_ok=True)
                cfg.write_text(MONITORING_CONFIG)
        return cfg

    def take(self, extra_args: tuple = ()):
        extra_args = tuple(extra_args)
        with self._lock:
            free = self.free.setdefault(extra_args, [])
            while free:
                handle = free.pop()
                if handle.proc is not None and handle.proc.poll() is None:
                    return handle
            self.started += 1
            base = self.root / f"pool-{self.started}"
        handle = self.factory(base, grpc=True, extra_args=MODEL_SERVER_ARGS + extra_args)
        with self._lock:
            self._flags[id(handle)] = extra_args
        return handle

    def give_back(self, handle) -> None:
        if handle.proc is None or handle.proc.poll() is not None:
            return
        handle.write_config(EMPTY_CONFIG)
        for child in handle.base.iterdir():
            if child.name == "models.config" or child.name.startswith(".models.config.tmp"):
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        with self._lock:
            self.free.setdefault(self._flags.get(id(handle), ()), []).append(handle)
