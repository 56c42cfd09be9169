"""The order of a run's steps, pure: removals and rollbacks, without a database or a broker."""

from __future__ import annotations

from services.planner.plans.compiler import Graph, Step, compile_plan
from services.planner.plans.spec import validate_plan
from services.planner.runs.ordering import collapse, destroy_after, destroy_order, reverse_edges
from tests.planner.test_runs_lifecycle import web_plan


class TestOrdering:
    """The pure ordering rules removals and rollbacks use."""

    def test_removal_order_reverses_the_dependencies_through_keys_that_stay(self) -> None:
        graph = compile_plan(validate_plan(web_plan(3)))
        keys = {k for k in graph.steps if k.endswith(("web-1", "web-2", "web-1/data", "web-2/data"))}
        after = destroy_after(keys, [graph], {}).after
        order = destroy_order(after)
        assert set(order) == keys
        for key in order:
            for dep in graph.steps[key].after & keys:
                assert order.index(key) < order.index(dep)
        assert order.index("server/web-2") < order.index("server/web-1")

    def test_collapse_keeps_transitive_dependencies_through_dropped_keys(self) -> None:
        after = {"a": set(), "b": {"a"}, "c": {"b"}}
        assert collapse(after, {"a", "c"}) == {"a": set(), "c": {"a"}}
        assert reverse_edges({"a": set(), "c": {"a"}}) == {"a": frozenset({"c"}), "c": frozenset()}

    def test_keys_no_version_explains_are_ordered_by_kind(self) -> None:
        kinds = {"server/x-1": "server", "member/lb/x-1": "member", "volume/x-1/d": "volume"}
        order = destroy_order(destroy_after(set(kinds), [], kinds).after)
        assert order == ["member/lb/x-1", "server/x-1", "volume/x-1/d"]

    def test_a_version_whose_dependencies_contradict_a_newer_one_is_skipped_and_said_so(self) -> None:
        def graph(**after: str) -> Graph:
            return Graph(
                {k: Step(k, "network", "network", "$", after=frozenset([v] if v else [])) for k, v in after.items()}
            )

        newer = graph(a="", b="a")  # b after a
        older = graph(a="b", b="")  # a after b: contradicts
        oldest = graph(a="", b="", c="b")
        ordered = destroy_after({"a", "b", "c"}, [newer, older, oldest], {})
        assert ordered.skipped == (1,)
        assert destroy_order(ordered.after) == ["c", "b", "a"]
