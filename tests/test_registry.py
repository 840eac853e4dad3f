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
    # the first lookup imports the plug-in packages (nothing else needs importing)
    assert "bipartite" in MATCHING.names()
    assert {"constant", "list", "linear", "decreasing", "increasing", "flops"} <= set(
        SCHEDULES.names())
    assert {"proportional", "plain"} <= set(ATTENTION.names())


def test_plugin_packages_are_imported_on_the_first_lookup(tmp_path, monkeypatch):
    import sys

    (tmp_path / "widget_plugins.py").write_text(
        "from test_registry import WIDGETS\n"
        "WIDGETS.register('beta')(len)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "test_registry", sys.modules[__name__])
    monkeypatch.delitem(sys.modules, "widget_plugins", raising=False)
    reg = Registry("widget", ["widget_plugins"])
    monkeypatch.setattr(sys.modules[__name__], "WIDGETS", reg, raising=False)
    reg.register("alpha")(min)  # registering imports nothing
    assert "widget_plugins" not in sys.modules
    assert reg.names() == ["alpha", "beta"] and "widget_plugins" in sys.modules
    assert reg.get("beta") is len


def test_the_dataset_registry_names_the_tasks_only_as_a_string():
    """The lower floors import the tasks through the registry's plug-in list, not by name."""
    from tome_lab.registry import DATASETS, TIMM_MODELS

    assert "tome_lab.tasks" in DATASETS.plugins and "tome_lab.tasks" in TIMM_MODELS
    assert {"clutter", "moving_digits", "moving_digits_dir", "spoken_digits", "mnist5k"} <= set(
        DATASETS.names())
