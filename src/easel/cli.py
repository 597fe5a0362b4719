"""The ``easel`` command: run the server or a worker, manage keys and credits."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from easel import logs
from easel.client.cli import register as register_caller_commands
from easel.client.help import App
from easel.config import CONFIG_ENV, ConfigError, Settings, load_settings
from easel.domain.accounts import MAX_CREDITS, InvalidAccount, UnknownKey
from easel.runtime import freeze_startup_objects, open_runtime
from easel.server import uvicorn_options
from easel.services.loops import JANITOR_DOWN, LoopGroup
from easel.store import Store, open_store
from easel.supervise import SupervisedRun, announce_registered
from easel.worker.health import serving
from easel.worker.runner import WorkerCannotRegister

app = App(help="Easel: a Tripo v2 generate_image task server.", no_args_is_help=True)
keys_app = App(help="Create and revoke API keys.", no_args_is_help=True)
credits_app = App(help="Grant and inspect credits.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
register_caller_commands(app)  # generate, task get, balance, models: HTTP clients

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", envvar=CONFIG_ENV, help="TOML configuration file.", dir_okay=False),
]
err = Console(stderr=True)
T = TypeVar("T")

if TYPE_CHECKING:
    from fastapi import FastAPI


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    logs.configure(settings.log_format)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="API only.")] = False,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes sharing the port. With more than one, the worker runs as "
            "a process of its own beside them (unless --no-worker).",
        ),
    ] = 1,
) -> None:
    """Run the API (and, unless --no-worker, a worker: in the same process, or with
    --processes N > 1 as a process of its own)."""
    from easel.api.app import create_app

    settings = _settings(config)
    _logging(settings)
    if processes == 1:
        _serve(create_app(settings, run_worker=not no_worker), settings, host, port)
        return
    # Each API process builds its app from the environment (uvicorn spawns them), and one
    # worker process runs the tasks: one CPU-bound worker, not one per API process.
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    # The parent supervises them all: see easel.supervise.
    supervised = SupervisedRun(worker=not no_worker)
    _serve("easel.api.app:api_from_environment", settings, host, port, processes, supervised)
    if supervised.gave_up is not None:
        err.print(
            f"[red]error:[/red] {escape(supervised.gave_up)}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1)


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _serve(
    app_: FastAPI | str,
    settings: Settings,
    host: str,
    port: int,
    processes: int = 1,
    run: Callable[..., None] = uvicorn.run,
) -> None:
    # uvicorn catches SIGTERM, shuts down gracefully, then raises the signal again to the
    # handler it found before: this one, so that a clean shutdown exits 0, not 143.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    run(
        app_,
        factory=isinstance(app_, str),
        workers=processes if processes > 1 else None,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # keep easel.logs' handler: uvicorn's lines get the trace id too
        lifespan="on",
        # h11 with deadlines for slow clients, a connection limit, a shutdown grace
        **uvicorn_options(settings),
    )


@app.command()
def worker(
    config: ConfigOption = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model_versions to take (default: all).")
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve /healthz, /readyz and /metrics on this port (default: the "
            "worker_health_port setting; none).",
        ),
    ] = None,
) -> None:
    """Run a worker alone (no API). SIGTERM drains it: it claims nothing more, lets its
    running tasks finish within worker_drain_s, puts back the rest, and exits 0."""
    settings = _settings(config)
    if health_port is not None:
        settings = settings.model_copy(update={"worker_health_port": health_port})
    _logging(settings)
    chosen = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        asyncio.run(_run_worker(settings, chosen))
    except WorkerCannotRegister as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


async def _run_worker(settings: Settings, models: list[str] | None) -> None:
    runtime = await open_runtime(settings)
    runtime.log_served()
    freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The worker runs in front: when it stops by itself (it could not register), so does
    # the command, exiting 1 for the parent or the orchestrator to see. The janitor beside it
    # is restarted if it crashes.
    loops = LoopGroup(runtime.problems)
    loops.add("janitor", runtime.janitor().run, meanwhile=JANITOR_DOWN)
    worker = runtime.new_worker(models)
    port, host = settings.worker_health_port, settings.worker_health_host
    try:
        async with serving(worker.health, host, port), loops.running(stop):
            await worker.run(stop, on_registered=announce_registered)
    finally:
        await runtime.close()


def _on_store(settings: Settings, call: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store (migrating it), run ``call``, close it."""

    async def run() -> T:
        store = await open_store(settings.database_url, settings.database_pool_size)
        try:
            return await call(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except UnknownKey:
        err.print("[red]error:[/red] no such key (or it is already revoked).")
        raise typer.Exit(1) from None
    except InvalidAccount as exc:
        err.print(
            f"[red]error:[/red] {escape(str(exc))}; nothing was changed.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


@app.command("demo-weights")
def demo_weights(
    directory: Annotated[Path, typer.Argument(help="Where to write the pipelines.")],
) -> None:
    """Write a tiny random-weight pipeline of each diffusers family (offline, no hub access).

    They run the whole local path on a CPU in seconds. Their images are noise: they prove
    the plumbing, not a model. Needs the local extra: pip install 'easel[local]'.
    """
    from easel.backends.demo_weights import write_demo_weights

    for name, path in write_demo_weights(directory).items():
        typer.echo(f"{name}: {path}")
    typer.echo(
        "Point a backend at them, e.g.\n"
        f'  [backends.tiny-flux]\n  kind = "diffusers"\n  pipeline = "flux"\n'
        f'  weights = "{directory / "flux"}"\n  device = "cpu"\n  dtype = "float32"\n'
        "  steps = 4\n  width = 64\n  height = 64"
    )


@keys_app.command("create")
def keys_create(
    config: ConfigOption = None,
    credits: Annotated[
        int, typer.Option(min=0, max=MAX_CREDITS, help="Credits to grant (at most 2^53 - 1).")
    ] = 0,
    name: Annotated[
        str, typer.Option(help="A name for the account (1 to 200 characters).")
    ] = "default",
) -> None:
    """Create an account and an API key; the key is the last line printed."""
    key = _on_store(_settings(config), lambda store: store.accounts.create_key(name, credits))
    typer.echo(f"created account {name!r} with {credits} credits; its API key (shown once):")
    typer.echo(key)


@keys_app.command("revoke")
def keys_revoke(key: str, config: ConfigOption = None) -> None:
    """Revoke a key: it is refused from now on."""
    _on_store(_settings(config), lambda store: store.accounts.revoke(key))
    typer.echo("revoked")


@credits_app.command("grant")
def credits_grant(
    key: str,
    amount: Annotated[
        int, typer.Argument(min=1, max=MAX_CREDITS, help="Credits to add (at most 2^53 - 1).")
    ],
    config: ConfigOption = None,
) -> None:
    """Add credits to the account of KEY."""
    balance = _on_store(_settings(config), lambda store: store.accounts.grant(key, amount))
    typer.echo(f"granted {amount}; balance {balance.balance}, frozen {balance.frozen}")


@credits_app.command("show")
def credits_show(key: str, config: ConfigOption = None) -> None:
    """Balance, frozen credits and the latest ledger rows of KEY's account."""
    balance, tail = _on_store(_settings(config), lambda store: store.accounts.balance_of_key(key))
    console = Console()
    console.print(f"balance {balance.balance}, frozen {balance.frozen}")
    table = Table("when", "kind", "balance", "frozen", "task")
    for row in tail:
        when = datetime.fromtimestamp(row.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            when, row.kind, f"{row.balance_delta:+d}", f"{row.frozen_delta:+d}", row.task_id or ""
        )
    console.print(table)
