#!/bin/sh
# Entry point of the pipeline image: make /app a repository DVC can work in, point DVC at the
# S3 remote named in the environment, then run the command.
set -eu
cd /app

# The image holds a copy of the code, not its history; DVC needs a git repository.
if [ ! -d .git ]; then
  git init -q -b main
  git -c user.name=tether -c user.email=tether@localhost add -A
  git -c user.name=tether -c user.email=tether@localhost commit -qm "image of ${TETHER_GIT_COMMIT:-unknown}"
fi
git config user.name >/dev/null || git config user.name tether
git config user.email >/dev/null || git config user.email tether@localhost

# DVC remote on S3-compatible storage (MinIO in the compose stack). Written to .dvc/config.local,
# never committed; credentials stay in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
if [ -n "${DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --force --default s3remote "$DVC_REMOTE_URL"
  if [ -n "${DVC_S3_ENDPOINT_URL:-}" ]; then
    dvc remote modify --local s3remote endpointurl "$DVC_S3_ENDPOINT_URL"
  fi
fi

exec "$@"
