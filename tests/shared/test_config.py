from __future__ import annotations

import pytest

from services.compute.settings import ComputeSettings
from shared.config import SettingsError, load_settings, unknown_variables


class TestSettings:
    def test_defaults_are_usable_in_dev_once_keystone_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for var in ("DCOSTACK_HTTP_PORT", "DCOSTACK_ENV", "DCOSTACK_DATABASE_SCHEMA", "DCOSTACK_AUTH_STRATEGY"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("DCOSTACK_KEYSTONE_URL", "http://keystone.example:5000/v3")
        s = load_settings(ComputeSettings)
        assert (s.port, s.db_schema, s.auth_strategy) == (8082, "compute", "keystone")

    def test_keystone_is_the_default_and_needs_its_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for var in ("DCOSTACK_AUTH_STRATEGY", "DCOSTACK_KEYSTONE_URL"):
            monkeypatch.delenv(var, raising=False)
        with pytest.raises(SettingsError, match="DCOSTACK_KEYSTONE_URL is not set.*DCOSTACK_AUTH_STRATEGY=noauth"):
            load_settings(ComputeSettings)

    def test_noauth_is_refused_in_production(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DCOSTACK_ENV", "prod")
        monkeypatch.setenv("DCOSTACK_SECRET_KEY", "a-real-secret-for-this-test")
        monkeypatch.setenv("DCOSTACK_AUTH_STRATEGY", "noauth")
        with pytest.raises(SettingsError, match="noauth lets any caller act in any project"):
            load_settings(ComputeSettings)

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
