#!/usr/bin/env bash
# Point this checkout's DVC at the S3-compatible remote of the compose stack (MinIO), or at AWS S3.
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # the MinIO user/password from infra/.env
#   bash infra/dvc-s3.sh                                      # then: dvc push / dvc pull
# The remote and endpoint go to .dvc/config.local (git-ignored), so the committed default remote
# stays as it is; credentials are never written to any file: boto reads them from the environment.
# Settings (environment): DVC_BUCKET (tether-dvc), DVC_PREFIX (tether),
# DVC_S3_ENDPOINT_URL (http://127.0.0.1:9000; set it empty for AWS S3), DVC_REMOTE_NAME (s3remote).
set -euo pipefail

BUCKET="${DVC_BUCKET:-tether-dvc}"
PREFIX="${DVC_PREFIX:-tether}"
ENDPOINT="${DVC_S3_ENDPOINT_URL-http://127.0.0.1:9000}"
NAME="${DVC_REMOTE_NAME:-s3remote}"
DVC="${DVC_BIN:-dvc}"

if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
  echo "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment (the MinIO user and password" >&2
  echo "from infra/.env); they are read at push/pull time and never stored in .dvc/" >&2
  exit 1
fi

"$DVC" remote add --local --force -d "$NAME" "s3://$BUCKET/$PREFIX"
if [[ -n "$ENDPOINT" ]]; then
  "$DVC" remote modify --local "$NAME" endpointurl "$ENDPOINT"
fi
echo "DVC default remote: $NAME -> s3://$BUCKET/$PREFIX${ENDPOINT:+ via $ENDPOINT} (in .dvc/config.local)"
