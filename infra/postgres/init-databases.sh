#!/bin/sh
# Runs once, when the PostgreSQL volume is first created: one database each for MLflow and Prefect.
set -eu
for db in "$MLFLOW_DB" "$PREFECT_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";"
done
