"""Unknown API keys are limited per client address without touching valid keys; behind a
trusted proxy the client address is the right-most untrusted ``X-Forwarded-For`` hop."""

from __future__ import annotations

from pathlib import Path

import httpx

from apptools import running_api, settings_for

BALANCE = "/v2/openapi/user/balance"


def auth(key: str, forwarded_for: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return headers


async def statuses(client: httpx.AsyncClient, count: int, forwarded_for: str | None) -> list[int]:
    return [
        (await client.get(BALANCE, headers=auth(f"tsk_guess{n}", forwarded_for))).status_code
        for n in range(count)
    ]


async def test_an_unknown_key_spray_does_not_lock_out_valid_keys_on_the_same_address(
    tmp_path: Path,
) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'spray.db'}", rate_limit_per_s=0.01, rate_limit_burst=5
    )
    async with running_api(settings, run_worker=False) as api:
        # A valid key this process has never seen (nothing of it is cached here).
        fresh = await api.runtime.store.accounts.create_key("fresh", 7)
        sprayed = await statuses(api.client, 74, None)
        assert sprayed[:5] == [401] * 5
        assert set(sprayed[5:]) == {429}  # the sprayer is slowed down ...
        for _ in range(5):  # ... and valid keys from the same address are not
            answer = await api.client.get(BALANCE, headers=auth(fresh))
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"] == {"balance": 7, "frozen": 0}
        assert (await api.client.get(BALANCE)).status_code == 200
        # A valid key is limited by its own bucket only, with its own message.
        over = await api.client.get(BALANCE, headers=auth(fresh))
        assert over.status_code == 429
        assert "this API key" in over.json()["message"]


async def test_a_trusted_proxys_forwarded_address_gets_its_own_bucket(tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'proxy.db'}",
        rate_limit_per_s=0.01,
        rate_limit_burst=2,
        trusted_proxies=["127.0.0.0/8"],  # the test client's address is the proxy
    )
    async with running_api(settings, run_worker=False) as api:
        assert await statuses(api.client, 4, "203.0.113.9") == [401, 401, 429, 429]
        # The sprayer cannot pose as another client: the proxy appends the address it saw,
        # and the right-most hop the server does not trust is the client.
        assert await statuses(api.client, 2, "198.51.100.4, 203.0.113.9") == [429, 429]
        # Another client behind the same proxy has a bucket of its own.
        assert await statuses(api.client, 2, "198.51.100.4") == [401, 401]


async def test_forwarded_addresses_from_untrusted_peers_are_ignored(tmp_path: Path) -> None:
    settings = settings_for(
        f"sqlite+aiosqlite:///{tmp_path / 'direct.db'}", rate_limit_per_s=0.01, rate_limit_burst=2
    )
    async with running_api(settings, run_worker=False) as api:
        answers = [
            (await api.client.get(BALANCE, headers=auth(f"tsk_g{n}", f"192.0.2.{n}"))).status_code
            for n in range(4)
        ]
        assert answers == [401, 401, 429, 429]  # one bucket: the peer's address
