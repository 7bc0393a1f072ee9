#!/usr/bin/env bash
# Post a failure notice to a Slack incoming webhook (SLACK_WEBHOOK_URL from the context).
# Never fails the job itself, and never prints the webhook URL. The URL is a secret (anyone who
# has it can post), so it is never put on curl's command line, which every user of the machine
# can read (/proc/<pid>/cmdline): curl reads it from a config on its stdin (-K -).
set -uo pipefail
if [ -z "${SLACK_WEBHOOK_URL:-}" ]; then
  echo "SLACK_WEBHOOK_URL is not set; no notification sent"
  exit 0
fi
text="${CIRCLE_PROJECT_REPONAME:-mlops}: job ${CIRCLE_JOB:-?} failed in workflow ${CIRCLE_WORKFLOW_ID:-?} (${CIRCLE_BUILD_URL:-no url})"
text="${text//\\/\\\\}"
payload=$(printf '{"text": "%s"}' "${text//\"/\\\"}")
# curl config syntax: a quoted value with \ and " escaped.
url="${SLACK_WEBHOOK_URL//\\/\\\\}"
url="${url//\"/\\\"}"
if printf 'url = "%s"\n' "$url" | curl -fsS --max-time 10 -K - -X POST -H 'Content-Type: application/json' \
     --data "$payload" -o /dev/null 2>/dev/null; then
  echo "failure notification sent"
else
  echo "could not send the failure notification (webhook unreachable or refused: curl exit $?)"
fi
exit 0
