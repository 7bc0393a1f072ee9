#!/usr/bin/env bash
# Post a failure notice to a Slack incoming webhook (SLACK_WEBHOOK_URL from the context).
# Never fails the job itself, and never prints the webhook URL.
set -uo pipefail
if [ -z "${SLACK_WEBHOOK_URL:-}" ]; then
  echo "SLACK_WEBHOOK_URL is not set; no notification sent"
  exit 0
fi
text="${CIRCLE_PROJECT_REPONAME:-mlops}: job ${CIRCLE_JOB:-?} failed in workflow ${CIRCLE_WORKFLOW_ID:-?} (${CIRCLE_BUILD_URL:-no url})"
payload=$(printf '{"text": "%s"}' "${text//\"/\\\"}")
if curl -fsS --max-time 10 -X POST -H 'Content-Type: application/json' --data "$payload" "$SLACK_WEBHOOK_URL" >/dev/null; then
  echo "failure notification sent"
else
  echo "could not send the failure notification (webhook unreachable)"
fi
exit 0
