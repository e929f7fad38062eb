# The MLflow tracking server for compose.yaml: the official image plus the PostgreSQL
# driver and boto3 for the S3-compatible artifact store, which the image leaves out.
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
RUN pip install --no-cache-dir "psycopg2-binary>=2.9,<3" "boto3>=1.34"
