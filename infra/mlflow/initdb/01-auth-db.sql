-- The basic-auth user store lives in its own database on the same server (run once, at first start).
CREATE DATABASE mlflow_auth OWNER mlflow;
