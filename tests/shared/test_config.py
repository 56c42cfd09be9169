from __future__ import annotations

import pytest

from services.compute.settings import ComputeSettings
from shared.config import SettingsError, load_settings, unknown_variables


class TestSettings:
    def test_defaults_are_usable_in_dev(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for var in ("DCOSTACK_HTTP_PORT", "DCOSTACK_ENV", "DCOSTACK_DATABASE_SCHEMA"):
            monkeypatch.delenv(var, raising=False)
        s = load_settings(ComputeSettings)
        assert (s.port, s.db_schema) == (8082, "compute")

    def test_every_problem_is_reported_at_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DCOSTACK_HTTP_PORT", "x")
        monkeypatch.setenv("DCOSTACK_KAFKA_PARTITIONS", "0")
        with pytest.raises(SettingsError) as info:
            load_settings(ComputeSettings)
        assert "DCOSTACK_HTTP_PORT (got 'x')" in str(info.value)
        assert "DCOSTACK_KAFKA_PARTITIONS (got '0')" in str(info.value)

    def test_prod_refuses_the_development_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DCOSTACK_ENV", "prod")
        monkeypatch.delenv("DCOSTACK_SECRET_KEY", raising=False)
        with pytest.raises(SettingsError, match="DCOSTACK_SECRET_KEY"):
            load_settings(ComputeSettings)

    def test_misspelt_variable_is_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DCOSTACK_KAFKA_BOOTSTRAP_SERVER", "x:9092")
        assert "DCOSTACK_KAFKA_BOOTSTRAP_SERVER" in unknown_variables(ComputeSettings)
        monkeypatch.setenv("DCOSTACK_CLOUD", "devcloud")
        assert "DCOSTACK_CLOUD" not in unknown_variables(ComputeSettings)
