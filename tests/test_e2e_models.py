"""Every model_version end to end: a real ``easel serve`` against fake providers on loopback.

The fakes of :mod:`fake_providers` and :mod:`fake_modelark` run in threads of this process, so
what they were sent is checked here, while ``easel serve`` (API and in-process worker) is a child
process whose config points each backend's ``base_url`` at a fake and its ``api_key_env`` at a
test-only variable set for the child alone. Two servers run:

- *main*: every catalog model a hosted kind serves (``z_image``'s only kind is the local
  ``diffusers``; ``test_model_names`` serves it through the placeholder), each routed to the
  hosted kind its entry names. One task per model goes over HTTP (a reference uploaded through
  ``/v2/openapi/upload`` for the models that take images), its output is downloaded through
  ``output.generated_image`` and compared with the fake's image, and the fake's record shows
  the endpoint and provider model id used.
- *scenarios*: chains built to fail: a backend without a key (skipped) and one answering 503
  (retried, then left) before a backend that succeeds; a content-policy refusal that is final;
  a provider that rate-limits forever; models whose backends all lack keys (not served).

The child's backends reach only loopback: every ``base_url`` is a fake or a closed port.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from starlette.applications import Starlette

from easel.backends._remote import DEFAULT_RETRY
from easel.domain.catalog import CATALOG, ImageRule, ModelSpec
from fake_modelark import ARK_IMAGE, ARK_KEY, FakeModelArk, decode_reference
from fake_providers import (
    BFL_IMAGE,
    BFL_KEY,
    GEMINI_IMAGE,
    GEMINI_KEY,
    MJ_IMAGE,
    MJ_SECRET,
    OPENAI_IMAGE,
    OPENAI_KEY,
    FakeBfl,
    FakeGemini,
    FakeMidjourneyProxy,
    FakeOpenAI,
    gemini_blocked,
    openai_error,
)
from fakes import image_bytes
from loopback import serve_app
from processes import create_key, easel_process, free_port, wait_healthy

pytestmark = pytest.mark.e2e

CREDITS = 1000
WAIT_S = 60.0
PROMPT = "a brass teapot on a wooden table"
REFERENCE = image_bytes("PNG", (90, 160, 40), size=32)  # the uploaded reference image

# Test-only key variables, set for the child process alone; UNSET_KEY_ENV is never set.
OPENAI_KEY_ENV = "EASEL_E2E_OPENAI_KEY"
GEMINI_KEY_ENV = "EASEL_E2E_GEMINI_KEY"
BFL_KEY_ENV = "EASEL_E2E_BFL_KEY"
MJ_SECRET_ENV = "EASEL_E2E_MJ_SECRET"
ARK_KEY_ENV = "EASEL_E2E_ARK_KEY"
UNSET_KEY_ENV = "EASEL_E2E_UNSET_KEY"
CHILD_ENV = {
    OPENAI_KEY_ENV: OPENAI_KEY,
    GEMINI_KEY_ENV: GEMINI_KEY,
    BFL_KEY_ENV: BFL_KEY,
    MJ_SECRET_ENV: MJ_SECRET,
    ARK_KEY_ENV: ARK_KEY,
}

Table = dict[str, Any]


# --- config and server -------------------------------------------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for these plain values
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{json.dumps(key)} = {toml_value(item)}" for key, item in value.items())
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"no TOML for {value!r}")


def write_config(root: Path, backends: dict[str, Table], models: dict[str, Table]) -> Path:
    database_url = f"sqlite+aiosqlite:///{root / 'easel.db'}"
    storage_url = f"file://{root / 'objects'}"
    lines = [
        f"database_url = {toml_value(database_url)}",
        f"storage_url = {toml_value(storage_url)}",
        "poll_interval_s = 0.1",
    ]
    for name, table in backends.items():
        lines.append(f"\n[backends.{json.dumps(name)}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
    for version, table in models.items():
        lines.append(f"\n[models.{json.dumps(version)}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
    path = root / "easel.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


REMOTE_TIMEOUT_S = 30


def remote(kind: str, base_url: str, key_env: str) -> Table:
    """A ``[backends.…]`` table of a remote kind, with every key a remote kind takes."""
    return {
        "kind": kind,
        "base_url": base_url,
        "api_key_env": key_env,
        "timeout_s": REMOTE_TIMEOUT_S,
        "request_timeout_s": 20,
        "max_concurrency": 2,
    }


@dataclass
class Server:
    """A running ``easel serve`` and an HTTP client holding its API key."""

    http: httpx.Client
    log: Path

    def upload(self, data: bytes) -> str:
        response = self.http.post(
            "/v2/openapi/upload", files={"file": ("ref.png", data, "image/png")}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["data"]["image_token"]
        return token

    def submit(self, model_version: str, *, with_reference: bool = False) -> httpx.Response:
        body: Table = {"type": "generate_image", "model_version": model_version, "prompt": PROMPT}
        if with_reference:
            body["files"] = [{"type": "png", "file_token": self.upload(REFERENCE)}]
        return self.http.post("/v2/openapi/task", json=body)

    def run(self, model_version: str, *, with_reference: bool = False) -> dict[str, Any]:
        """Submit a task and wait for its final state."""
        response = self.submit(model_version, with_reference=with_reference)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["data"]["task_id"]
        deadline = time.monotonic() + WAIT_S
        while True:
            task: dict[str, Any] = self.http.get(f"/v2/openapi/task/{task_id}").json()["data"]
            assert task["task_id"] == task_id
            if task["status"] not in ("queued", "running"):
                return task
            assert time.monotonic() < deadline, f"{task}\n{self.log.read_text()}"
            time.sleep(0.2)  # the server's default rate limit holds: 20 requests a second

    def balance(self) -> dict[str, int]:
        data: dict[str, int] = self.http.get("/v2/openapi/user/balance").json()["data"]
        return data

    def output(self, task: dict[str, Any]) -> bytes:
        response = self.http.get(task["output"]["generated_image"])
        assert response.status_code == 200, response.text
        return response.content


@contextmanager
def easel_serve(
    root: Path, backends: dict[str, Table], models: dict[str, Table]
) -> Iterator[Server]:
    assert UNSET_KEY_ENV not in os.environ
    config = write_config(root, backends, models)
    key = create_key(config, CREDITS)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = root / "easel.log"
    with (
        easel_process(
            "serve", "--port", str(port), "--config", str(config), log=log, env=CHILD_ENV
        ) as proc,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http,
    ):
        wait_healthy(base_url, proc, log)
        yield Server(http, log)


class Fake(Protocol):
    def app(self) -> Starlette: ...


def serve_fakes(stack: ExitStack, *fakes: Fake) -> list[str]:
    """Start each fake's app on loopback until ``stack`` closes; their base URLs."""
    return [stack.enter_context(serve_app(fake.app())) for fake in fakes]


