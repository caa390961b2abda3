#!/bin/sh
# Starts the tracking server with basic auth on, every secret from the environment: the auth
# config MLflow reads (it wants an ini file) is written at start-up into a private temp dir,
# never baked into the image or committed. Fails at once if a secret is missing.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql://user:pass@host/db)}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (postgresql://... for the user store)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/path)}"
umask 077
conf_dir="$(mktemp -d)"
cat > "$conf_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf_dir/basic_auth.ini"
# --artifacts-destination + default --serve-artifacts: the artifact proxy, so remote Ray
# workers upload models through the server and need no S3 credentials of their own.
# One worker and no job execution: about 0.5 GB instead of 3 GB (stack notes).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
exec mlflow server --app-name basic-auth \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host 0.0.0.0 --port 5000 --workers "${MLFLOW_WORKERS:-2}"
