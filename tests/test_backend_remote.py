"""The shared remote-backend policy: HTTP answers → backend errors, and bounded retries."""

from __future__ import annotations

import json

import pytest

from easel.backends._remote import RetryPolicy, http_error, with_retries
from easel.backends.base import (
    BackendError,
    BackendFailed,
    BackendRateLimited,
    BackendRejected,
    BackendUnavailable,
)


def body(message: str) -> str:
    return json.dumps({"error": {"message": message, "code": None}})


@pytest.mark.parametrize(
    ("status", "text", "expected", "words"),
    [
        (401, body("Incorrect API key provided"), BackendFailed, "refused the API key"),
        (403, body("Permission denied"), BackendFailed, "refused the API key"),
        (400, body("API key not valid. Please pass a valid API key."), BackendFailed, "API key"),
        (404, body("The model does not exist"), BackendFailed, "not found or retired"),
        (400, body("Rejected by the safety system"), BackendRejected, "usage policy"),
        (422, body("Prompt flagged by moderation"), BackendRejected, "usage policy"),
        (400, body("Invalid size"), BackendFailed, "rejected the request (HTTP 400)"),
        (422, "{not json", BackendFailed, "HTTP 422"),
        (429, body("Rate limit reached"), BackendRateLimited, "rate limiting"),
        (500, body("Internal error"), BackendUnavailable, "unavailable (HTTP 500)"),
        (503, "", BackendUnavailable, "unavailable (HTTP 503)"),
        (408, "", BackendUnavailable, "HTTP 408"),
    ],
)
def test_http_error_translation(
    status: int, text: str, expected: type[BackendError], words: str
) -> None:
    error = http_error(status, text, provider="Acme")
    assert type(error) is expected
    assert words in str(error)


def test_http_error_quotes_the_provider_and_names_the_model() -> None:
    error = http_error(404, body("gone since May"), provider="Acme", model="m-1")
    assert "model 'm-1'" in str(error)
    assert "Acme said: gone since May" in str(error)


@pytest.mark.parametrize(
    ("raised", "calls"),
    [
        (BackendUnavailable("down"), 3),
        (BackendRateLimited("slow down"), 3),
        (BackendFailed("bad key"), 1),
        (BackendRejected("policy"), 1),
    ],
)
async def test_only_unavailable_and_rate_limited_are_retried(
    raised: BackendError, calls: int
) -> None:
    seen: list[int] = []

    async def call() -> None:
        seen.append(1)
        raise raised

    with pytest.raises(type(raised)):
        await with_retries(call, RetryPolicy(attempts=3, wait_initial_s=0.001, wait_max_s=0.001))
    assert len(seen) == calls
