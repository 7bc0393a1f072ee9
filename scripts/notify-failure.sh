#!/usr/bin/env bash
# Post a failure notice to a Slack incoming webhook (SLACK_WEBHOOK_URL from the context).
# Never fails the job itself, and never prints the webhook URL. The URL is a secret (anyone who
# has it can post), so it is never put on curl's command line, which every user of the machine
# can read (/proc/<pid>/cmdline): curl reads it from a config on its stdin (-K -).
# This text (after the #! line) is also the notify step's command in .circleci/config.yml, so a
# failed checkout, which leaves no scripts/ folder, still notifies; that step runs it under
# CircleCI's `bash -eo pipefail`, hence the +e (a failed curl is said, not a silent exit).
set +e -uo pipefail
if [ -z "${SLACK_WEBHOOK_URL:-}" ]; then
  echo "SLACK_WEBHOOK_URL is not set; no notification sent"
  exit 0
fi
text="${CIRCLE_PROJECT_REPONAME:-mlops}: job ${CIRCLE_JOB:-?} failed in workflow ${CIRCLE_WORKFLOW_ID:-?} (${CIRCLE_BUILD_URL:-no url})"
text="${text//\\/\\\\}"
payload=$(printf '{"text": "%s"}' "${text//\"/\\\"}")
# A value pasted with a trailing newline or space was never delivered
# ("curl exit 3"): the ends are trimmed, and whitespace inside is named.
url="$SLACK_WEBHOOK_URL"
url="${url#"${url%%[![:space:]]*}"}"
url="${url%"${url##*[![:space:]]}"}"
if [[ "$url" == *[[:space:]]* ]]; then
  echo "could not send the failure notification (SLACK_WEBHOOK_URL has whitespace inside it; set it again in the context)"
  exit 0
fi
# curl config syntax: a quoted value with \ and " escaped.
url="${url//\\/\\\\}"
url="${url//\"/\\\"}"
# Sent means an http(s) receiver answered 2xx: curl "posts" to file:// (and other schemes) without
# error, and a redirect (a moved hook, Slack's answer to plain http) exits 0 without delivering.
code=$(printf 'url = "%s"\n' "$url" | curl -fsS --proto '=http,https' --max-time 10 -K - -X POST \
       -H 'Content-Type: application/json' --data "$payload" -o /dev/null -w '%{http_code}' 2>/dev/null)
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "could not send the failure notification (webhook unreachable or refused: curl exit $rc)"
elif [[ "$code" != 2[0-9][0-9] ]]; then
  echo "could not send the failure notification (the webhook answered HTTP $code)"
else
  echo "failure notification sent"
fi
exit 0
