"""``manage.py fetch_batch [--count N]``: fetch N items in one batch, within the rate limit."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from syncfetch.django import get_session


class Command(BaseCommand):
    help = "Fetch items from the upstream API through the process's syncfetch session."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=60, help="items to fetch (default 60)")

    def handle(self, *args: Any, count: int, **options: Any) -> None:
        urls = (f"{settings.UPSTREAM_URL}/items/{i}" for i in range(count))
        start = time.monotonic()
        failed = 0
        # map() runs the calls on the session's thread pool, yields one Result per URL
        # in input order, and never raises for one item: a failure is result.error.
        # The settings' max_wait (2 s) is for views; a batch may wait its turn.
        for result in get_session().map(urls, max_wait=None):
            if not result.ok:
                failed += 1
                self.stderr.write(str(result))
        took = time.monotonic() - start
        self.stdout.write(f"{count - failed} fetched, {failed} failed in {took:.1f} s")
