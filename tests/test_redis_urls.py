"""Cluster and Sentinel URLs (syncfetch._stores.redis_urls): parsing, clients, no password shown."""

from __future__ import annotations

import contextlib
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import syncfetch
from syncfetch._stores import make_limiter
from syncfetch._stores.redis_urls import (
    LazyCluster,
    RedisURL,
    connection_kwargs,
    make_client,
    parse_url,
)

pytest.importorskip("redis")


def test_cluster_url_with_credentials_and_many_nodes() -> None:
    spec = parse_url("rediss+cluster://me:p%40ss@a.example:7000,10.0.0.2:7001,[::1]:7002")
    assert spec == RedisURL(
        kind="cluster",
        nodes=(("a.example", 7000), ("10.0.0.2", 7001), ("::1", 7002)),
        username="me",
        password="p@ss",
        tls=True,
    )
    kwargs = connection_kwargs(spec)
    assert kwargs["ssl"] is True and kwargs["password"] == "p@ss" and kwargs["username"] == "me"
    assert "p@ss" not in repr(spec)


def test_sentinel_url_service_db_and_options() -> None:
    spec = parse_url(
        "redis+sentinel://:pw@s1:26379,s2:26380/my%20service/3"
        "?sentinel_password=spw&ssl_cert_reqs=none"
    )
    assert spec.kind == "sentinel" and spec.service == "my service" and spec.db == 3
    assert spec.nodes == (("s1", 26379), ("s2", 26380))
    assert spec.username is None and spec.password == "pw" and not spec.tls
    assert spec.option("sentinel_password") == "spw"
    assert "ssl" not in connection_kwargs(spec)  # TLS options apply with rediss+ only


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://h", "expected host:port"),
        ("redis+cluster://h:0", "expected host:port"),
        ("redis+cluster://h:99999", "expected host:port"),
        ("redis+cluster://h:1/0", "no path"),
        ("redis+cluster://h:1?foo=1", "unknown parameter"),
        ("redis+cluster://h:1?sentinel_password=x", "unknown parameter"),
        ("rediss+cluster://h:1?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis+sentinel://h:1", "service_name"),
        ("redis+sentinel://h:1/svc/x", "database must be a number"),
        ("redis+sentinel://h:1/a/1/2", "service_name"),
        ("redis+sentinel://u:secret@h:1/svc/x", "database"),
        ("redis+cluster://u:secret@h:x", "expected host:port"),
        ("redis+cluster://u:secret@[::1:1", "unparsable"),
    ],
)
def test_bad_urls_name_the_problem_never_the_password(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_url(url)
    assert "secret" not in str(info.value)


def test_session_rejects_a_bad_cluster_url_at_once() -> None:
    with pytest.raises(ValueError, match="expected host:port"):
        syncfetch.Session("1/s", store="redis+cluster://u:secret@nohost")


def test_clients_are_built_without_connecting() -> None:
    cluster = make_client("redis+cluster://u:pw@127.0.0.1:1")
    assert isinstance(cluster, LazyCluster)  # the slot map is asked for at first use
    cluster.close()
    sentinel = make_client("rediss+sentinel://127.0.0.1:1/svc/2?ssl_cert_reqs=none")
    assert sentinel.connection_pool.service_name == "svc"
    assert sentinel.connection_pool.connection_kwargs["db"] == 2
    sentinel.close()
    limiter = make_limiter(
        "redis+sentinel://u:pw@127.0.0.1:1/svc", [], margin=0, on_backend_error="raise"
    )
    assert "pw" not in limiter.name and "127.0.0.1:1/svc" in limiter.name
    limiter.close()


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_host = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)


@given(
    user=_text,
    password=_text,
    nodes=st.lists(st.tuples(_host, st.integers(1, 65535)), min_size=1, max_size=4),
    tls=st.booleans(),
    cluster=st.booleans(),
    service=_text.filter(lambda s: s.strip("/") != ""),
)
def test_round_trip(
    user: str,
    password: str,
    nodes: list[tuple[str, int]],
    tls: bool,
    cluster: bool,
    service: str,
) -> None:
    scheme = ("rediss" if tls else "redis") + ("+cluster" if cluster else "+sentinel")
    where = ",".join(f"{h}:{p}" for h, p in nodes)
    path = "" if cluster else "/" + quote(service, safe="")
    url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{where}{path}"
    spec = parse_url(url)
    assert spec.nodes == tuple(nodes) and spec.tls == tls
    assert spec.password == password and spec.username == (user or None)
    assert spec.service == ("" if cluster else service)


@given(st.text(max_size=60))
def test_any_text_is_parsed_or_rejected_with_value_error(text: str) -> None:
    for prefix in ("redis+cluster://", "rediss+sentinel://", ""):
        with contextlib.suppress(ValueError):
            parse_url(prefix + text)
