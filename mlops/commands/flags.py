"""argparse ``type=`` converters shared by the subcommands: a bad value is one usage line, exit 2."""
from __future__ import annotations

import argparse
import re

from mlops_common.text import is_decimal

_DIGITS = re.compile(r"[+-]?[0-9]+")     # int() also takes "0_3" (3) and "３" (full-width): another number
# a spelling of nan / inf, which ``number`` refuses by name (not as "not a number")
_NOT_FINITE = re.compile(r"[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _whole(minimum: int, too_small: str, *, what: str = "a whole number", maximum: int | None = None,
           too_large: str = "{v} is too large"):
    """A converter to a whole number of at least ``minimum`` (``too_small``: the reason, ``{v}`` the value)."""
    def convert(text: str) -> int:
        if not _DIGITS.fullmatch(text.strip()):
            raise argparse.ArgumentTypeError(f"'{text}' is not {what}")
        try:
            v = int(text)
        except ValueError:      # more digits than int() reads (4300): beyond any bound; argparse
            sign, digits = ("-", text.strip()[1:]) if text.strip()[0] == "-" else ("", text.strip().lstrip("+"))
            shown = f"{sign}{digits[:10]}... ({len(digits)} digits)"     # printed "invalid convert value"
            raise argparse.ArgumentTypeError((too_small if sign else too_large).format(v=shown)) from None
        if v < minimum:
            raise argparse.ArgumentTypeError(too_small.format(v=v))
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(too_large.format(v=v))
        return v
    return convert


# A count or a version number: a whole number, at least 1.
positive_int = _whole(1, "{v} must be at least 1")
# How many ledger rows to show (``registry history --limit``): SQL takes a 64-bit LIMIT (2**63 was an
# OverflowError traceback from the database driver).
row_limit = _whole(1, "{v} must be at least 1", maximum=2**63 - 1,
                   too_large="{v} is more rows than a ledger holds (at most 2**63 - 1)")
# A count that may be zero (``--canary 0``).
non_negative_int = _whole(0, "{v} must be 0 or more")
# A registered model version: a whole number, at least 1.
version_number = _whole(1, "version numbers start at 1", what="a version number", maximum=2**63 - 1,
                        too_large="{v} is larger than any version number (at most 2**63 - 1)")
# Training's counts (``train`` / ``retrain`` / ``demo``): int() read "0_2" as 2 and a full-width "３２" as 32.
epochs = _whole(1, "--epochs must be at least 1, got {v}")
batch_size = _whole(1, "--batch-size must be between 1 and 2147483647 (2**31 - 1), got {v}", maximum=2**31 - 1,
                    too_large="--batch-size must be between 1 and 2147483647 (2**31 - 1), got {v}")
# A random seed as numpy and TensorFlow take it.
seed = _whole(0, "a seed is 0 or more, got {v}", what="a seed", maximum=2**32 - 1,
              too_large="a seed is at most 4294967295 (2**32 - 1), got {v}")
# How many times a bad batch repeats the held-back images (each repeat is a copy of the pool:
# 100 copies of fashion_mnist's pool are ~1 GB).
repeats = _whole(1, "--repeats must be at least 1, got {v}", maximum=100,
                 too_large="--repeats is at most 100 (each repeat is another copy of the pool), got {v}")
# A TCP port to listen on (0: any free port).
port = _whole(0, "a port is 0 to 65535 (0: any free port), got {v}", what="a port number", maximum=65535,
              too_large="a port is 0 to 65535 (0: any free port), got {v}")
# A TCP port a service keeps, that other commands find it at (``mlops up --port``: 0 said "any free
# port" and started MLflow on 5000, the default, instead).
service_port = _whole(1, "a port is 1 to 65535 (the one other commands will find it at), got {v}",
                      what="a port number", maximum=65535,
                      too_large="a port is 1 to 65535 (the one other commands will find it at), got {v}")


def wave(text: str) -> str:
    """``--wave``: N hosts or P% of the hosts after the canary."""
    from mlops_common.errors import ConfigError
    from serving_sync.rollout import parse_wave
    try:
        return parse_wave(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("--wave ")) from None


