"""Commands for callers of an Easel server: ``generate``, ``text-to-image``, ``task get``,
``balance``, ``models``.

They talk HTTP through :class:`easel.client.Client` (no ``--config``): ``--server`` (or
``$EASEL_SERVER``) names the server and ``--key`` (or ``$EASEL_API_KEY``) the API key. A
failure prints the protocol code, the message and a suggestion to stderr and exits with
status 1. The client's suggestions are written for Python callers (``api_key=…``,
``timeout=…``) and the server's for HTTP ones (the ``Authorization`` header):
:func:`cli_suggestion` says the same in the flags and variables of these commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import singledispatch
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn
from rich.table import Table

from easel.client import (
    AuthenticationError,
    Client,
    ConnectionFailed,
    EaselClientError,
    InvalidRequest,
    ModelInfo,
    NotEnoughCredit,
    RateLimited,
    ServerError,
    Task,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    WaitTimeout,
)
from easel.client._base import DEFAULT_SERVER, KEY_ENVS, SERVER_ENV
from easel.client.help import App
from easel.domain.templates import TEMPLATES

ServerOption = Annotated[
    str, typer.Option("--server", envvar=SERVER_ENV, help="The Easel server's base URL.")
]
KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar=KEY_ENVS[0],
        help="API key (tsk_…); TRIPO_API_KEY is read too.",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Where to save the image (default: <task_id>.png)."),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(help="Stop waiting after this many seconds (the task goes on)."),
]
err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add the caller commands to the ``easel`` command."""
    app.command("generate")(generate)
    app.command("text-to-image")(text_to_image)
    app.command("balance")(balance)
    app.command("models")(models)
    task_app = App(help="Inspect tasks on an Easel server.", no_args_is_help=True)
    task_app.command("get")(task_get)
    app.add_typer(task_app, name="task")


def _fail(message: str, code: int | None = None, suggestion: str | None = None) -> NoReturn:
    label = f"error {code}" if code is not None else "error"
    err.print(f"[red]{label}:[/red] {escape(message)}", soft_wrap=True)
    if suggestion:
        err.print(f"[yellow]suggestion:[/yellow] {escape(suggestion)}", soft_wrap=True)
    raise typer.Exit(1)


# -- suggestions in the words of these commands -------------------------------------------


@singledispatch
def cli_suggestion(exc: EaselClientError) -> str:
    """The fix for ``exc`` in CLI terms: by the error's kind, else its own suggestion."""
    return exc.suggestion


@cli_suggestion.register
def _(exc: AuthenticationError) -> str:
    return (
        f"Pass --key tsk_… or set {KEY_ENVS[0]}; the server's operator creates keys with "
        "'easel keys create'."
    )


@cli_suggestion.register
def _(exc: ConnectionFailed) -> str:
    return f"Check --server (or {SERVER_ENV}) and that the server runs there ('easel serve')."


@cli_suggestion.register
def _(exc: ServerError) -> str:
    if exc.code is not None:  # an Easel error envelope: its suggestion speaks to anyone
        return exc.suggestion
    return f"Check that --server (or {SERVER_ENV}) names an Easel server; if so, try again later."


@cli_suggestion.register
def _(exc: WaitTimeout) -> str:
    return (
        f"The task goes on: see it with 'easel task get {exc.task.task_id}'. To wait longer, "
        f"pass a larger --timeout (such as --timeout {2 * exc.timeout:g}) or none."
    )


@cli_suggestion.register
def _(exc: TaskFailed) -> str:
    if exc.task.status is TaskStatus.FAILED:
        return "The credits were refunded; try again, or another --model ('easel models')."
    return exc.suggestion


@cli_suggestion.register
def _(exc: InvalidRequest) -> str:
    if exc.code == 2017:  # the server names the valid model_versions
        return f"{exc.suggestion} Pass it with --model; 'easel models' lists them."
    return exc.suggestion


@cli_suggestion.register
def _(exc: NotEnoughCredit) -> str:
    return (
        "'easel balance' shows the key's credits; the server's operator grants more with "
        "'easel credits grant KEY N'."
    )


@cli_suggestion.register
def _(exc: TaskNotFound) -> str:
    return (
        f"Check the task_id, and pass the --key (or {KEY_ENVS[0]}) that created the task: "
        "a task is visible only to its key."
    )


@cli_suggestion.register
def _(exc: RateLimited) -> str:
    if exc.code == 2000:
        return "Wait for one of the key's tasks to finish ('easel task get TASK_ID'), then retry."
    wait = f"{exc.retry_after:g} s" if exc.retry_after else "a few seconds"
    return f"Wait {wait} and try again."


# -- the commands ---------------------------------------------------------------------------


@contextmanager
def _client(server: str, key: str | None) -> Iterator[Client]:
    """A client whose errors end the command with the code, message and suggestion."""
    try:
        with Client(server, key) as client:
            yield client
    except EaselClientError as exc:
        _fail(exc.message, exc.code, cli_suggestion(exc))
    except OSError as exc:  # a local image that cannot be read, an output path not writable
        _fail(str(exc), suggestion="Check the file path.")


def _image_arg(value: str) -> str | Path:
    """A local file as a Path (uploaded); a URL or an image_token as given."""
    if value.startswith(("http://", "https://")):
        return value
    path = Path(value).expanduser()
    return path if path.exists() else value


def _progress_info(task: Task) -> str:
    parts = []
    if task.status is TaskStatus.QUEUED and task.queuing_num >= 0:
        parts.append(f"{task.queuing_num} ahead in the queue")
    if not task.is_final:
        parts.append(_eta(task, "ETA {} s"))
    return " · ".join(parts)


