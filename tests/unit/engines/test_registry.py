"""The plain registry behind every extension point: a dict filled by a decorator that refuses duplicates."""

from __future__ import annotations

import pytest

from deepsift.engines.registry import Registry


def test_register_returns_the_entry_and_makes_it_gettable() -> None:
    # Given an empty registry
    registry: Registry[object] = Registry("widget")

    # When an entry is registered with the decorator
    def build() -> str:
        return "built"

    returned = registry.register("b")(build)

    # Then the decorator hands back the same object and the registry finds it by name
    assert returned is build
    assert registry.get("b") is build
    assert "b" in registry and "a" not in registry


def test_duplicate_name_is_refused_and_the_first_entry_kept() -> None:
    # Given a registry with an entry named "x"
    registry: Registry[int] = Registry("widget")
    registry.register("x")(1)

    # When a second entry is registered under the same name, then it is refused
    with pytest.raises(ValueError, match="widget 'x' is already registered"):
        registry.register("x")(2)

    # And the first entry is untouched
    assert registry.get("x") == 1


def test_unknown_name_lists_the_registered_ones() -> None:
    # Given a registry with two entries
    registry: Registry[int] = Registry("widget")
    registry.register("beta")(2)
    registry.register("alpha")(1)

    # When an unknown name is looked up, then the error names the kind and what is registered
    with pytest.raises(KeyError, match="unknown widget 'gamma'; registered: alpha, beta"):
        registry.get("gamma")


def test_unknown_name_in_an_empty_registry_says_none() -> None:
    with pytest.raises(KeyError, match="registered: none"):
        Registry[int]("widget").get("anything")


def test_names_and_iteration_are_sorted() -> None:
    # Given entries registered out of order
    registry: Registry[int] = Registry("widget")
    for i, name in enumerate(["c", "a", "b"]):
        registry.register(name)(i)

    # Then names() and iteration list them sorted
    assert registry.names() == ["a", "b", "c"]
    assert list(registry) == ["a", "b", "c"]


def test_registries_are_independent() -> None:
    # Given two registries of different kinds
    first: Registry[int] = Registry("first")
    second: Registry[int] = Registry("second")

    # When both register the same name, then neither refuses it
    first.register("same")(1)
    second.register("same")(2)
    assert (first.get("same"), second.get("same")) == (1, 2)
