#!/usr/bin/env python3
"""Django's command-line utility, for the syncfetch demo project.

One command each, from anywhere::

    python examples/django_project/manage.py fetch_batch   # a batch through session.map
    python examples/django_project/manage.py runserver     # GET /items/<id> through syncfetch

Unless ``UPSTREAM_URL`` is set, a strict demo upstream (20 requests per sliding second,
429 above that; ``examples/upstream.py``) is started first, in this process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    upstream = None
    if "UPSTREAM_URL" not in os.environ:
        # Demo only. runserver's autoreloader re-runs this file in a child process,
        # which inherits UPSTREAM_URL and so uses the parent's upstream.
        sys.path.append(str(Path(__file__).resolve().parent.parent))
        from upstream import StrictUpstream

        upstream = StrictUpstream(limit=20).start()
        os.environ["UPSTREAM_URL"] = upstream.url

    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    finally:
        if upstream is not None:
            print(
                f"demo upstream answered 429: {upstream.rejected} times (200: {upstream.served})",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
