#!/usr/bin/env bash
# Prepare a Linux host to serve models with real TensorFlow Serving (Docker image tensorflow/serving).
#
#   sudo bash install_server.sh [--base /var/models] [--deploy-user deploy] [--dry-run] ...
#
# What it does, each step only when needed (running it twice changes nothing the second time):
#   1. creates the deploy user (the account serving_sync logs in as; no Docker group needed),
#   2. creates the model base directory owned by that user, writable by no one else (an existing
#      base, models.config or monitoring.config others can write gets chmod go-w; an existing
#      non-empty folder that user does not own is refused unless --take-ownership; /, and system
#      folders such as /var or /opt, always; so is a base under a folder another user owns or
#      others can write (not sticky), and a deploy user in a group that can become root, docker
#      or sudo say),
#   3. writes an initial empty-but-valid models.config there (never overwrites an existing one:
#      serving_sync owns that file once deploys start; a 0-byte one, which TF Serving cannot
#      start on, is written like a missing one),
#   3b. writes <base>/monitoring.config enabling TF Serving's Prometheus page at
#      /monitoring/prometheus/metrics (what `mlops sync deploy --bake` reads), unless --no-metrics,
#   4. runs the pinned tensorflow/serving image with --model_config_file=/models/models.config,
#      --monitoring_config_file=/models/monitoring.config, --max_num_load_retries=0,
#      a config poll interval, the base directory mounted read-only at /models, REST (8501) and
#      gRPC (8500) published on 127.0.0.1 unless told otherwise, a restart policy, and its log
#      rotated (20 MB x 5) when Docker's driver is json-file.
#      The container carries a label with a hash of its settings: same settings -> left alone,
#      changed settings -> replaced (the old one renamed aside and stopped, removed once the new one
#      answers on its REST port, and serving again if the new one does not start, exits, or does not
#      answer within --ready-timeout, or if the script is interrupted (INT, TERM, HUP) meanwhile).
#   5. enables docker.service at boot when systemd has it disabled (else no container after a reboot).
# Then it prints what adding the host to the fleet needs: REST and gRPC addresses, the host's SSH keys
# as known_hosts lines (with fingerprints) and a [[hosts]] entry for the hosts file; with
# --no-container also the tensorflow_model_server command line to run (the container's flags, the
# host's base folder and ports), and the entry's model_base_path is that folder.
# --dry-run prints every command that would change the host instead of running it.
set -euo pipefail

IMAGE="tensorflow/serving:2.21.0"   # pinned; matches tensorflow-serving-api in requirements.lock
PINNED_IMAGE="$IMAGE"
BASE="/var/models"
DEPLOY_USER="deploy"
CONTAINER="tfserving"
REST_PORT=8501
GRPC_PORT=8500
REST_BIND="127.0.0.1"
GRPC_BIND="127.0.0.1"
POLL_SECONDS=1
READY_TIMEOUT=120
DRY_RUN=0
WITH_CONTAINER=1
WITH_METRICS=1
TAKE_OWNERSHIP=0
ADMIN_DEPLOY_USER=0
SPEC_LABEL="tfmodel-delivery.spec"

usage() {
  cat <<'EOF'
usage: install_server.sh [options]

Prepare this host to serve models with real TensorFlow Serving (Docker image tensorflow/serving).
Idempotent: a second run with the same options changes nothing.

options:
  --base DIR            model base directory on the host (default: /var/models)
  --deploy-user NAME    user that owns DIR and that deploys log in as, not root (default: deploy)
  --image IMAGE         TensorFlow Serving image (default: tensorflow/serving:2.21.0)
  --container NAME      container name (default: tfserving)
  --rest-port PORT      host port for the REST API (default: 8501)
  --grpc-port PORT      host port for gRPC (default: 8500)
  --rest-bind ADDR      host address REST is published on (default: 127.0.0.1)
  --grpc-bind ADDR      host address gRPC is published on (default: 127.0.0.1)
  --expose              publish REST and gRPC on all addresses (0.0.0.0)
  --poll-seconds N      models.config and model directory poll interval (default: 1)
  --ready-timeout N     seconds a new container has to answer on its REST port (TF Serving opens
                        it once its models have loaded); past it a replaced container is put back,
                        a first one removed (default: 120)
  --no-container        prepare user, directory and models.config only (no Docker); prints the
                        tensorflow_model_server command line (the container's flags, DIR and the
                        ports above) for the TF Serving you run yourself
  --no-metrics          no monitoring.config: TF Serving serves no Prometheus page (canary bakes
                        then need --bake 0)
  --take-ownership      give an existing non-empty DIR the deploy user does not own to that user
                        (refused without it; /, and system folders such as /var, always)
  --admin-deploy-user   accept a deploy user in a group that can become root (docker, sudo, ...):
                        a workstation where you deploy as yourself, never a production host
  --dry-run             print the commands that would change the host, run none of them
  -h, --help            show this help
EOF
}

