"""The generic registry: registration, aliases, did-you-mean errors."""

from __future__ import annotations

import pytest

from tome_lab.registry import ATTENTION, MATCHING, SCHEDULES, Registry


def test_register_get_alias_and_errors():
    reg = Registry("widget")

    @reg.register("alpha", "a")
    def alpha():
        return 1

    assert reg.get("alpha") is alpha and reg.get("A") is alpha
    assert reg.names() == ["alpha"] and "a" in reg
    with pytest.raises(ValueError, match="Did you mean 'alpha'.*Valid: alpha"):
        reg.get("alpah")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(alpha)
    with pytest.raises(ValueError, match="must be a name"):
        reg.get(3)


def test_plugins_are_registered():
    import tome_lab  # noqa: F401  (importing fills the registries)

    assert "bipartite" in MATCHING.names()
    assert {"constant", "list", "linear", "decreasing", "increasing", "flops"} <= set(
        SCHEDULES.names())
    assert {"proportional", "plain"} <= set(ATTENTION.names())
