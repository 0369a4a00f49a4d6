# syntax=docker/dockerfile:1
# MLflow tracking server + model registry: PostgreSQL backend (psycopg2), S3 artifacts (boto3).
# The version is the one pyproject.toml pins, so clients and server agree.
#   docker build -f infra/mlflow.Dockerfile -t tether-mlflow infra
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # One server process instead of ~10 job-execution workers (~1.6 GiB), and no telemetry.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_DISABLE_TELEMETRY=true

RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.44.5" \
 && useradd --create-home --uid 10001 mlflow
USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--help"]
