"""The public surface: what ``import liveswap`` offers, and that it stays what it says."""

from __future__ import annotations

import importlib
import inspect

import liveswap


def test_all_lists_the_public_names() -> None:
    assert sorted(liveswap.__all__) == [
        "AppLoadError",
        "BindError",
        "ConfigError",
        "ControlError",
        "Group",
        "LiveswapError",
        "NoInstanceError",
        "__version__",
        "serve",
    ]
    for name in liveswap.__all__:
        assert getattr(liveswap, name) is not None


def test_lazy_names_stay_what_they_are_on_every_access() -> None:
    # A public submodule liveswap.serve once replaced the function with the module whenever
    # something imported it; the module is private now.
    importlib.import_module("liveswap._serve")
    for _ in range(2):
        assert inspect.isfunction(liveswap.serve)
        assert inspect.isclass(liveswap.Group)
