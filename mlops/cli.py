"""Entry point of the ``mlops`` console script.

Each command group lives in ``mlops/commands/<group>.py`` and exposes ``register(subparsers)``.
Command functions take the parsed ``args`` and return an exit code (``None`` means 0).
Heavy libraries are imported inside the command functions, never at module level, so that
``mlops --help`` and the fast paths (e.g. ``mlops sync rollback``) start quickly.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from mlops_common import log
from mlops_common.errors import UserError, one_line

# Order is the order shown in --help.
COMMAND_MODULES = ("services", "data", "train", "registry", "sync", "demo")


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line that names the flag and says where the usage is, exit 2
    (argparse prints the whole usage block first; subcommands inherit this class)."""

    def __init__(self, *args, **kwargs):
        # no abbreviations: `mlflow run -P epoch=2` appends `--epoch 2`, which took --epochs' place
        # while the run's parameters said epochs=10 (a typo must be an error, not a guess)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.set_defaults(_usage_prog=self.prog)    # the innermost command parsed sets it last

    def error(self, message: str):
        self.exit(2, f"error: {one_line(message)} (usage: `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """An unknown flag is found by the top parser, after the command's own parsed: point at
        that command's usage (it pointed at `mlops --help`)."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            prog = getattr(parsed, "_usage_prog", self.prog)
            if {"-v", "--verbose"} & set(extra):    # a flag of `mlops` itself, given after the command
                self.exit(2, f"error: -v/--verbose goes before the command: `mlops -v {prog.removeprefix('mlops ')} "
                             f"...` (usage: `mlops --help`)\n")
            self.exit(2, f"error: {one_line('unrecognized arguments: ' + ' '.join(extra))} (usage: `{prog} --help`)\n")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mlops",
        description=(
            "Deliver TensorFlow models from an MLflow Model Registry to TensorFlow Serving: "
            "train and register, gate, promote, deploy, smoke-test and roll back."
        ),
        epilog="Configuration comes from the environment: MLFLOW_TRACKING_URI (default: the local "
               "server started by `mlops up`), MLOPS_HOME (state folder, default ./.mlops), "
               "MLOPS_MODEL_NAME, MLOPS_LEDGER_URL, MLOPS_HOSTS_FILE. Run `mlops COMMAND --help` "
               "for each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"mlops.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    # TensorFlow's C++ start-up chatter (CUDA probes, absl's preface) is not a command's output;
    # set before any command imports TensorFlow (mlflow and keras may, before mlproject's tf_quiet).
    # It hides TF's later INFO/WARNING lines, not those logged while its libraries load, nor the
    # cuInit ERROR: tf_startup filters those out around the first import (-v: shown)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    log.setup(verbose=args.verbose)
    from mlops import tf_startup

    if not args.verbose:
        tf_startup.install()
    # Both streams redacted at the edge: stdout carries messages built from exceptions, and
    # stderr gets text no mlops logger formats (MLflow's own handler, `warnings`, a worker
    # thread's traceback from threading.excepthook).
    streams = sys.stdout, sys.stderr
    # a closed stream is None (`2>&-`): print() then writes nowhere, as without the wrapper
    sys.stdout, sys.stderr = (s if s is None else log.RedactingStream(s) for s in streams)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = streams
        tf_startup.uninstall()


def _run(args) -> int:
    """The command, with every failure turned into its exit code and at most one line (or a
    traceback for a bug). Both go to stderr, which ``main`` redacts."""
    import os
    import traceback

    from mlops.commands.signals import sigterm_as_ctrl_c

    try:
        with sigterm_as_ctrl_c():   # every command: SIGTERM (a cancelled CI job, `timeout`) is Ctrl-C
            code = args.func(args)
        sys.stdout.flush()      # a reader gone (`| head`) is found here, not in a traceback at exit
    except BrokenPipeError:
        if not _stdout_gone():  # a socket's broken pipe: a bug to see
            print(traceback.format_exc(), file=sys.stderr, end="")
            return 1
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # nothing more to write
        return 141              # as a command killed by SIGPIPE (128 + 13), which pipefail sees
    except UserError as exc:
        print(f"{log.journal_prefix()}error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except log.OutputLost as exc:   # `> result.json` on a full disk: what to fix, not a bug's traceback
        print(f"error: cannot write this command's output to {exc.stream} ({exc.strerror}); free space where "
              f"it goes (or send it elsewhere) and rerun: what was written there is incomplete", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: its traceback (the stream takes every secret out)
        print(traceback.format_exc(), file=sys.stderr, end="")
        return 1
    return int(code or 0)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll says POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
