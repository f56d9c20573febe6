"""compose/*.yml checked without a Docker engine: valid against the Compose
Specification's JSON schema (vendored in tests/data, see its README), every environment
variable given to a Meterline container is a setting the code reads (kernel/config.py),
every published port is bound to 127.0.0.1 only, and both service managers reach both
instances of their peers."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = sorted((ROOT / "compose").glob("*.yml"))
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
CONFIG_SOURCE = (ROOT / "src" / "meterline" / "kernel" / "config.py").read_text()


def _load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())  # resolves the anchors and `<<` merges
    assert isinstance(document, dict)
    return document


def _errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def _meterline_services(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in document["services"].items()
        if service.get("image") == "meterline:local" or "build" in service
    }


def test_there_is_a_compose_file() -> None:
    assert COMPOSE_FILES, "compose/*.yml not found"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_valid_against_the_compose_specification(path: Path) -> None:
    assert _errors(_load(path)) == []


def test_the_schema_check_refuses_a_broken_file() -> None:
    # The check itself must be able to fail: a port list written as one string.
    document = copy.deepcopy(_load(ROOT / "compose" / "docker-compose.yml"))
    document["services"]["rating-primary"]["ports"] = "127.0.0.1:50051:50051"
    document["services"]["rating-primary"]["restart_after"] = "1s"
    errors = _errors(document)
    assert any("ports" in error for error in errors), errors
    assert any("restart_after" in error for error in errors), errors


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_every_environment_variable_is_a_setting_the_code_reads(path: Path) -> None:
    unknown = {
        f"{name}: {variable}"
        for name, service in _meterline_services(_load(path)).items()
        for variable in service.get("environment", {})
        # load_settings reads each as env.get("NAME") or a helper's (env, "NAME").
        if f'"{variable}"' not in CONFIG_SOURCE
    }
    assert not unknown, f"not read by kernel/config.py: {sorted(unknown)}"


def _host_ip(port: Any) -> str:
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    text = str(port)
    parts = text.rsplit(":", 2)
    return parts[0].strip("[]") if len(parts) == 3 else ""


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_published_ports_are_on_loopback_only(path: Path) -> None:
    published = {
        f"{name}: {port}": _host_ip(port)
        for name, service in _load(path)["services"].items()
        for port in service.get("ports", [])
    }
    assert published, "no published ports found: the check would check nothing"
    wide = [entry for entry, host in published.items() if host != "127.0.0.1"]
    assert not wide, f"published on more than 127.0.0.1: {wide}"


def test_both_service_managers_use_both_instances_of_each_peer() -> None:
    document = _load(ROOT / "compose" / "docker-compose.yml")
    services = document["services"]
    managers = [name for name in services if name.startswith("service-")]
    assert len(managers) == 2
    for peer, variable in (
        ("rating", "METERLINE_RATING_PEERS"),
        ("billing", "METERLINE_BILLING_PEERS"),
    ):
        instances = [name for name in services if name.startswith(f"{peer}-")]
        assert len(instances) == 2
        for manager in managers:
            target = services[manager]["environment"][variable]
            found = re.fullmatch(r"dns:///([\w.-]+):(\d+)", target)
            assert found, f"{manager}: {variable}={target!r} is not one DNS name"
            name = found.group(1)
            for instance in instances:  # the name resolves to every instance
                aliases = services[instance]["networks"]["default"]["aliases"]
                assert name in aliases, f"{instance} does not answer to {name}"


def test_the_secret_file_is_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "compose/.env" in ignored
