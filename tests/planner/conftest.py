from tests.fixtures.planner import planner

__all__ = ["planner"]
