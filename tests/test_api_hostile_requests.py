"""Hostile or malformed requests get a 4xx naming the problem: never a 500 with a
traceback, never an event loop kept busy.

Asked of the API in this process (the `api` fixture, support.app); a login that must
reach a registry asks a fake one (support.fakes) that challenges every request.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from support.app import in_process_api
from support.fakes import Reply, Request, serve

LONE_SURROGATE = "\\ud800"  # as JSON text: an escape that pairs with nothing


def refusal(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["message"]
    return message


def registry_auth(entry: str) -> str:
    """An X-Registry-Auth header of the JSON text `entry`."""
    return base64.urlsafe_b64encode(entry.encode()).decode()


def one_file_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return buffer.getvalue()


async def _challenge(request: Request) -> Reply:
    """Every request needs a login: the client's credentials are used at once."""
    return Reply(401, {"WWW-Authenticate": 'Basic realm="fake"'}, b"{}")


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The API, and the host of a registry that asks for a Basic login."""
    async with serve(_challenge) as server:
        host = f"127.0.0.1:{server.port}"
        async with in_process_api(tmp_path / "api", insecure_registries=[host]) as client:
            yield client, host


async def test_an_api_version_too_long_for_a_number_is_too_new(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/v1.{'9' * 5000}/images/json")

    assert "is too new" in refusal(response)


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
@pytest.mark.parametrize(("method", "path"), [("GET", "/images/json"), ("POST", "/images/prune")])
async def test_an_until_its_zone_moves_out_of_range_is_refused(
    api: httpx.AsyncClient, method: str, path: str, moment: str
) -> None:
    filters = json.dumps({"until": [moment]})
    response = await api.request(method, path, params={"filters": filters})

    assert "invalid value for 'until' filter" in refusal(response)
    assert "out of range" in refusal(response)


async def test_a_long_run_of_digits_as_until_is_refused_at_once(api: httpx.AsyncClient) -> None:
    # Read on the event loop (prune): a quadratic backtrack took ~20 s for these digits.
    filters = json.dumps({"until": ["1" * 30_000 + "x"]})
    started = time.monotonic()
    response = await api.post("/images/prune", params={"filters": filters})

    assert "invalid value for 'until' filter" in refusal(response)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("bound", ["since", "until"])
async def test_an_events_bound_with_thousands_of_digits_is_refused(
    api: httpx.AsyncClient, bound: str
) -> None:
    params = {"since": "1", "until": "2", bound: "1" * 5000}
    response = await api.get("/events", params=params)

    assert f"invalid {bound} value" in refusal(response)


@pytest.mark.parametrize(
    "filters",
    [
        f'{{"{LONE_SURROGATE}": []}}',
        f'{{"dangling": ["{LONE_SURROGATE}"]}}',
        f'{{"label": ["{LONE_SURROGATE}"]}}',
    ],
)
async def test_filters_with_a_lone_surrogate_are_refused(
    api: httpx.AsyncClient, filters: str
) -> None:
    response = await api.get("/images/json", params={"filters": filters})

    assert "unpaired UTF-16 surrogate" in refusal(response)


@pytest.mark.parametrize(
    "platform",
    [
        f'{{"os": "{LONE_SURROGATE}", "architecture": "amd64"}}',
        '{"os": "linux", "architecture": "amd64/v2/x"}',
        '{"os": "linux", "architecture": "arm", "variant": "v7\\n"}',
    ],
)
async def test_a_json_platform_is_checked_as_the_os_arch_form_is(
    api: httpx.AsyncClient, platform: str
) -> None:
    imported = await api.post(
        "/images/create", params={"fromSrc": "-", "repo": "hostile/app:v1"}, content=one_file_tar()
    )
    assert imported.status_code == 200, imported.text

    save = await api.get("/images/hostile/app:v1/get", params={"platform": platform})
    push = await api.post("/images/hostile/app/push", params={"tag": "v1", "platform": platform})

    assert "invalid platform" in refusal(save)
    assert "invalid platform" in refusal(push)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"username": "\ud800", "password": "x"}, "username"),
        ({"username": "ann", "password": "\ud800"}, "password"),
        ({"registrytoken": "t\r\nX-Injected: 1"}, "registrytoken"),
        ({"registrytoken": "tökén"}, "registrytoken"),
    ],
)
async def test_a_registry_login_that_cannot_be_sent_is_refused_before_the_pull(
    guarded: tuple[httpx.AsyncClient, str], entry: dict[str, str], field: str
) -> None:
    api, host = guarded
    header = registry_auth(json.dumps(entry))  # ASCII: json.dumps escapes the surrogate
    response = await api.post(
        "/images/create",
        params={"fromImage": f"{host}/team/app", "tag": "v1"},
        headers={"X-Registry-Auth": header},
    )

    message = refusal(response)
    assert "X-Registry-Auth" in message
    assert repr(field) in message


async def test_a_login_check_with_a_password_that_is_not_text_is_refused(
    guarded: tuple[httpx.AsyncClient, str],
) -> None:
    api, host = guarded
    body = f'{{"username": "ann", "password": "{LONE_SURROGATE}", "serveraddress": "{host}"}}'
    response = await api.post("/auth", content=body)

    assert "unpaired UTF-16 surrogate" in refusal(response)


async def test_distribution_inspect_ignores_a_login_that_cannot_be_sent(
    guarded: tuple[httpx.AsyncClient, str],
) -> None:
    api, host = guarded
    header = registry_auth(f'{{"username": "{LONE_SURROGATE}", "password": "x"}}')
    response = await api.get(
        f"/distribution/{host}/team/app:v1/json", headers={"X-Registry-Auth": header}
    )

    # As without a login (dockerd ignores a header it cannot read): the registry's
    # refusal, not a crash while making its Authorization header.
    refusal(response, 401)


async def test_distribution_inspect_of_a_full_image_id_is_the_clients_mistake(
    api: httpx.AsyncClient,
) -> None:
    response = await api.get(f"/distribution/{'a' * 64}/json")

    assert refusal(response) == "no manifest found for full image ID"