die() { echo "error: $*" >&2; exit 2; }

need_value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then
    die "$1 needs a value (see --help)"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --base) need_value "$@"; BASE="$2"; shift 2 ;;
    --deploy-user) need_value "$@"; DEPLOY_USER="$2"; shift 2 ;;
    --image) need_value "$@"; IMAGE="$2"; shift 2 ;;
    --container) need_value "$@"; CONTAINER="$2"; shift 2 ;;
    --rest-port) need_value "$@"; REST_PORT="$2"; shift 2 ;;
    --grpc-port) need_value "$@"; GRPC_PORT="$2"; shift 2 ;;
    --rest-bind) need_value "$@"; REST_BIND="$2"; shift 2 ;;
    --grpc-bind) need_value "$@"; GRPC_BIND="$2"; shift 2 ;;
    --expose) REST_BIND="0.0.0.0"; GRPC_BIND="0.0.0.0"; shift ;;
    --poll-seconds) need_value "$@"; POLL_SECONDS="$2"; shift 2 ;;
    --ready-timeout) need_value "$@"; READY_TIMEOUT="$2"; shift 2 ;;
    --no-container) WITH_CONTAINER=0; shift ;;
    --no-metrics) WITH_METRICS=0; shift ;;
    --take-ownership) TAKE_OWNERSHIP=1; shift ;;
    --admin-deploy-user) ADMIN_DEPLOY_USER=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

