#!/usr/bin/env bash
# Checks docker-compose.yml and the Dockerfile for shape (no Docker engine is
# needed): every service has an image or a build, the Dockerfile has a FROM.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import re, sys
# A tiny YAML reader is enough for the shape check and needs no PyYAML.
try:
    import yaml
    doc = yaml.safe_load(open("docker-compose.yml"))
    services = doc.get("services") or {}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"docker-compose.yml: service {name} has neither image nor build"
    n = len(services)
except ImportError:
    text = open("docker-compose.yml").read()
    assert re.search(r"^services:", text, re.M), "docker-compose.yml: no services"
    n = len(re.findall(r"^  [A-Za-z0-9_-]+:\s*$", text.split("services:",1)[1], re.M))
assert n > 0, "docker-compose.yml: no services"
print("docker-compose.yml: %d services" % n)
PY
grep -qE '^FROM ' Dockerfile || { echo "Dockerfile: no FROM" >&2; exit 1; }
