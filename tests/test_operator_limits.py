"""Operator input: credit amounts and account names are bounded and refused cleanly, on both
databases, in the store and at the ``easel`` command (no traceback, nothing written)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from easel.domain.accounts import MAX_CREDITS, MAX_NAME_CHARS, InvalidAccount
from easel.store import SqlStore, open_store
from easel.store.tables import accounts, ledger

EASEL = str(Path(sys.executable).parent / "easel")


async def _rows(store: SqlStore) -> tuple[int, int]:
    async with store.engine.connect() as conn:
        counted = [
            (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for table in (accounts, ledger)
        ]
    return counted[0], counted[1]


def test_the_maximum_is_exact_in_a_json_double() -> None:
    # The documented reason for the bound: every balance a client reads is exact in a
    # double (JavaScript, the playground), and no sum of two fits past a signed 64-bit.
    assert MAX_CREDITS == 2**53 - 1
    assert float(MAX_CREDITS) == MAX_CREDITS and 2 * MAX_CREDITS < 2**63


@pytest.mark.parametrize("credits", [-1, MAX_CREDITS + 1, 2**63, 10**20])
async def test_an_amount_out_of_range_creates_nothing(database_url: str, credits: int) -> None:
    store = await open_store(database_url)
    try:
        with pytest.raises(InvalidAccount, match="credits"):
            await store.accounts.create_key("alice", credits)
        assert await _rows(store) == (0, 0)
    finally:
        await store.close()


async def test_grants_stop_at_the_maximum_and_the_ledger_still_balances(
    database_url: str,
) -> None:
    store = await open_store(database_url)
    try:
        key = await store.accounts.create_key("alice", MAX_CREDITS - 10)
        balance = await store.accounts.grant(key, 10)  # exactly the maximum is fine
        assert balance.balance == MAX_CREDITS
        for amount in (1, 2**62, 2**63, 0, -5):
            with pytest.raises(InvalidAccount, match="credits"):
                await store.accounts.grant(key, amount)
        caller = await store.accounts.authenticate(key)
        after = await store.accounts.balance(caller.account_id)
        assert after.balance == MAX_CREDITS and isinstance(after.balance, int)
        assert await store.accounts.ledger_sums(caller.account_id) == after
        assert await _rows(store) == (1, 2)
    finally:
        await store.close()


@pytest.mark.parametrize("name", ["", "x" * (MAX_NAME_CHARS + 1), "x" * 300, "a\x00b", "\udcff"])
async def test_a_bad_account_name_creates_nothing(database_url: str, name: str) -> None:
    store = await open_store(database_url)
    try:
        with pytest.raises(InvalidAccount, match="name"):
            await store.accounts.create_key(name, 5)
        assert await _rows(store) == (0, 0)
        longest = await store.accounts.create_key("é" * MAX_NAME_CHARS, 5)
        assert longest.startswith("tsk_")
    finally:
        await store.close()


def _easel(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EASEL, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
async def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "easel.toml"
    path.write_text(
        f'database_url = "{database_url}"\nstorage_url = "file://{tmp_path / "objects"}"\n'
    )
    return path


def _refused(proc: subprocess.CompletedProcess[str], says: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert says in proc.stderr, proc.stderr


async def test_the_command_refuses_amounts_past_the_maximum(config: Path) -> None:
    for credits in (str(2**64), str(MAX_CREDITS + 1)):
        _refused(_easel(config, "keys", "create", "--credits", credits), str(MAX_CREDITS))
    created = _easel(config, "keys", "create", "--credits", str(MAX_CREDITS - 1))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    _refused(_easel(config, "credits", "grant", key, str(2**64)), str(MAX_CREDITS))
    _refused(_easel(config, "credits", "grant", key, "2"), "maximum")
    granted = _easel(config, "credits", "grant", key, "1")
    assert granted.stdout == f"granted 1; balance {MAX_CREDITS}, frozen 0\n", granted.stderr


async def test_the_command_refuses_a_name_past_the_limit(config: Path) -> None:
    _refused(_easel(config, "keys", "create", "--name", "x" * 300), str(MAX_NAME_CHARS))
    created = _easel(config, "keys", "create", "--name", "x" * MAX_NAME_CHARS)
    assert created.returncode == 0, created.stderr
