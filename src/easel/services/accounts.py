"""Accounts as callers meet them: who a key is, and what the account holds."""

from __future__ import annotations

from easel.domain.accounts import Balance, Caller
from easel.store.ports import AccountsPort


class Accounts:
    def __init__(self, store: AccountsPort) -> None:
        self._store = store

    async def authenticate(self, key: str) -> Caller:
        """The owner of ``key``; :class:`~easel.domain.accounts.UnknownKey` when no active
        key has that value."""
        return await self._store.authenticate(key)

    async def balance(self, caller: Caller) -> Balance:
        return await self._store.balance(caller.account_id)