def _eta(task: Task, known: str) -> str:
    """An unfinished task's estimate in ``known``'s words; "estimating…" while the server
    has none (``running_left_time`` -1: no measured run of the model yet)."""
    left = task.running_left_time
    return known.format(left) if left >= 0 else "estimating…"


def _wait_with_progress(client: Client, task_id: str, timeout: float | None) -> Task:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<9}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=err) as progress:
        bar = progress.add_task("submitted", total=100, info="")

        def show(task: Task) -> None:
            progress.update(
                bar,
                completed=task.progress,
                description=task.status.value,
                info=_progress_info(task),
            )

        return client.wait(task_id, timeout=timeout, on_update=show)


def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="What to draw; refer to images as image[1], …")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="model_version (default: the server's).")
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image", "-i", help="Reference image: a local path (uploaded), URL or image_token."
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(help=f"A preset style (its prompt, some add images): {', '.join(TEMPLATES)}."),
    ] = None,
    t_pose: Annotated[bool, typer.Option("--t-pose", help="Ask for a T-pose.")] = False,
    sketch_to_render: Annotated[
        bool, typer.Option("--sketch-to-render", help="Render the sketch in image[1].")
    ] = False,
    output: OutputOption = None,
    timeout: TimeoutOption = None,
    server: ServerOption = DEFAULT_SERVER,
    key: KeyOption = None,
) -> None:
    """Generate an image: upload local images, submit, show progress, save the image."""
    with _client(server, key) as client:
        images = [_image_arg(value) for value in image or []]
        uploads = sum(isinstance(value, Path) for value in images)
        if uploads:
            err.print(f"uploading {uploads} local image(s)…")
        task_id = client.generate_image(
            prompt,
            model=model,
            images=images,
            template=template,
            t_pose=t_pose,
            sketch_to_render=sketch_to_render,
        )
        _finish(client, task_id, output, timeout)


def text_to_image(
    prompt: Annotated[str, typer.Argument(help="What to draw (at most 1024 characters).")],
    negative_prompt: Annotated[
        str | None,
        typer.Option("--negative-prompt", "-n", help="What the image must not show (≤255)."),
    ] = None,
    style_image: Annotated[
        str | None,
        typer.Option(
            "--style-image",
            "-s",
            help="An image whose style the result takes: a local path (uploaded), URL or "
            "image_token.",
        ),
    ] = None,
    output: OutputOption = None,
    timeout: TimeoutOption = None,
    server: ServerOption = DEFAULT_SERVER,
    key: KeyOption = None,
) -> None:
    """Draw from a prompt alone, with a negative prompt: show progress, save the image.

    Tripo's basic text to image (a text_to_image task): it runs on the server's text-to-image
    model at a flat price; --style-image lends it a style."""
    with _client(server, key) as client:
        style = None if style_image is None else _image_arg(style_image)
        if isinstance(style, Path):
            err.print("uploading the style image…")
        task_id = client.text_to_image(prompt, negative_prompt=negative_prompt, style_image=style)
        _finish(client, task_id, output, timeout)


def _finish(client: Client, task_id: str, output: Path | None, timeout: float | None) -> None:
    """Wait for the task with a progress bar, save its image and print the file's path."""
    err.print(f"task {task_id}")
    try:
        task = _wait_with_progress(client, task_id, timeout)
    except KeyboardInterrupt:
        _fail(
            f"interrupted; task {task_id} goes on.",
            suggestion=f"Check it later with: easel task get {task_id}",
        )
    path = client.download(task, output)
    err.print(f"saved; {task.consumed_credit} credits used")
    typer.echo(str(path))


def task_get(
    task_id: Annotated[str, typer.Argument(help="The task_id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw task object.")] = False,
    server: ServerOption = DEFAULT_SERVER,
    key: KeyOption = None,
) -> None:
    """Show a task: status, progress, queue position, ETA, image link, error."""
    with _client(server, key) as client:
        task = client.get_task(task_id)
    if as_json:
        typer.echo(json.dumps(task.raw, indent=2))
        return
    rows = {
        "task_id": task.task_id,
        "status": task.status.value,
        "progress": f"{task.progress}%",
        "model_version": task.model_version,
        "queuing_num": task.queuing_num if task.queuing_num >= 0 else None,
        "running_left_time": None if task.is_final else _eta(task, "{}"),
        "consumed_credit": task.consumed_credit,
        "image": task.image_url,
        "error": f"{task.error_code}: {task.error_msg}" if task.error_code else None,
    }
    for name, value in rows.items():
        if value is not None:
            typer.echo(f"{name}: {value}")


def balance(server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """Show the key's credits: available and held by unfinished tasks."""
    with _client(server, key) as client:
        current = client.balance()
    typer.echo(f"balance {current.balance}, frozen {current.frozen}")


def models(server: ServerOption = DEFAULT_SERVER, key: KeyOption = None) -> None:
    """List the server's model_versions: price, and which backends serve them (name and
    kind, in fallback order) or why none does, as the playground shows them."""
    with _client(server, key) as client:
        rows = client.models()
    table = Table("model", "credits", "served by", "description")
    table.columns[0].no_wrap = True
    for row in rows:
        name = f"{row.model_version} (default)" if row.default else row.model_version
        table.add_row(name, str(row.credits), _served_by(row), escape(row.description))
    Console().print(table)


def _served_by(row: ModelInfo) -> str:
    """The backends here, one a line; a worker elsewhere; or "no" and the reason."""
    lines = [] if row.served else [f"[red]no[/red] ({escape(row.reason or 'not served')})"]
    for backend in row.backends:
        ready = "" if backend.get("ready", True) else ", not ready"
        lines.append(escape(f"{backend.get('name', '?')} ({backend.get('kind', '?')}{ready})"))
    return "\n".join(lines) or "a worker elsewhere"