def number(text: str) -> float:
    """A finite number: ``nan`` passes no comparison and ``inf`` every one (a ``nan`` latency
    limit switched the canary's latency check off)."""
    import math

    if not (is_decimal(text) or _NOT_FINITE.fullmatch(text.strip())):   # float() also takes "0_01" (1.0)
        raise argparse.ArgumentTypeError(f"'{text}' is not a number")
    v = float(text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return v


def _between(lo: float, hi: float, unit: str = ""):
    def convert(text: str) -> float:
        v = number(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is not between {lo:g} and {hi:g}{unit}")
        return v
    return convert


def ratio(text: str) -> float:
    """A ratio of two latencies: a finite number of at least 1 (``--max-latency-ratio``)."""
    v = number(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v:g} is below 1 (a ratio of the canary's latency to the old "
                                         f"version's; 1.5 = 50% slower)")
    return v


fraction = _between(0, 1)
seconds = _between(0, 86400, " seconds")


interval = _between(0.5, 86400, " seconds")     # sync watch: passes at most twice a second


# a bound on a wait: shorter than 1 s, a load or a config reload on a healthy host runs out of time
# and a good version is tagged as failed (the watch then skips it for good)
timeout = _between(1, 86400, " seconds")


def true_or_false(text: str) -> bool:
    """An on/off flag's value form (``--from-scratch=false``): ``mlflow run`` puts every MLproject
    parameter into the command, so a bare flag cannot be left out there."""
    if text.strip().lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"'{text}' is not true or false")
    return text.strip().lower() == "true"


def utf8_text(text: str) -> str:
    """A flag that is written to the ledger or sent to MLflow as text: bytes that are not UTF-8
    (a Latin-1 terminal's ``é``) reach Python as lone surrogates, which the database driver cannot
    encode (a traceback mid-promotion, or from ``registry history --model``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("is not UTF-8 text (bytes of another encoding: set the terminal or "
                                         "the script to UTF-8 and type it again)") from None
    return text


def free_text(text: str) -> str:
    """A free-text flag recorded in the ledger and shown in MLflow and terminals (``--actor``,
    ``--reason``): one line of UTF-8 text without control characters (newline, ESC, CR, ...)."""
    from mlops_common.text import has_control

    utf8_text(text)
    if has_control(text):
        raise argparse.ArgumentTypeError("must be one line of text without control characters "
                                         "(newlines, escape sequences)")
    return text


def _not_empty(hint: str, *, then=None):
    """A converter that refuses an empty or blank value with ``is empty: <hint>`` (an unset
    ``"$VAR"`` in a CI job is an empty argument, and each of these fell back to something else)
    and passes the rest through ``then``."""
    def convert(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty: {hint}")
        return then(text) if then is not None else text
    return convert


# ``--webhook-host``: an empty one bound every interface
bind_address = _not_empty("name an address of this machine (e.g. 127.0.0.1, or 0.0.0.0 to listen on every "
                          "interface on purpose)", then=str.strip)


def _s3_utf8(text: str) -> str:
    """An ``s3://`` location is sent to S3 as text: bytes that are not UTF-8 were a traceback from
    botocore (a local path may hold any bytes the file system does)."""
    return utf8_text(text) if text.startswith("s3://") else text


# ``data make-batch --out``: ``Path("")`` is "." and an empty one wrote to ``/<name>.npz``
output_path = _not_empty("name the output .npz file, an existing folder or s3://bucket/key.npz", then=_s3_utf8)
# ``registry gate --report-dir``: an empty one (an unset ``"$REPORTS"``) wrote no report, silently
report_dir = _not_empty("name the folder for report.md, report.json and report.html, or leave --report-dir out")
# ``sync watch --secret-env``: an empty one took MLOPS_WEBHOOK_SECRET instead (``registry webhook create``
# refuses it), or passed unremarked without --webhook-port
secret_env = _not_empty("name the environment variable holding the webhook's HMAC secret, or leave --secret-env "
                        "out to use MLOPS_WEBHOOK_SECRET")
# ``--incoming``, ``data validate``: an empty ``${INCOMING:-$MLOPS_INCOMING}`` retrained on no new data
location = _not_empty("name a .npz batch, a folder of them or s3://bucket/prefix (in CircleCI: the `incoming` "
                      "pipeline parameter or MLOPS_INCOMING in the mlops-tracking context)", then=_s3_utf8)


# --- flags every registry / sync command takes ----------------------------------------------------
# ``--model-name`` fell back to MLOPS_MODEL_NAME, ``--actor`` to the OS user
model_name = _not_empty("name the registered model, or leave --model-name out to use MLOPS_MODEL_NAME",
                        then=utf8_text)
ACTOR_MAX = 256     # the ledger's actor column (VARCHAR(256): PostgreSQL refused a longer one mid-promotion)
REASON_MAX = 1000   # a why, in the ledger and in MLflow tags: a 100,000-character one failed the tag write
                    # after the hosts had switched (MLflow's limit; MySQL's column holds ~65,535 bytes)


def _free_text_of_at_most(limit: int, say: str):
    """A converter: one line of text (``free_text``) of at most ``limit`` characters, else ``is N
    characters long; <say> in at most <limit>``."""
    def convert(text: str) -> str:
        text = free_text(text)
        if len(text) > limit:
            raise argparse.ArgumentTypeError(f"is {len(text)} characters long; {say} in at most {limit}")
        return text
    return convert


actor = _not_empty("name who acts, or leave --actor out", then=_free_text_of_at_most(ACTOR_MAX, "name who acts"))
reason = _free_text_of_at_most(REASON_MAX, "say why")     # ``--reason``
# ``registry history --model``: an empty one listed every model
model_filter = _not_empty("name a registered model, or leave --model out to list every model", then=utf8_text)
# ``--hosts``: an empty one fell back to MLOPS_SYNC_TARGET or MLOPS_HOSTS_FILE, another fleet
hosts_file = _not_empty("name the hosts file, or leave --hosts out to use MLOPS_SYNC_TARGET / MLOPS_HOSTS_FILE")


def add_rollback(p) -> None:
    """The flags of both rollbacks (``registry rollback``, ``sync rollback``): what to and why."""
    p.add_argument("--to", type=version_number, metavar="N", help="roll back to this version")
    p.add_argument("--reason", type=reason, help="why (recorded; default 'rollback requested')")
    p.add_argument("--actor", type=actor, help="who is rolling back (outside CircleCI; default: the OS user)")
    p.add_argument("--force", action="store_true",
                   help="allow a version that did not pass the gate (needs --reason)")


def run_id(text: str) -> str:
    """An MLflow run id (32 hex digits, as MLflow makes them)."""
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an MLflow run id (32 hex digits)")
    return text


def add_model_name(p) -> None:
    p.add_argument("--model-name", metavar="NAME", type=model_name,
                   help="registered model (default: MLOPS_MODEL_NAME or image-classifier)")


def add_json(p) -> None:
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON document on stdout (progress goes to stderr)")
