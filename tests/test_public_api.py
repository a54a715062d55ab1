import pickle
import types

import requests

import syncfetch


def test_all_is_sorted_and_matches_exports() -> None:
    assert syncfetch.__all__ == sorted(syncfetch.__all__)
    # Optional integrations (syncfetch.flask, syncfetch.django) are submodules, not exports.
    public = {
        name
        for name, obj in vars(syncfetch).items()
        if not name.startswith("_") and not isinstance(obj, types.ModuleType)
    }
    public.add("__version__")
    assert set(syncfetch.__all__) == public


def test_every_public_callable_has_a_docstring() -> None:
    for name in syncfetch.__all__:
        obj = getattr(syncfetch, name)
        if callable(obj):
            assert obj.__doc__, name


def test_exceptions_fit_requests_hierarchy() -> None:
    assert issubclass(syncfetch.RateLimitExceeded, requests.RequestException)
    assert issubclass(syncfetch.DeadlineExceeded, requests.Timeout)


def test_rate_limit_exceeded_pickles_with_its_fields() -> None:
    exc = syncfetch.RateLimitExceeded("busy", key="http://a:80", retry_after=1.5)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.key, copy.retry_after, str(copy)) == ("http://a:80", 1.5, "busy")


def test_py_typed_is_shipped() -> None:
    from importlib import resources

    assert resources.files("syncfetch").joinpath("py.typed").is_file()
