#!/usr/bin/env python3
"""Checks the Docker files without a Docker engine (none runs here).

docker-compose.yml must parse and describe the seed's §3.1 environment; the
Dockerfile must have the four stages, build with the same command as
scripts/start, run as non-root with a HEALTHCHECK; every variable in
.env.example must be documented in the README. Exit 1 on any failure.
"""
import pathlib
import re
import sys

try:
    import yaml
except ImportError:
    import subprocess
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "pyyaml"])
    import yaml

root = pathlib.Path(__file__).resolve().parent.parent
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose.get("services", {})
pg, redis, app = services.get("postgres", {}), services.get("redis", {}), services.get("app", {})
check(pg.get("image") == "postgres:16-alpine", "postgres image is postgres:16-alpine")
check(pg.get("ports", []) == ["127.0.0.1:5432:5432"], "postgres publishes 5432 on 127.0.0.1 only")
env = pg.get("environment", {})
check(str(env.get("POSTGRES_PASSWORD", "")).startswith("${POSTGRES_PASSWORD:?"), "the postgres password comes from .env, required")
check("./.docker/postgres-data:/var/lib/postgresql/data" in pg.get("volumes", []), "postgres data volume")
check("pg_isready -U" in " ".join(pg.get("healthcheck", {}).get("test", [])), "postgres healthcheck uses pg_isready -U")
check(redis.get("image") == "redis:7-alpine", "redis image is redis:7-alpine")
check(redis.get("ports", []) == ["127.0.0.1:6379:6379"], "redis publishes 6379 on 127.0.0.1 only")
command = redis.get("command", [])
command = " ".join(command) if isinstance(command, list) else command
check("redis-server" in command and "--appendonly yes" in command, "redis runs with --appendonly yes")
check("--requirepass ${REDIS_PASSWORD:?" in command, "redis requires the password from .env")
check("noeviction" in command and "--maxmemory " in command, "redis has maxmemory with noeviction")
app_env = app.get("environment", {})
check("${REDIS_PASSWORD}" in app_env.get("REDIS_URL", "") and "${POSTGRES_PASSWORD}" in app_env.get("DATABASE_URL", ""),
      "the app's URLs carry the .env passwords")
check("./.docker/redis-data:/data" in redis.get("volumes", []), "redis data volume")
check(app.get("build", {}).get("dockerfile") == "Dockerfile", "app is built from the Dockerfile")
check(app.get("env_file") == ".env", "app reads .env")
for dep in ("postgres", "redis"):
    check(app.get("depends_on", {}).get(dep, {}).get("condition") == "service_healthy", f"app waits for {dep} healthy")

# Profile `cluster`: six cluster nodes with AOF and the password (masterauth
# too), one service that joins them, and a gateway on them.
nodes = [services.get(f"redis-node-{i}", {}) for i in range(1, 7)]
for i, node in enumerate(nodes, 1):
    cmd = " ".join(node.get("command", []))
    check(node.get("profiles") == ["cluster"], f"redis-node-{i} is in profile cluster")
    check("--cluster-enabled yes" in cmd and "--appendonly yes" in cmd and "--masterauth ${REDIS_PASSWORD:?" in cmd,
          f"redis-node-{i} runs in cluster mode with AOF and the password")
    check(f"./.docker/redis-cluster/{i}:/data" in node.get("volumes", []), f"redis-node-{i} has its own data volume")
    check(not node.get("ports"), f"redis-node-{i} is not published")
init = services.get("redis-cluster-init", {})
check("--cluster create" in " ".join(init.get("command", [])) and "--cluster-replicas 1" in " ".join(init.get("command", [])),
      "redis-cluster-init creates 3 masters + 3 replicas")
cluster_app = services.get("app-cluster", {})
check(cluster_app.get("environment", {}).get("REDIS_CLUSTER_NODES", "").count("redis-node-") == 6,
      "app-cluster is given the six nodes")
check(cluster_app.get("depends_on", {}).get("redis-cluster-init", {}).get("condition") == "service_completed_successfully",
      "app-cluster waits for the cluster to be created")

dockerfile = (root / "Dockerfile").read_text()
stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I)
check(stages == ["base", "deps", "builder", "runner"], f"stages base→deps→builder→runner (found {stages})")
check("cargo build --release" in dockerfile, "the Dockerfile builds with cargo build --release")
check("cargo build --release" in (root / "scripts" / "start").read_text(), "scripts/start builds the same way")
runner = dockerfile.split("AS runner", 1)[-1]
check(re.search(r"^USER\s+(?!root)\S+", runner, re.M) is not None, "the runner stage runs as non-root")
check("HEALTHCHECK" in runner, "the runner stage has a HEALTHCHECK")
check("COPY Cargo.toml Cargo.lock" in dockerfile.split("AS builder", 1)[0], "dependencies are cached apart from sources")

readme = (root / "README.md").read_text()
for line in (root / ".env.example").read_text().splitlines():
    m = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
    if m:
        check(f"`{m.group(1)}`" in readme, f".env.example's {m.group(1)} is in the README")

for f in failures:
    print(f"docker files: FAILED: {f}")
print(f"docker files: {'ok' if not failures else 'failed'} ({len(failures)} problems)")
sys.exit(1 if failures else 0)
