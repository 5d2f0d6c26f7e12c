# One image for every service of docker-compose.yml that runs our code (Airflow's components, MLflow,
# the endpoint, the mail sink, the init and provision jobs), installed from requirements.lock exactly
# as `make install` does. No secret is baked in: they come from .env at run time (see README).
FROM python:3.11-slim

# git: Airflow's git DAG bundle clones the DAG repository (dag-processor and workers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# The bytecode is compiled below, at build time, and read by every service (docker-compose.yml sets the
# same PYTHONPYCACHEPREFIX): a service does not compile Airflow and MLflow again at each start.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPYCACHEPREFIX=/opt/ct/pycache \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/ct

# The lock first: the dependency layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -q --no-cache-dir "$(grep -E '^uv==' requirements.lock)" \
    && /opt/venv/bin/uv pip sync -q --no-cache --python /opt/venv/bin/python requirements.lock

# The project (.dockerignore lets through only pyproject.toml, README.md, include/, dags/ and plugins/),
# installed editable as `make install` does, so the library finds its config and DAGs under /opt/ct.
COPY . ./
RUN uv pip install -q --no-cache --python /opt/venv/bin/python --no-deps -e . \
    && (python -m compileall -q -j 0 /opt/venv/lib/python3.11/site-packages include dags >/dev/null || true)

# A non-root user; the folders named volumes are mounted on are its own, so new volumes inherit that.
# /ct/home is CT_HOME (AIRFLOW_HOME below it); the git DAG repository is bind-mounted read-only and
# owned by someone else, hence safe.directory.
RUN groupadd --system --gid 10001 ct \
    && useradd --system --uid 10001 --gid 10001 --home-dir /ct/home --no-create-home --shell /usr/sbin/nologin ct \
    && install -d -m 0755 /ct \
    && install -d -o ct -g ct -m 0755 /ct/home /ct/home/airflow /ct/home/airflow/logs /ct/lake /ct/mail \
        /ct/artifacts \
    && install -d -o ct -g ct -m 0700 /ct/secrets /ct/auth /ct/deliver /ct/deliver/pipeline-secrets \
        /ct/deliver/endpoint-secrets /ct/deliver/airflow-auth /ct/deliver/mlflow-auth /ct/deliver/redis-config \
    && git config --system --add safe.directory /ct/dags-repo.git

USER ct
ENV HOME=/ct/home
WORKDIR /ct/home
CMD ["ct", "--help"]