def attempts_of(task: dict[str, Any]) -> list[tuple[str, str]]:
    return [(attempt["backend"], attempt["outcome"]) for attempt in task["attempts"]]


def price(model_version: str) -> int:
    return CATALOG[model_version].credits


# --- every model_version, one backend each ------------------------------------------------------


@dataclass
class Providers:
    openai: FakeOpenAI = field(default_factory=FakeOpenAI)
    gemini: FakeGemini = field(default_factory=FakeGemini)
    bfl: FakeBfl = field(default_factory=FakeBfl)
    mj: FakeMidjourneyProxy = field(default_factory=FakeMidjourneyProxy)
    ark: FakeModelArk = field(default_factory=FakeModelArk)
    urls: dict[str, str] = field(default_factory=dict)  # by backend name, once serving

    def forget(self) -> None:
        """Drop what the fakes recorded so far."""
        self.openai.seen.clear()
        self.gemini.seen.clear()
        self.bfl.submits.clear()
        self.mj.submits.clear()
        self.ark.bodies.clear()


@dataclass(frozen=True)
class RoundTrip:
    model_version: str
    backend: str  # the backend's name in the config, which is also its kind here
    endpoint: str  # the provider endpoint that generates
    provider_model: str  # the provider's model id ("" where the provider has none)
    with_reference: bool

    @property
    def kind(self) -> str:
        return "midjourney-proxy" if self.backend == "midjourney" else self.backend


# Per hosted kind: the backend's name here and the endpoint a task reaches ({id}: the
# provider's model id); OpenAI's is the edits one, as a model that takes images gets one.
HOSTED_KINDS = {
    "openai": ("openai", "/v1/images/edits"),
    "gemini": ("gemini", "/v1beta/models/{id}:generateContent"),
    "bfl": ("bfl", "/v1/{id}"),
    "midjourney-proxy": ("midjourney", "/mj/submit/imagine"),
    "modelark": ("modelark", "/api/v3/images/generations"),
}


def round_trip(spec: ModelSpec) -> RoundTrip:
    """The task that shows a catalog entry end to end: on the hosted kind the entry names,
    with the entry's provider id on the wire, with a reference when the model takes one."""
    [kind] = [kind for kind in spec.provider_models if kind in HOSTED_KINDS]
    backend, endpoint = HOSTED_KINDS[kind]
    model = spec.provider_models[kind] or ""
    with_reference = spec.images is ImageRule.ACCEPTS
    return RoundTrip(spec.version, backend, endpoint.format(id=model), model, with_reference)


