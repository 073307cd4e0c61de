"""The wire-format rules of cargohold.schemas, without a server: strict about declared keys and types,
tolerant of keys it does not know, and an exact round trip (tests/test_schemas_contract.py checks every
route of a real server against its schema)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cargohold.schemas import Build, BuildPage, HistoryEvent, Permission, Project, Usage, Whoami
from cargohold.schemas.wire import Schema, SchemaError, optional_key


def build_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "b7q2abcdef",
        "project_id": "p4f2abc9de",
        "status": "saved",
        "created_at": "2025-01-31T12:00:00Z",
        "saved_at": "2025-01-31T12:01:00Z",
        "expires_at": None,
        "pinned": False,
        "digest": "sha256:" + "a" * 64,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "platforms": ["linux/amd64"],
        "targets": {},
        "total_size": 31337,
        "unique_size": 1000,
        "provenance": {"repository": "octo-org/app", "reported_by_client": "true"},
        "failure": None,
        "created_by": "ci",
        "save_tags": ["main"],
        "reference": "127.0.0.1:5000/p4f2abc9de:b7q2abcdef",
    }
    data.update(changes)
    return data


def test_a_build_reads_into_typed_fields() -> None:
    build = Build.from_json(build_json())
    assert build.saved_at == datetime(2025, 1, 31, 12, 1, tzinfo=UTC)
    assert build.expires_at is None and build.total_size == 31337 and build.platforms == ["linux/amd64"]
    assert build.unread() == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pinned": 1}, "Build.pinned must be true or false, not an integer"),
        ({"total_size": True}, "Build.total_size must be an integer, not true"),
        ({"total_size": "5"}, "Build.total_size must be an integer, not a string"),
        ({"status": None}, "Build.status must not be null"),
        ({"platforms": "linux/amd64"}, "Build.platforms must be a list, not a string"),
        ({"platforms": ["linux/amd64", 3]}, "Build.platforms[1] must be a string, not an integer"),
        ({"targets": {"app": None}}, "Build.targets.app must not be null"),
        ({"saved_at": "yesterday"}, "Build.saved_at must be an ISO 8601 time, not 'yesterday'"),
        ({"created_at": 1700000000}, "Build.created_at must be an ISO 8601 time, not an integer"),
    ],
)
def test_a_declared_key_with_the_wrong_type_is_refused_naming_its_path(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(message)):
        Build.from_json(build_json(**changes))


def test_a_missing_key_is_refused() -> None:
    data = build_json()
    del data["reference"]
    with pytest.raises(SchemaError, match="Build has no 'reference'"):
        Build.from_json(data)
    with pytest.raises(SchemaError, match=re.escape("BuildPage.builds[0] has no 'reference'")):
        BuildPage.from_json({"builds": [data]})
    with pytest.raises(SchemaError, match="Build must be a JSON object, not a list"):
        Build.from_json([])


def test_unknown_keys_from_a_newer_server_are_kept_and_written_back_in_place() -> None:
    data = build_json(attestations=["sbom"])
    data = {"zone": "eu", **data}
    page = {"builds": [data], "cursor_hint": {"kind": "id"}, "next": "b7q2abcdef"}
    parsed = BuildPage.from_json(page)
    assert parsed.builds[0].id == "b7q2abcdef"
    assert parsed.unread() == ["BuildPage.cursor_hint", "BuildPage.builds[0].zone", "BuildPage.builds[0].attestations"]
    assert json.dumps(parsed.to_json()) == json.dumps(page), "same keys, same values, same order"


def test_the_round_trip_keeps_key_order_the_server_chose() -> None:
    # The server writes a token's permissions as stored (keys sorted), whoami's in declaration order.
    stored_order = {"actions": ["pull"], "build_id": None, "project": "p1"}
    assert json.dumps(Permission.from_json(stored_order).to_json()) == json.dumps(stored_order)
    declared = Permission(project="p1", actions=["pull"], build_id=None)
    assert list(declared.to_json()) == ["project", "actions", "build_id"]


def test_optional_keys_stay_absent_or_present_as_sent() -> None:
    project = {
        "id": "p1",
        "name": "web",
        "created_at": "2025-01-31T12:00:00Z",
        "retention_seconds": None,
        "max_builds": 50,
    }
    parsed = Project.from_json(project)
    assert parsed.registry is None and parsed.to_json() == project
    with_registry = Project.from_json({**project, "registry": "h:5000/p1"})
    assert with_registry.registry == "h:5000/p1" and "registry" in with_registry.to_json()
    page = BuildPage.from_json({"builds": [], "next": None})
    assert page.to_json() == {"builds": [], "next": None}
    assert BuildPage(builds=[]).to_json() == {"builds": []}


def test_objects_built_in_code_write_declaration_order() -> None:
    build = Build.from_json(build_json())
    rebuilt = replace(build, wire_order=(), pinned=True)
    assert list(rebuilt.to_json()) == list(build_json())
    assert rebuilt.to_json()["pinned"] is True
    assert rebuilt == replace(build, pinned=True), "the bookkeeping fields do not take part in equality"


def test_numbers_keep_their_json_form_and_free_form_json_passes_through() -> None:
    usage = {
        "project_id": "p1",
        "month": "2025-01",
        "stored_bytes": 0,
        "byte_hours": 0.0,
        "gb_months": 0.0,
        "free_gb_months": 1,
        "billable_gb_months": 0.0,
        "price_per_gb_month": 0.02,
        "estimated_cost": 0.0,
        "currency": "USD",
        "as_of": "2025-01-31T12:00:00Z",
    }
    assert json.dumps(Usage.from_json(usage).to_json()) == json.dumps(usage), "1 stays 1, not 1.0"
    with pytest.raises(SchemaError, match=re.escape("Usage.gb_months must be a number, not false")):
        Usage.from_json({**usage, "gb_months": False})
    event = {
        "id": 3,
        "project_id": "p1",
        "build_id": None,
        "action": "evict",
        "rule": "manual",
        "actor": "admin",
        "at": "2025-01-31T12:00:00Z",
        "detail": {"via": "registry", "tags": ["main"], "nested": {"n": 1.5}},
        "message": "evicted",
    }
    assert HistoryEvent.from_json(event).detail["nested"] == {"n": 1.5}
    assert HistoryEvent.from_json(event).to_json() == event


def test_times_must_carry_what_the_wire_promises() -> None:
    who = {
        "kind": "oidc",
        "name": "github:octo-org/app run 1/1",
        "credential_id": "k3",
        "permissions": [{"project": "p1", "actions": ["pull", "push"], "build_id": None}],
        "admin_permissions": [],
        "expires_at": "2025-01-31T13:00:00Z",
    }
    parsed = Whoami.from_json(who)
    assert parsed.expires_at == datetime(2025, 1, 31, 13, tzinfo=UTC)
    assert parsed.permissions[0].actions == ["pull", "push"]
    assert parsed.to_json() == who


def test_schemas_hold_only_the_wire_types() -> None:
    @dataclass(frozen=True)
    class Odd(Schema):
        value: set[str]

    with pytest.raises(TypeError, match="cannot hold"):
        Odd.from_json({"value": []})

    @dataclass(frozen=True)
    class Either(Schema):
        value: int | str

    with pytest.raises(TypeError, match=re.escape("only X | None")):
        Either.from_json({"value": 1})

    @dataclass(frozen=True)
    class Sometimes(Schema):
        value: int | None = optional_key()

    assert Sometimes.from_json({}).value is None and Sometimes.from_json({}).to_json() == {}


CONTROL_PLANE = Path(__file__).resolve().parents[1] / "src" / "cargohold" / "server" / "control"


def test_the_control_plane_answers_only_through_the_schemas() -> None:
    """Every ``/api/v1`` answer is a :mod:`cargohold.schemas` object sent by ``render.respond``: a dict built by
    hand in a handler is how pin/extend once answered a 7-key build while GET answered 17."""
    by_hand = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(CONTROL_PLANE.glob("*.py"))
        if path.name != "render.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "json_response(" in line
    ]
    assert by_hand == []