case "$BASE" in /*) ;; *) die "--base must be an absolute path, got '$BASE'" ;; esac
# the folder it really is: //, /var/.., trailing slashes and symlinks resolved before any check
GIVEN_BASE="$BASE"
BASE="$(realpath -m -- "$BASE")" || die "cannot resolve --base '$GIVEN_BASE'"
case "$BASE" in
  /|/bin|/boot|/dev|/etc|/home|/lib|/lib32|/lib64|/libx32|/media|/mnt|/opt|/proc|/root|/run|/sbin|\
  /srv|/sys|/tmp|/usr|/usr/*bin|/usr/lib*|/usr/local|/usr/share|/var|/var/lib|/var/log|/var/tmp)
    die "--base '$GIVEN_BASE' is $BASE, a system folder; choose a folder of its own (e.g. /var/models)" ;;
esac
# digits counted before any arithmetic: `[ 99999999999999999999 -gt 65535 ]` is an error, which
# `if` read as false (the value passed, and docker failed after the user and folder were made)
for port in "$REST_PORT" "$GRPC_PORT"; do
  if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || (( 10#$port < 1 || 10#$port > 65535 )); then
    die "ports must be numbers between 1 and 65535, got '$port'"
  fi
done
if ! [[ "$POLL_SECONDS" =~ ^[0-9]{1,5}$ ]] || (( 10#$POLL_SECONDS < 1 )); then
  die "--poll-seconds must be a whole number from 1 to 99999, got '$POLL_SECONDS'"
fi
if ! [[ "$READY_TIMEOUT" =~ ^[0-9]{1,5}$ ]] || (( 10#$READY_TIMEOUT < 1 )); then
  die "--ready-timeout must be a whole number of seconds from 1 to 99999, got '$READY_TIMEOUT'"
fi
READY_TIMEOUT=$(( 10#$READY_TIMEOUT ))
# docker's --mount value is comma-separated fields: a comma in the folder starts another field
# (`--base /srv/m,target=/etc` mounted /srv/m, not the folder the deploy user writes to)
if [ "$WITH_CONTAINER" -eq 1 ] && [[ "$BASE" == *[,\"[:cntrl:]]* ]]; then
  die "--base '$GIVEN_BASE' holds a comma, a quote or a control character, which docker's --mount cannot take; choose another folder"
fi
# the hosts-file entry printed at the end names the folder in TOML strings, as written
if [[ "$BASE" == *[\"\\[:cntrl:]]* ]]; then
  die "--base '$GIVEN_BASE' holds a quote, a backslash or a control character, which the hosts-file entry cannot name as written; choose another folder"
fi
# what docker run accepts, checked before anything changes (docker said so only after the user and
# the folder were made): a container name, an address to publish on, an image reference without spaces
if ! [[ "$CONTAINER" =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]+$ ]]; then
  die "--container '$CONTAINER' is not a Docker container name (letters, digits, '_', '.', '-'; at least 2 characters)"
fi
is_ipv4() {
  [[ "$1" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] \
    && (( 10#${BASH_REMATCH[1]} <= 255 && 10#${BASH_REMATCH[2]} <= 255 && 10#${BASH_REMATCH[3]} <= 255 \
          && 10#${BASH_REMATCH[4]} <= 255 ))
}
# what Go's net.ParseIP (docker's --publish) takes: 8 groups of 1-4 hex digits, or fewer with one
# "::" standing for at least one group of zeros; the last two may be written as an IPv4 address.
# (any mix of hex digits and colons passed: `--rest-bind :` failed in docker, after the changes)
is_ipv6() {
  local a="$1" max=8 groups='^([0-9A-Fa-f]{1,4}(:[0-9A-Fa-f]{1,4})*)?$' head tail n
  if [[ "$a" =~ ^(.*:)([^:]*\.[^:]*)$ ]]; then
    a="${BASH_REMATCH[1]}"; max=6
    is_ipv4 "${1##*:}" || return 1
    [[ "$a" == *:: ]] || a="${a%:}"
  fi
  if [[ "$a" == *::* ]]; then
    head="${a%%::*}"; tail="${a#*::}"
    [[ "$head" =~ $groups && "$tail" =~ $groups ]] || return 1
    n=$(( $(count_groups "$head") + $(count_groups "$tail") ))
    (( n < max ))
  else
    [[ -n "$a" && "$a" =~ $groups ]] && (( $(count_groups "$a") == max ))
  fi
}
count_groups() {
  if [ -z "$1" ]; then echo 0; else local colons="${1//[!:]/}"; echo $(( ${#colons} + 1 )); fi
}
for addr in "$REST_BIND" "$GRPC_BIND"; do
  if ! is_ipv4 "$addr" && ! is_ipv6 "$addr"; then
    die "--rest-bind / --grpc-bind must be an IP address of this host (e.g. 127.0.0.1, 0.0.0.0, ::1), got '$addr'"
  fi
done
if [[ "$IMAGE" =~ [[:space:]] ]]; then
  die "--image '$IMAGE' is not an image reference (it holds a space); e.g. $PINNED_IMAGE"
fi
# docker would read '--privileged' as one of its own options, after the user and folder were made
if ! [[ "$IMAGE" =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]*$ ]]; then
  die "--image '$IMAGE' is not an image reference (letters, digits and . _ / : @ -, starting with a letter or digit); e.g. $PINNED_IMAGE"
fi
if ! [[ "$DEPLOY_USER" =~ ^[a-z_][a-z0-9_-]*$ ]]; then
  die "--deploy-user '$DEPLOY_USER' is not a valid user name"
fi
# root (or another name for uid 0) would own the base folder, and deploys would log in as root
if [ "$(id -u "$DEPLOY_USER" 2>/dev/null)" = "0" ]; then
  die "--deploy-user '$DEPLOY_USER' is root (uid 0); nothing changed: deploys log in as this user and it owns the base folder, so choose an unprivileged one (e.g. --deploy-user deploy, created if missing)"
fi
# nor a user a group makes root: docker (`docker run -v /:/host`), lxd/incus, disk (raw block
# devices), sudo/wheel/admin;
# the deploy key, which CI holds, would be a root login on the host
for group in $(id -Gn "$DEPLOY_USER" 2>/dev/null || true); do
  [ "$ADMIN_DEPLOY_USER" -eq 0 ] || break
  case "$group" in
    root|docker|lxd|incus-admin|disk|sudo|wheel|admin)
      die "--deploy-user '$DEPLOY_USER' is in group $group, which can become root; nothing changed: deploys log in as this user, so take it out of that group (gpasswd -d $DEPLOY_USER $group) or choose another user (e.g. --deploy-user deploy, created if missing); on a workstation where you deploy as yourself, --admin-deploy-user" ;;
  esac
done

CONFIG="$BASE/models.config"
MONITORING="$BASE/monitoring.config"
MONITORING_TEXT='prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }' 
MODELS_IN_CONTAINER="/models"
CHANGED=0
# A symlinked models.config whose target is empty: TF Serving cannot start on it, and the target
# is not ours to overwrite (step 3 writes a 0-byte plain file like a missing one).
if [ -L "$CONFIG" ] && [ -e "$CONFIG" ] && [ ! -s "$CONFIG" ]; then
  die "$CONFIG is a symlink to an empty file, which TF Serving cannot start on (it needs at least 'model_config_list {}'); nothing changed: write that into $(readlink -f "$CONFIG"), or remove the link and rerun"
fi

# Quote one word for a shell only when it needs it (readable dry-run output).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print a command (one line, copy-pasteable) in dry-run mode; run it otherwise.
run() {
  CHANGED=1
  if [ "$DRY_RUN" -eq 1 ]; then
    local line="" word
    for word in "$@"; do
      line+="${line:+ }$(quote "$word")"
    done
    echo "$line"
  else
    "$@"
  fi
}

need_root() {
  if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "$1 needs root; run it as root: sudo bash $0 ..."
  fi
}

note() { echo "ok: $*" >&2; }

# Only the deploy user may write what TF Serving reads: a base, models.config or monitoring.config
# others can write (a folder made with a loose umask, 0777) let any local user replace a model
# version or point models.config at a model of theirs. A symlink is left alone (chmod follows it).
no_other_writers() {
  if [ -e "$1" ] && [ ! -L "$1" ] && (( 8#$(stat -c '%a' "$1") & 8#022 )); then
    need_root "taking group and other write access from $1"
    run chmod go-w "$1"
  fi
}
# The two config files also readable by all: one root wrote under a hardened umask (CIS: 027),
# 0640 root:root, stopped every deploy (it reads models.config over SSH as the deploy user before
# each change: "Permission denied"), and a TF Serving run as its own user (--no-container).
readable_config() {
  if [ -f "$1" ] && [ ! -L "$1" ]; then
    local mode=$(( 8#$(stat -c '%a' "$1") ))
    if (( (mode & 8#022) || (mode & 8#444) != 8#444 )); then
      need_root "making $1 readable by all and writable by its owner only"
      run chmod go-w,a+r "$1"
    fi
  fi
}

# 0. preflight: fail before changing anything ---------------------------------------------------
# Every existing folder above the base is root's (or the deploy user's) and no one else may write
# it, unless sticky (/tmp): its owner, or anyone, could rename the base aside and put a folder of
# their own in its place, with their models and models.config, which TF Serving then loads.
deploy_uid="$(id -u "$DEPLOY_USER" 2>/dev/null || true)"
d="$BASE"
while [ "$d" != / ]; do
  d="$(dirname -- "$d")"
  [ -d "$d" ] || continue
  read -r d_uid d_mode d_user < <(stat -c '%u %a %U' -- "$d")
  if [ "$d_uid" != 0 ] && [ "$d_uid" != "$deploy_uid" ]; then
    die "$d, a folder above --base, is owned by $d_user; nothing changed: $d_user could put a folder of its own in place of $BASE; choose a --base whose parent folders are root's"
  fi
  if (( 8#$d_mode & 8#022 )) && ! (( 8#$d_mode & 8#1000 )); then
    die "$d, a folder above --base, can be written by others (mode $d_mode); nothing changed: anyone who can write it could put a folder of their own in place of $BASE; chmod go-w $d or choose another --base"
  fi
done
# An existing folder with content is handed to the deploy user only when it already owns it or
# --take-ownership says so (it would get write access to everything there; a re-run is fine).
if [ -d "$BASE" ] && [ "$TAKE_OWNERSHIP" -eq 0 ]; then
  base_owner="$(stat -c '%U' "$BASE")"
  if [ "$base_owner" != "$DEPLOY_USER" ] && [ -n "$(find "$BASE" -mindepth 1 -maxdepth 1 -print -quit)" ]; then
    die "$BASE is not empty and is owned by $base_owner, not $DEPLOY_USER; nothing changed: pass --take-ownership to give it to $DEPLOY_USER, or choose another --base"
  fi
fi
# the container step cannot work
DOCKER_OK=0
if [ "$WITH_CONTAINER" -eq 1 ]; then
  need_root "running the TensorFlow Serving container"
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    DOCKER_OK=1
    # a container of that name that this script did not start (every one it starts carries the
    # settings label) is someone else's: replacing it would remove it without asking
    if docker inspect "$CONTAINER" >/dev/null 2>&1 \
        && [ -z "$(docker inspect --format "{{ index .Config.Labels \"$SPEC_LABEL\" }}" "$CONTAINER" 2>/dev/null)" ]; then
      die "a container named $CONTAINER exists that this script did not start (no $SPEC_LABEL label); nothing changed: remove it yourself (docker rm --force $CONTAINER) or choose another --container"
    fi
  elif [ "$DRY_RUN" -eq 0 ]; then
    if command -v docker >/dev/null 2>&1; then
      die "cannot reach the Docker daemon (docker info failed); start Docker Engine (systemctl start docker) or use --no-container"
    fi
    die "docker not found; install Docker Engine (https://docs.docker.com/engine/install/) or use --no-container"
  fi
fi

# 1. deploy user -----------------------------------------------------------------------------
if id -u "$DEPLOY_USER" >/dev/null 2>&1; then
  note "user $DEPLOY_USER exists"
  DEPLOY_GROUP="$(id -gn "$DEPLOY_USER")"
else
  need_root "creating user $DEPLOY_USER"
  # --user-group: its own group, which the chown below names, also where login.defs says
  # USERGROUPS_ENAB no (SUSE: the user went into "users" and `install -g <user>` failed).
  # --password '*': no password works, yet not "locked" ("!"), which sshd without PAM
  # (UsePAM no) refuses even for a key
  run useradd --system --user-group --create-home --shell /bin/bash --password '*' "$DEPLOY_USER"
  DEPLOY_GROUP="$DEPLOY_USER"
fi

# 2. base directory owned by the deploy user --------------------------------------------------
if [ -d "$BASE" ]; then
  owner="$(stat -c '%U:%G' "$BASE")"
  if [ "$owner" != "$DEPLOY_USER:$DEPLOY_GROUP" ]; then
    need_root "changing the owner of $BASE"
    run chown "$DEPLOY_USER:$DEPLOY_GROUP" "$BASE"
  else
    note "$BASE exists, owned by $owner"
  fi
  no_other_writers "$BASE"
elif [ -e "$BASE" ]; then
  die "$BASE exists and is not a directory; remove it or choose another --base"
else
  need_root "creating $BASE"
  run install -d -m 0755 -o "$DEPLOY_USER" -g "$DEPLOY_GROUP" "$BASE"
fi

# The deploy user must pass through every existing folder above the base (x for it: as owner,
# through one of its groups, or as anyone else): TF Serving, root in its container, reads a base
# under a 0750 root:root /srv, but every deploy over SSH failed with "Permission denied". Said,
# not changed: that folder is not this script's to open up.
deploy_uid="$(id -u "$DEPLOY_USER" 2>/dev/null || true)"
deploy_gids=" $(id -G "$DEPLOY_USER" 2>/dev/null || true) "
d="$BASE"
while [ "$d" != / ]; do
  d="$(dirname -- "$d")"
  [ -d "$d" ] || continue
  read -r d_uid d_gid d_mode d_owner < <(stat -c '%u %g %a %U:%G' -- "$d")
  if [ "$d_uid" = "$deploy_uid" ]; then bit=8#100
  elif [[ "$deploy_gids" == *" $d_gid "* ]]; then bit=8#010
  else bit=8#001; fi
  if ! (( 8#$d_mode & bit )); then
    echo "warning: $DEPLOY_USER cannot pass through $d (mode $d_mode, owned by $d_owner), so it cannot reach $BASE: every deploy will fail with \"Permission denied\"; chmod o+x $d, or choose another --base" >&2
    break
  fi
done

# 3. initial empty-but-valid models.config (never overwritten) ------------------------------
# A 0-byte models.config holds nothing to keep, and TF Serving cannot start on it (it memory-maps
# the file: "INVALID_ARGUMENT: <path>; Invalid argument"); it is written like a missing one. A
# symlink to an empty file is refused before anything changes (below the settings).
if [ -e "$CONFIG" ] && { [ -s "$CONFIG" ] || [ ! -f "$CONFIG" ]; }; then
  note "$CONFIG exists; left as is"
  readable_config "$CONFIG"
else
  [ -e "$CONFIG" ] && note "$CONFIG is empty (0 bytes), which TF Serving cannot start on; writing an empty model list"
  CHANGED=1
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "install -m 0644 -o $(quote "$DEPLOY_USER") -g $(quote "$DEPLOY_GROUP") /dev/stdin $(quote "$CONFIG") <<'EOF'"
    printf 'model_config_list {\n}\n'
    echo "EOF"
  else
    printf 'model_config_list {\n}\n' | install -m 0644 -o "$DEPLOY_USER" -g "$DEPLOY_GROUP" /dev/stdin "$CONFIG"
  fi
fi

# 3b. TF Serving's Prometheus page (read by the canary bake) ----------------------------------
if [ "$WITH_METRICS" -eq 1 ]; then
  if [ -f "$MONITORING" ] && [ "$(cat "$MONITORING")" = "$MONITORING_TEXT" ]; then
    note "$MONITORING exists"
    readable_config "$MONITORING"
  else
    CHANGED=1
    if [ "$DRY_RUN" -eq 1 ]; then
      echo "install -m 0644 -o $(quote "$DEPLOY_USER") -g $(quote "$DEPLOY_GROUP") /dev/stdin $(quote "$MONITORING") <<'EOF'"
      printf '%s\n' "$MONITORING_TEXT"
      echo "EOF"
    else
      printf '%s\n' "$MONITORING_TEXT" | install -m 0644 -o "$DEPLOY_USER" -g "$DEPLOY_GROUP" /dev/stdin "$MONITORING"
    fi
  fi
fi

# Replace the container with changed settings by the new one. The old one is renamed aside and
# stopped (the ports are its), not removed: when `docker run` fails (a port taken by something else,
# a flag, the daemon), the new one exits, or it does not answer on its REST port within
# --ready-timeout, the failed one is removed and the old one gets its name back and serves again;
# it is removed only once the new one answers. (It was removed first: a failed run left the host
# with no TF Serving; then once the new one ran for an instant: a TF Serving that exited a moment
# later, on a flag its image does not know or a model it cannot load, left none either.) An
# INT, TERM or HUP (Ctrl-C, kill, the SSH session dropping) in that window puts the old one back
# too (it was left stopped under its -old- name, nothing serving). TF Serving is down from the stop
# to the new one's answer.
REPLACING_OLD=""

# The old container back under its name, serving, or the commands to do it; one line, and exit $2.
put_old_back() {
  local what="$1" code="$2" old="$REPLACING_OLD"
  trap '' INT TERM HUP      # a second Ctrl-C does not stop the put-back halfway
  if ! docker inspect "$old" >/dev/null 2>&1; then
    # not renamed yet, or already removed once the new one answered: the container is as it was
    echo "error: replacing $CONTAINER stopped: $what; $CONTAINER was left as it is" >&2
    exit "$code"
  fi
  if docker inspect "$CONTAINER" >/dev/null 2>&1; then
    docker rm --force "$CONTAINER" >/dev/null 2>&1 || true
  fi
  if docker rename "$old" "$CONTAINER" && docker start "$CONTAINER" >/dev/null; then
    echo "error: replacing $CONTAINER failed: $what; the old $CONTAINER, with its earlier settings, is serving again" >&2
  else
    echo "error: replacing $CONTAINER failed: $what, and bringing the old one back failed too: it is $old, stopped; restore it with: docker rename $old $CONTAINER && docker start $CONTAINER" >&2
  fi
  exit "$code"
}

interrupted() {  # $1: the signal's name, $2: its number
  put_old_back "interrupted by SIG$1" $(( 128 + $2 ))
}

# Whether TF Serving answers HTTP on the published REST port: it opens that port only once the
# models in models.config have loaded (Server::BuildAndStart: ServerCore::Create, then the gRPC and
# HTTP servers), and exits when one fails to. A status line, not a connection: Docker's userland
# proxy accepts on the published port as soon as the container starts. bash's /dev/tcp: no curl
# needed; each try bounded by `timeout`.
rest_answers() {
  local host="$REST_BIND"
  if [ "$host" = "0.0.0.0" ]; then host="127.0.0.1"; elif [[ "$host" =~ ^[0:]+$ ]]; then host="::1"; fi
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET /v1/models/%s HTTP/1.0\r\n\r\n" "$3" >&3 && IFS= read -r -t 2 line <&3 && [[ "$line" == HTTP/* ]]' \
    _ "$host" "$REST_PORT" "$CONTAINER" 2>/dev/null
}

# Until the new container answers on its REST port (0), exits or is restarted by its restart
# policy (1), or --ready-timeout passes (2). Bounded: at most READY_TIMEOUT+1 tries, each at most
# 3 s, 1 s apart, and the clock.
wait_ready() {
  local deadline=$(( SECONDS + READY_TIMEOUT )) i state
  for ((i = 0; i <= READY_TIMEOUT; i++)); do
    state="$(docker inspect --format '{{.State.Running}} {{.RestartCount}}' "$CONTAINER" 2>/dev/null || true)"
    [ "$state" = "true 0" ] || return 1
    rest_answers && return 0
    (( SECONDS < deadline )) || return 2
    sleep 1
  done
  return 2
}

# A first start has nothing to put back: a TF Serving that exits or does not answer is said in one
# line and removed, so a re-run starts it again (it found it "running with these settings": exit 0
# with nothing serving).
first_start() {
  run "${run_cmd[@]}"
  [ "$DRY_RUN" -eq 0 ] || return 0
  local ready=0
  wait_ready || ready=$?
  if [ "$ready" -eq 0 ]; then return 0; fi
  local what="it exited"
  if [ "$ready" -ne 1 ]; then what="it did not answer on REST port $REST_PORT within --ready-timeout $READY_TIMEOUT s"; fi
  docker logs --tail 20 "$CONTAINER" >&2 || true
  docker rm --force "$CONTAINER" >/dev/null 2>&1 || true
  echo "error: starting $CONTAINER failed: $what (its last log lines are above); it was removed: fix the cause and run this script again" >&2
  exit 1
}

replace_container() {
  local old="" n
  for ((n = 1; n <= 99; n++)); do
    if ! docker inspect "$CONTAINER-old-$n" >/dev/null 2>&1; then old="$CONTAINER-old-$n"; break; fi
  done
  [ -n "$old" ] || die "$CONTAINER-old-1 to $CONTAINER-old-99 all exist (left by earlier runs); nothing replaced: remove them (docker rm --force NAME)"
  if [ "$DRY_RUN" -eq 0 ]; then
    REPLACING_OLD="$old"
    # bash runs a trap once the command in progress returns (Ctrl-C and a dropped session signal
    # that command too)
    trap 'interrupted INT 2' INT
    trap 'interrupted TERM 15' TERM
    trap 'interrupted HUP 1' HUP
  fi
  run docker rename "$CONTAINER" "$old"
  run docker stop -t 0 "$old"  # -t: --time before Docker 25, --timeout since
  local what="docker run failed (its message is above)" ready=0
  if run "${run_cmd[@]}"; then
    if [ "$DRY_RUN" -eq 1 ]; then
      run docker rm --force "$old"
      return 0
    fi
    wait_ready || ready=$?
    if [ "$ready" -eq 0 ]; then
      run docker rm --force "$old"
      trap - INT TERM HUP
      return 0
    fi
    if [ "$ready" -eq 1 ]; then
      what="the new container exited (its last log lines are above)"
    else
      what="the new container did not answer on REST port $REST_PORT within --ready-timeout $READY_TIMEOUT s (its last log lines are above)"
    fi
    docker logs --tail 20 "$CONTAINER" >&2 || true
  fi
  put_old_back "$what" 1
}

# TF Serving's flags: the container's (the base mounted at /models, its own ports 8500/8501, which
# docker publishes), or, with --no-container, the same for a tensorflow_model_server the operator
# runs on the host itself (the host's base folder, --grpc-port/--rest-port)
if [ "$WITH_CONTAINER" -eq 1 ]; then
  SERVE_BASE="$MODELS_IN_CONTAINER" SERVE_GRPC=8500 SERVE_REST=8501
else
  SERVE_BASE="$BASE" SERVE_GRPC="$GRPC_PORT" SERVE_REST="$REST_PORT"
fi
server_args=(
  "--port=$SERVE_GRPC"
  "--rest_api_port=$SERVE_REST"
  "--model_config_file=$SERVE_BASE/models.config"
  "--model_config_file_poll_wait_seconds=$POLL_SECONDS"
  "--file_system_poll_wait_seconds=$POLL_SECONDS"
  --allow_version_labels_for_unavailable_models=true
  # a model loads from this host's own disk, so a failed load is the version's fault: fail it at
  # once. TF Serving's default (5 retries, 1 min apart) holds every other change on the host,
  # the deploy's put-back included, for 5 minutes (its manager loads one version at a time)
  --max_num_load_retries=0
)
if [ "$WITH_METRICS" -eq 1 ]; then
  server_args+=("--monitoring_config_file=$SERVE_BASE/monitoring.config")
fi

# 4. the TensorFlow Serving container ---------------------------------------------------------
if [ "$WITH_CONTAINER" -eq 1 ]; then
  docker_opts=(
    --detach
    --name "$CONTAINER"
    --restart unless-stopped
    --publish "$REST_BIND:$REST_PORT:8501"
    --publish "$GRPC_BIND:$GRPC_PORT:8500"
    --mount "type=bind,source=$BASE,target=$MODELS_IN_CONTAINER,readonly"
    --entrypoint tensorflow_model_server
  )
  # TF Serving logs 2 lines plus one per model at every config poll (ServerCore::ReloadConfig runs
  # each --model_config_file_poll_wait_seconds, changed or not): Docker's default json-file driver
  # keeps them all, some 45 MB a day with one model, until the disk is full. Rotated when that is
  # the driver in use (another one, journald say, is the operator's choice, and takes no max-size).
  log_driver="json-file"
  if [ "$DOCKER_OK" -eq 1 ]; then
    log_driver="$(docker info --format '{{.LoggingDriver}}' 2>/dev/null || true)"
  fi
  if [ "$log_driver" = "json-file" ]; then
    docker_opts+=(--log-opt max-size=20m --log-opt max-file=5)
  fi
  spec="$(printf '%s\n' "$IMAGE" "${docker_opts[@]}" "${server_args[@]}" | sha256sum | cut -c1-16)"
  run_cmd=(docker run "${docker_opts[@]}" --label "$SPEC_LABEL=$spec" "$IMAGE" "${server_args[@]}")

  if [ "$DOCKER_OK" -eq 0 ]; then
    echo "# Docker Engine is not reachable on this host; with Docker Engine this would run:"
    run "${run_cmd[@]}"
  else
    need_root "running the container"
    current="$(docker inspect --format "{{ index .Config.Labels \"$SPEC_LABEL\" }}" "$CONTAINER" 2>/dev/null || true)"
    if [ -z "$current" ] && ! docker inspect "$CONTAINER" >/dev/null 2>&1; then
      first_start
    elif [ "$current" = "$spec" ]; then
      if [ "$(docker inspect --format '{{.State.Running}}' "$CONTAINER")" = "true" ]; then
        note "container $CONTAINER is running with these settings"
      else
        run docker start "$CONTAINER"
      fi
    else
      # the image pulled while the old container still serves: `docker run` pulled it only after
      # the removal (the models down for the pull), and a pull that failed left none running
      if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
        run docker pull "$IMAGE"
      fi
      replace_container
    fi
  fi
fi

# 5. Docker Engine started at boot: --restart unless-stopped brings the container back only when
# the daemon starts, and Docker's packages leave docker.service disabled outside Debian and Ubuntu
# (RHEL, Fedora, ...): TF Serving was gone after the host's next reboot. No systemd: nothing done.
if [ "$WITH_CONTAINER" -eq 1 ] && [ "$DOCKER_OK" -eq 1 ] && command -v systemctl >/dev/null 2>&1 \
    && [ "$(systemctl is-enabled docker.service 2>/dev/null || true)" = "disabled" ]; then
  run systemctl enable docker.service
fi

if [ "$CHANGED" -eq 0 ]; then
  note "nothing to change"
fi
# What an operator needs to add this host to the fleet: the addresses clients and the deploying
# machine reach, the host's SSH keys to pin, and its hosts-file entry (serving_sync/hosts.py).
# The address a URL names for a bind address: an IPv6 one in brackets (http://::1:8501 is no URL),
# the host's name for 0.0.0.0 / :: (http://0.0.0.0:8501 reaches no host from another machine).
reach() {
  if [ "$1" = "0.0.0.0" ] || [[ "$1" =~ ^[0:]+$ ]]; then
    printf '%s' "$HOST_NAME"
  elif [[ "$1" == *:* ]]; then
    printf '[%s]' "$1"
  else
    printf '%s' "$1"
  fi
}
next_steps() {
  HOST_NAME="$(hostname -f 2>/dev/null || true)"
  [ -n "$HOST_NAME" ] || HOST_NAME="$(uname -n)"
  local short="${HOST_NAME%%.*}" ssh_port=22 sshd_conf="" keys=() key kh_host rest grpc
  [[ "$short" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || short="serving-host"
  # sshd's own view (its port and host key files, Include and defaults applied); else the defaults
  if command -v sshd >/dev/null 2>&1; then
    sshd_conf="$(sshd -T 2>/dev/null || true)"
  fi
  ssh_port="$(awk '$1 == "port" { print $2; exit }' <<< "$sshd_conf")"
  [[ "$ssh_port" =~ ^[0-9]{1,5}$ ]] || ssh_port=22
  while IFS= read -r key; do
    [ -f "$key.pub" ] && keys+=("$key.pub")
  done < <(awk '$1 == "hostkey" { print $2 }' <<< "$sshd_conf")
  if [ "${#keys[@]}" -eq 0 ]; then
    for key in /etc/ssh/ssh_host_*_key.pub; do
      [ -f "$key" ] && keys+=("$key")
    done
  fi
  kh_host="$HOST_NAME"
  [ "$ssh_port" = 22 ] || kh_host="[$HOST_NAME]:$ssh_port"
  rest="http://$(reach "$REST_BIND"):$REST_PORT"
  grpc="$(reach "$GRPC_BIND"):$GRPC_PORT"

  echo "TensorFlow Serving: REST $rest/v1/models/<name>, gRPC $grpc; deploy as $DEPLOY_USER into $BASE"
  if [ "$WITH_CONTAINER" -eq 0 ]; then
    # --no-container: the operator runs TF Serving (a binary, systemd, Kubernetes); the flags the
    # container would get, with this host's base folder and ports
    local line="tensorflow_model_server" word
    for word in "${server_args[@]}"; do
      line+=" $(quote "$word")"
    done
    echo "--no-container: no TF Serving was started here; start it with the flags the container would use" \
         "(it listens on all of this host's addresses: firewall the ports, docs/production.md \"TF Serving hosts\"):"
    echo "$line"
  fi
  echo
  echo "Next steps, to add this host to the fleet ($HOST_NAME is this host's name as 'hostname -f' gives it:"
  echo "write the name the deploying machine reaches it at wherever that differs):"
  echo "1. Pin its SSH host keys on the deploying machine: add these known_hosts lines to MLOPS_KNOWN_HOSTS"
  echo "   (the mlops-deploy context) or to the known_hosts file the hosts file names:"
  echo
  if [ "${#keys[@]}" -eq 0 ]; then
    echo "   (no SSH host key found in /etc/ssh: is sshd installed? the deploy user logs in over SSH)"
  fi
  for key in "${keys[@]}"; do
    awk -v h="$kh_host" 'NF >= 2 { print h, $1, $2; exit }' "$key"
  done
  echo
  if [ "${#keys[@]}" -gt 0 ]; then
    echo "   Their fingerprints, which 'ssh-keyscan -p $ssh_port $HOST_NAME | ssh-keygen -lf -' on the deploying machine must show:"
  fi
  for key in "${keys[@]}"; do
    echo "   fingerprint: $(ssh-keygen -lf "$key" 2>/dev/null || echo "$key (ssh-keygen cannot read it)")"
  done
  echo "2. Add the deploying machine's public key (the deploy key) to ~$DEPLOY_USER/.ssh/authorized_keys here."
  echo "3. Add this entry to the hosts file (MLOPS_HOSTS_FILE; e.g. deploy/hosts.example.toml):"
  echo
  echo "[[hosts]]"
  echo "name = \"$short\""
  echo "target = \"ssh://$DEPLOY_USER@$HOST_NAME:$ssh_port$BASE\""
  echo "rest_url = \"$rest\""
  echo "grpc = \"$grpc\""
  echo "model_base_path = \"$SERVE_BASE\""
  if [ "$WITH_METRICS" -eq 0 ]; then
    echo "# --no-metrics: no Prometheus page here, deploy with --bake 0"
  fi
  echo
  if [[ "$REST_BIND" == 127.* || "$REST_BIND" == "::1" || "$GRPC_BIND" == 127.* || "$GRPC_BIND" == "::1" ]]; then
    echo "note: REST or gRPC listens on this host's loopback only, which the deploying machine cannot reach;" \
         "re-run with --rest-bind/--grpc-bind <this host's private address> (docs/production.md, \"TF Serving hosts\")"
  fi
}
if [ "$DRY_RUN" -eq 0 ]; then
  next_steps
fi