ROUND_TRIPS = [
    round_trip(spec)
    for spec in CATALOG.values()
    if any(kind in HOSTED_KINDS for kind in spec.provider_models)
]
TEXT_ONLY_GPT = RoundTrip("gpt_image_2", "openai", "/v1/images/generations", "gpt-image-2", False)
FAKE_IMAGES = {
    "openai": OPENAI_IMAGE,
    "gemini": GEMINI_IMAGE,
    "bfl": BFL_IMAGE,
    "midjourney": MJ_IMAGE,
    "modelark": ARK_IMAGE,
}


@pytest.fixture(scope="module")
def providers() -> Iterator[Providers]:
    fakes = Providers()
    with ExitStack() as stack:
        urls = serve_fakes(stack, fakes.openai, fakes.gemini, fakes.bfl, fakes.mj, fakes.ark)
        names = ("openai", "gemini", "bfl", "midjourney", "modelark")
        fakes.urls = dict(zip(names, urls, strict=True))
        yield fakes


@pytest.fixture(scope="module")
def main(providers: Providers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    urls = providers.urls
    backends = {
        "openai": remote("openai", f"{urls['openai']}/v1", OPENAI_KEY_ENV),
        "gemini": remote("gemini", urls["gemini"], GEMINI_KEY_ENV),
        "bfl": remote("bfl", urls["bfl"], BFL_KEY_ENV),
        "midjourney": remote("midjourney-proxy", urls["midjourney"], MJ_SECRET_ENV),
        "modelark": remote("modelark", urls["modelark"], ARK_KEY_ENV),
    }
    models = {case.model_version: {"backends": [case.backend]} for case in ROUND_TRIPS}
    with easel_serve(tmp_path_factory.mktemp("easel-models"), backends, models) as server:
        yield server


def check_wire(providers: Providers, case: RoundTrip) -> None:
    """The one request the fake saw: endpoint, key, provider model id, prompt, reference."""
    if case.backend == "openai":
        [seen] = providers.openai.seen
        assert seen.path == case.endpoint
        assert seen.headers["authorization"] == f"Bearer {OPENAI_KEY}"
        if case.with_reference:
            assert seen.fields == {"model": case.provider_model, "prompt": PROMPT}
            assert seen.files == [("image0.png", "image/png", REFERENCE)]
        else:
            assert seen.json == {"model": case.provider_model, "prompt": PROMPT, "n": 1}
    elif case.backend == "gemini":
        [request] = providers.gemini.seen
        assert f"/v1beta/models/{request.model}:{request.method}" == case.endpoint
        assert request.key == GEMINI_KEY
        assert request.parts()[0] == {"text": PROMPT}
        assert request.inline_images() == [("image/png", REFERENCE)]
        assert "IMAGE" in request.modalities()
    elif case.backend == "bfl":
        [(endpoint, body)] = providers.bfl.submits
        assert (f"/v1/{endpoint}", body["prompt"]) == (case.endpoint, PROMPT)
        if case.with_reference:
            assert base64.b64decode(body["input_image"]) == REFERENCE
        else:
            assert (body["width"], body["height"]) == (1024, 1024)
            assert not any(key.startswith("input_image") for key in body)
    elif case.backend == "modelark":
        [body] = providers.ark.bodies
        assert (body["model"], body["prompt"]) == (case.provider_model, PROMPT)
        assert (body.get("image") and decode_reference(body["image"])) == (
            ("png", REFERENCE) if case.with_reference else None
        )
    else:
        [(headers, body)] = providers.mj.submits
        assert headers["mj-api-secret"] == MJ_SECRET
        assert body == {"prompt": PROMPT, "base64Array": []}


@pytest.mark.parametrize(
    "case",
    [*ROUND_TRIPS, TEXT_ONLY_GPT],
    ids=[*(case.model_version for case in ROUND_TRIPS), "gpt_image_2-text_only"],
)
def test_round_trip(main: Server, providers: Providers, case: RoundTrip) -> None:
    providers.forget()
    before = main.balance()

    task = main.run(case.model_version, with_reference=case.with_reference)

    assert task["status"] == "success", f"{task}\n{main.log.read_text()}"
    assert task["input"]["model_version"] == case.model_version
    assert main.output(task) == FAKE_IMAGES[case.backend]
    check_wire(providers, case)
    assert attempts_of(task) == [(case.backend, "success")]
    cost = price(case.model_version)
    assert task["consumed_credit"] == cost
    assert main.balance() == {"balance": before["balance"] - cost, "frozen": 0}


def test_models_lists_every_model_version_as_served(main: Server) -> None:
    response = main.http.get("/v2/openapi/models")
    assert response.status_code == 200, response.text
    listed = response.json()["data"]["models"]
    served = {
        row["model_version"]: [(b["name"], b["kind"], b["ready"]) for b in row["backends"]]
        for row in listed
        if row["served"]
    }
    assert served == {case.model_version: [(case.backend, case.kind, True)] for case in ROUND_TRIPS}


# --- fallback, refusals, retry limits, unserved models ------------------------------------------


@dataclass
class Troubled:
    """Fakes that misbehave (each forever), and one healthy backup."""

    down: FakeOpenAI = field(
        default_factory=lambda: FakeOpenAI(
            otherwise=openai_error(503, "The engine is currently overloaded.")
        )
    )
    limited: FakeOpenAI = field(
        default_factory=lambda: FakeOpenAI(
            otherwise=openai_error(429, "Rate limit reached for images per minute.")
        )
    )
    moderated: FakeOpenAI = field(
        default_factory=lambda: FakeOpenAI(
            otherwise=openai_error(
                400,
                "Your request was rejected by the safety system. safety_violations=[violence].",
                "moderation_blocked",
            )
        )
    )
    blocked: FakeGemini = field(default_factory=lambda: FakeGemini(otherwise=gemini_blocked()))
    backup: FakeGemini = field(default_factory=FakeGemini)
    urls: dict[str, str] = field(default_factory=dict)  # by attribute name, once serving


@pytest.fixture(scope="module")
def troubled() -> Iterator[Troubled]:
    fakes = Troubled()
    with ExitStack() as stack:
        urls = serve_fakes(
            stack, fakes.down, fakes.limited, fakes.moderated, fakes.blocked, fakes.backup
        )
        fakes.urls = dict(
            zip(("down", "limited", "moderated", "blocked", "backup"), urls, strict=True)
        )
        yield fakes


SERVED_BY_SCENARIOS = ["gpt_4o", "gpt_image_1.5", "gpt_image_2", "gemini_3_pro_image_preview"]


@pytest.fixture(scope="module")
def scenarios(troubled: Troubled, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    urls = troubled.urls
    nowhere = f"http://127.0.0.1:{free_port()}"  # a closed port: a skipped backend's URL
    backends = {
        "openai-nokey": remote("openai", f"{nowhere}/v1", UNSET_KEY_ENV),
        "openai-down": remote("openai", f"{urls['down']}/v1", OPENAI_KEY_ENV),
        "openai-limited": remote("openai", f"{urls['limited']}/v1", OPENAI_KEY_ENV),
        "openai-moderated": remote("openai", f"{urls['moderated']}/v1", OPENAI_KEY_ENV),
        "gemini-blocked": remote("gemini", urls["blocked"], GEMINI_KEY_ENV),
        "gemini-backup": remote("gemini", urls["backup"], GEMINI_KEY_ENV),
        "gemini-nokey": remote("gemini", nowhere, UNSET_KEY_ENV),
        "bfl-nokey": remote("bfl", nowhere, UNSET_KEY_ENV),
    }
    models: dict[str, Table] = {
        "gpt_image_1.5": {
            "backends": ["openai-nokey", "openai-down", "gemini-backup"],
            "provider_model": {"gemini-backup": "gemini-3.1-flash-image"},
        },
        "gpt_image_2": {
            "backends": ["openai-moderated", "gemini-backup"],
            "provider_model": {"gemini-backup": "gemini-3-pro-image"},
        },
        "gemini_3_pro_image_preview": {"backends": ["gemini-blocked", "gemini-backup"]},
        "gpt_4o": {"backends": ["openai-limited"]},
        "flux.1_dev": {"backends": ["bfl-nokey"]},
        "flux.1_kontext_pro": {"backends": ["bfl-nokey", "gemini-nokey"]},
    }
    with easel_serve(tmp_path_factory.mktemp("easel-scenarios"), backends, models) as server:
        yield server


def test_fallback_skips_a_keyless_backend_and_leaves_a_failing_one_under_the_same_task_id(
    scenarios: Server, troubled: Troubled
) -> None:
    before = scenarios.balance()

    task = scenarios.run("gpt_image_1.5", with_reference=True)

    assert task["status"] == "success", f"{task}\n{scenarios.log.read_text()}"
    assert scenarios.output(task) == GEMINI_IMAGE
    assert attempts_of(task) == [
        ("openai-nokey", "skipped"),
        ("openai-down", "retryable"),
        ("gemini-backup", "success"),
    ]
    skipped, down, backup = task["attempts"]
    assert skipped["error"] == f"no API key: set {UNSET_KEY_ENV}"
    assert "OpenAI is unavailable (HTTP 503)" in down["error"]
    assert backup["error"] is None
    assert {attempt["claim"] for attempt in task["attempts"]} == {1}
    times = [
        t for attempt in task["attempts"] for t in (attempt["started_at"], attempt["ended_at"])
    ]
    assert times == sorted(times)
    # the failing backend was retried a bounded number of times, then the backup ran once
    assert [(seen.path, seen.fields["model"]) for seen in troubled.down.seen] == [
        ("/v1/images/edits", "gpt-image-1.5")
    ] * DEFAULT_RETRY.attempts
    [request] = troubled.backup.seen
    assert (request.model, request.inline_images()) == (
        "gemini-3.1-flash-image",
        [("image/png", REFERENCE)],
    )
    assert task["consumed_credit"] == price("gpt_image_1.5")
    assert scenarios.balance() == {
        "balance": before["balance"] - price("gpt_image_1.5"),
        "frozen": 0,
    }


@pytest.mark.parametrize(
    ("model_version", "backend", "words"),
    [
        ("gpt_image_2", "openai-moderated", "OpenAI refused the request under its usage policy"),
        ("gemini_3_pro_image_preview", "gemini-blocked", "Gemini blocked the prompt"),
    ],
    ids=["openai_moderation_blocked", "gemini_block_reason"],
)
def test_a_policy_refusal_is_banned_refunded_and_not_tried_elsewhere(
    scenarios: Server, troubled: Troubled, model_version: str, backend: str, words: str
) -> None:
    before = scenarios.balance()
    backup_calls = len(troubled.backup.seen)
    refusals = len(troubled.moderated.seen) + len(troubled.blocked.seen)

    task = scenarios.run(model_version, with_reference=True)

    assert task["status"] == "banned", f"{task}\n{scenarios.log.read_text()}"
    assert (task["error_code"], task["consumed_credit"], task["output"]) == (2008, 0, {})
    assert words in task["error_msg"]
    assert attempts_of(task) == [(backend, "rejected")]
    assert len(troubled.moderated.seen) + len(troubled.blocked.seen) == refusals + 1
    assert len(troubled.backup.seen) == backup_calls  # the second backend never ran
    assert scenarios.balance() == before == {"balance": before["balance"], "frozen": 0}


def test_a_provider_rate_limiting_forever_fails_the_task_with_a_refund_after_bounded_attempts(
    scenarios: Server, troubled: Troubled
) -> None:
    before = scenarios.balance()
    started = time.monotonic()

    task = scenarios.run("gpt_4o", with_reference=True)

    elapsed = time.monotonic() - started
    assert task["status"] == "failed", f"{task}\n{scenarios.log.read_text()}"
    assert (task["error_code"], task["consumed_credit"]) == (1001, 0)
    assert "OpenAI is rate limiting requests (HTTP 429)" in task["error_msg"]
    assert attempts_of(task) == [("openai-limited", "retryable")]
    assert len(troubled.limited.seen) == DEFAULT_RETRY.attempts
    assert elapsed < REMOTE_TIMEOUT_S  # the retries gave up, not the attempt's deadline
    assert scenarios.balance() == before == {"balance": before["balance"], "frozen": 0}


@pytest.mark.parametrize(
    ("model_version", "keyless"),
    [("flux.1_dev", ["bfl-nokey"]), ("flux.1_kontext_pro", ["bfl-nokey", "gemini-nokey"])],
    ids=["flux.1_dev", "flux.1_kontext_pro"],
)
def test_a_model_whose_backends_all_lack_keys_is_refused_naming_what_is_served(
    scenarios: Server, model_version: str, keyless: Sequence[str]
) -> None:
    before = scenarios.balance()

    response = scenarios.submit(model_version)

    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == 1004
    assert f"model_version {model_version!r} is not served" in error["message"]
    assert error["suggestion"] == f"Use one of the served models: {', '.join(SERVED_BY_SCENARIOS)}."
    assert scenarios.balance() == before
    [row] = [
        row
        for row in scenarios.http.get("/v2/openapi/models").json()["data"]["models"]
        if row["model_version"] == model_version
    ]
    assert row["served"] is False
    assert [(b["name"], b["ready"], b["reason"]) for b in row["backends"]] == [
        (name, False, f"no API key: set {UNSET_KEY_ENV}") for name in keyless
    ]
