"""The Flask and Django examples serve ``/metrics`` when prometheus_client is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FLASK = """
import sys
sys.path.insert(0, "examples")
from upstream import StrictUpstream
import flask_app
with StrictUpstream(limit=20) as up:
    flask_app.app.config["UPSTREAM_URL"] = up.url
    client = flask_app.app.test_client()
    assert client.get("/items/1").status_code == 200
    r = client.get("/metrics")
print(r.status_code, r.headers["Content-Type"])
print(r.get_data(as_text=True))
"""

DJANGO = """
import os, sys
sys.path.insert(0, "examples/django_project")
sys.path.insert(0, "examples")
os.environ["DJANGO_SETTINGS_MODULE"] = "demo.settings"
from upstream import StrictUpstream
with StrictUpstream(limit=20) as up:
    os.environ["UPSTREAM_URL"] = up.url
    import django
    django.setup()
    from django.test.utils import setup_test_environment
    setup_test_environment()
    from django.test import Client
    client = Client()
    assert client.get("/items/1").status_code == 200
    r = client.get("/metrics")
print(r.status_code, r["Content-Type"])
print(r.content.decode())
"""


@pytest.mark.slow
@pytest.mark.parametrize("script", [FLASK, DJANGO], ids=["flask", "django"])
def test_example_app_serves_metrics(script: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    first, _, text = proc.stdout.partition("\n")
    assert first.startswith("200 text/plain"), proc.stdout
    assert 'syncfetch_attempts_total{key="http://127.0.0.1:' in text, text
    assert 'outcome="200"} 1.0' in text, text
