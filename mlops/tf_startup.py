"""TensorFlow's start-up lines kept off a command's stderr.

TF 2.21 logs through absl, and a few lines are logged by static initialisers while its shared
libraries load, before TF_CPP_MIN_LOG_LEVEL is applied (absl's "before absl::InitializeLog()"
preface, port.cc's oneDNN notice, cudart_stub.cc's "Could not find cuda drivers"), then, at the
first device probe, cuda_platform.cc's ``E... failed call to cuInit: ... (303)`` (an ERROR, so
level 2 shows it). No variable turns these off short of TF_ENABLE_ONEDNN_OPTS=0 (other numbers)
or TF_CPP_MIN_LOG_LEVEL=3 (every later TF error hidden too). So the first ``import tensorflow``
(whoever does it: keras, mlflow.tensorflow, mlproject) runs with fd 2 through a filter process
that drops exactly those lines and passes every other byte on; a process, not a thread, so
that what TF writes before an abort still comes out. ``mlops -v`` shows them (no filter).
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import subprocess
import sys

# Run by ``python -S -c``: stdin is what TF writes to fd 2, stdout is the real stderr.
FILTER = r"""
import re, sys
STAMP = rb"^[IWE]\d{4} [\d:.]+ +\d+ "
KNOWN = [re.compile(p) for p in (
    rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    STAMP + rb"port\.cc:\d+\] oneDNN custom operations are on\. ",
    STAMP + rb"cuda_(dnn|blas|fft)\.cc:\d+\] Unable to register cu(DNN|BLAS|FFT) factory: Attempting to "
            rb"register factory for plugin \S+ when one has already been registered$",
)]
NO_DRIVER = re.compile(STAMP + rb"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will "
                       rb"not be used\.$")
CUINIT = re.compile(STAMP + rb"cuda_platform\.cc:\d+\] failed call to cuInit: ")
no_driver = False
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    text = line.rstrip(b"\r\n")
    if NO_DRIVER.match(text):
        no_driver = True
        continue
    # cuInit failing is news on a machine with a CUDA driver; without one, it is what the line above said
    if any(p.match(text) for p in KNOWN) or (no_driver and CUINIT.match(text)):
        continue
    out.write(line)
    out.flush()
"""


@contextlib.contextmanager
def startup_lines_filtered(timeout: float = 30.0):
    """fd 2 through ``FILTER`` for the block; a no-op when fd 2 is closed."""
    try:
        real = os.dup(2)
    except OSError:         # `2>&-`: nothing to keep clean
        yield
        return
    try:
        read, write = os.pipe()
        try:
            # its own process group: Ctrl-C at the terminal stops the command, not the filter, which
            # ends when the last writer of fd 2 is gone (the command restores it, or dies)
            filt = subprocess.Popen([sys.executable, "-S", "-c", FILTER], stdin=read, stdout=real,
                                    process_group=0)
        finally:
            os.close(read)
        try:
            _flush()
            os.dup2(write, 2)
        finally:
            os.close(write)
        try:
            yield
        finally:
            _flush()
            os.dup2(real, 2)    # the filter's last writer gone: it reads to the end and exits
            try:
                filt.wait(timeout)
            except subprocess.TimeoutExpired:   # something we started holds a copy of fd 2
                pass
    finally:
        os.close(real)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):     # a find_spec() caller (not an import) may ask the loader more
        return getattr(self.inner, name)

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        uninstall()
        module.__loader__ = module.__spec__.loader = self.inner    # nobody later sees this wrapper
        with startup_lines_filtered():
            self.inner.exec_module(module)
            module.config.list_physical_devices("GPU")   # the cuInit probe, here rather than at the first op


class QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path``: the first import of ``tensorflow`` runs under ``startup_lines_filtered``."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        # not uninstalled yet: importlib.util.find_spec("tensorflow") (a check, as mlflow makes) imports nothing
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    if "tensorflow" not in sys.modules and not any(isinstance(f, QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, QuietTensorFlowImport())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, QuietTensorFlowImport)]
