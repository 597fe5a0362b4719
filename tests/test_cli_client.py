"""The caller commands (``easel generate``, ``task get``, ``balance``, ``models``) as a user
types them, through a real ``easel serve`` process: what they do, and what they say when it
goes wrong (in the flags and variables of the command, not the Python client's words)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from PIL import Image
from starlette.responses import Response

from apptools import png
from easel.api.envelope import error_response
from easel.domain.errors import ServiceUnavailable
from easel.domain.templates import TEMPLATES
from loopback import Peer, running
from processes import EASEL, create_key, easel_process, free_port, wait_healthy, write_config

pytestmark = pytest.mark.e2e

# One unfinished task per key (so a second one is refused with 2000), gpt_4o always failing,
# and a slow model to time out on.
EXTRA = "max_unfinished_tasks = 1\n"
EXTRA += '[backends.broken]\nkind = "placeholder"\nfail_rate = 1.0\n'
EXTRA += '[models."gpt_4o"]\nbackends = ["broken"]\n'
EXTRA += '[backends.slow]\nkind = "placeholder"\ndelay_s = 15.0\n'
EXTRA += '[models."gemini_3_pro_image_preview"]\nbackends = ["slow"]\n'
# Words of the Python client and of raw HTTP that a CLI user has no use for.
NOT_CLI = ("api_key=", "timeout=", "get_task", "wait(", "Authorization", "Retry-After")


@dataclass(frozen=True)
class Server:
    url: str
    key: str
    poor_key: str  # no credits
    spare_key: str  # for tasks left running

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``easel ARGS`` with EASEL_SERVER and the key variables unset unless ``env`` sets
        them."""
        unset = ("EASEL_SERVER", "EASEL_API_KEY", "TRIPO_API_KEY")
        base = {k: v for k, v in os.environ.items() if k not in unset}
        return subprocess.run(
            [EASEL, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
            env={**base, **(env or {})},
        )

    def call(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """``easel ARGS --server URL --key KEY``."""
        return self.run(*args, "--server", self.url, "--key", self.key, cwd=cwd)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``easel serve``: the placeholder (0.3 s) for most models, gpt_4o always failing,
    gemini_3_pro_image_preview taking 15 s."""
    directory = tmp_path_factory.mktemp("cli-client")
    config = write_config(directory, extra=EXTRA, delay_s=0.3)
    keys = [create_key(config, credits) for credits in (100, 0, 100)]
    port, log = free_port(), directory / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with easel_process("serve", "--config", str(config), "--port", str(port), log=log) as proc:
        wait_healthy(url, proc, log)
        yield Server(url, *keys)


def help_page(*command: str) -> str:
    """``easel COMMAND --help``, wide enough that no line wraps."""
    out = subprocess.run(
        [EASEL, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def option_line(page: str, option: str) -> str:
    """The help line of ``option`` (``--t-pose``): its name, type column and help."""
    return next(line for line in page.splitlines() if f" {option} " in line)


def test_generate_uploads_the_image_waits_and_saves_the_png(server: Server, tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png(color="gray"))
    out = server.call(
        "generate", "a cat, style of image[1]", "--image", "cat.png", "-o", "out.png", cwd=tmp_path
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "out.png"
    assert "uploading 1 local image(s)" in out.stderr
    assert "success" in out.stderr
    with Image.open(tmp_path / "out.png") as image:
        assert image.format == "PNG"


def test_generate_reads_server_and_key_from_the_environment_and_names_the_file_by_task(
    server: Server, tmp_path: Path
) -> None:
    env = {"EASEL_SERVER": server.url, "EASEL_API_KEY": server.key}
    out = server.run("generate", "a dog", "--model", "flux.1_dev", cwd=tmp_path, env=env)

    assert out.returncode == 0, out.stderr
    task_id = out.stderr.split("task ", 1)[1].split()[0]
    assert out.stdout.strip() == f"{task_id}.png"
    assert (tmp_path / f"{task_id}.png").is_file()


def test_text_to_image_uploads_the_style_image_and_saves_the_png(
    server: Server, tmp_path: Path
) -> None:
    (tmp_path / "style.png").write_bytes(png(color="green"))
    out = server.call(
        "text-to-image",
        "a lighthouse",
        "-n",
        "people",
        "-s",
        "style.png",
        "-o",
        "l.png",
        cwd=tmp_path,
    )

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "l.png"
    assert "uploading the style image" in out.stderr
    with Image.open(tmp_path / "l.png") as image:
        assert image.format == "PNG"
    task_id = out.stderr.split("task ", 1)[1].split()[0]
    shown = server.call("task", "get", task_id, "--json", cwd=tmp_path)
    task = json.loads(shown.stdout)
    assert (task["type"], task["status"], task["consumed_credit"]) == (
        "text_to_image",
        "success",
        5,
    )
    assert task["input"]["negative_prompt"] == "people"
    assert set(task["input"]["style_image"]) == {"file_token"}


def test_text_to_image_with_a_too_long_negative_prompt_exits_1_and_saves_nothing(
    server: Server, tmp_path: Path
) -> None:
    out = server.call("text-to-image", "a fox", "--negative-prompt", "n" * 256, cwd=tmp_path)

    assert out.returncode == 1
    assert "error 1004: negative_prompt is 256 characters long; the limit is 255." in out.stderr
    assert "suggestion: Shorten the negative prompt" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_with_an_unknown_model_exits_1_with_the_code_and_suggestion(
    server: Server, tmp_path: Path
) -> None:
    out = server.call("generate", "a fox", "--model", "flux.9", cwd=tmp_path)

    assert out.returncode == 1
    assert "error 2017: model_version 'flux.9' is not a valid version." in out.stderr
    assert "suggestion: Use one of: flux.1_kontext_pro, flux.1_dev" in out.stderr
    assert "Pass it with --model; 'easel models' lists them." in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_exits_1_when_the_task_fails(server: Server, tmp_path: Path) -> None:
    out = server.call("generate", "doomed", "--model", "gpt_4o", cwd=tmp_path)

    assert out.returncode == 1
    assert "error 1001: task " in out.stderr
    assert "ended failed" in out.stderr
    assert "suggestion: The credits were refunded; try again, or another --model" in out.stderr


KEY_FIX = (
    "suggestion: Pass --key tsk_… or set EASEL_API_KEY; the server's operator creates keys with "
    "'easel keys create'."
)


@pytest.mark.parametrize(
    ("args", "message", "suggestion"),
    [
        pytest.param(
            ("generate", "x", "--server", "{url}"),
            "error 1002: no API key was given.",
            KEY_FIX,
            id="no-key",
        ),
        pytest.param(
            ("generate", "x", "--server", "{url}", "--key", "tsk_wrong"),
            "error 1002: Authentication failed: unknown or revoked API key.",
            KEY_FIX,
            id="wrong-key",
        ),
        pytest.param(
            ("generate", "x", "--server", "{url}", "--key", "{poor_key}"),
            "error 2010:",
            "suggestion: 'easel balance' shows the key's credits; the server's operator grants "
            "more with 'easel credits grant KEY N'.",
            id="no-credits",
        ),
        pytest.param(
            ("generate", "x", "--template", "nope", "--server", "{url}", "--key", "{key}"),
            "error 1004: template 'nope' does not exist.",
            f"suggestion: Use one of: {', '.join(TEMPLATES)}.",
            id="unknown-template",
        ),
        pytest.param(
            ("task", "get", "no-such-task", "--server", "{url}", "--key", "{key}"),
            "error 2001:",
            "suggestion: Check the task_id, and pass the --key (or EASEL_API_KEY) that created "
            "the task: a task is visible only to its key.",
            id="unknown-task",
        ),
        pytest.param(
            ("balance", "--server", "http://127.0.0.1:{closed_port}", "--key", "{key}"),
            "error: could not reach http://127.0.0.1:",
            "suggestion: Check --server (or EASEL_SERVER) and that the server runs there "
            "('easel serve').",
            id="no-server",
        ),
        pytest.param(
            ("generate", "x", "--image", "missing.png", "--server", "{url}", "--key", "{key}"),
            "No such file or directory: 'missing.png'",
            "suggestion: Check the file path.",
            id="missing-image",
        ),
    ],
)
def test_errors_name_the_fix_in_the_commands_own_flags_and_variables(
    server: Server, tmp_path: Path, args: tuple[str, ...], message: str, suggestion: str
) -> None:
    values = {**asdict(server), "closed_port": free_port()}
    out = server.run(*(arg.format(**values) for arg in args), cwd=tmp_path)

    assert out.returncode == 1
    assert message in out.stderr
    assert suggestion in out.stderr
    assert not [word for word in NOT_CLI if word in out.stderr]


def test_a_wait_that_times_out_says_the_task_goes_on_and_how_to_wait_longer(
    server: Server, tmp_path: Path
) -> None:
    """The slow model takes 15 s: ``--timeout 0.5`` gives up first, and the task, still
    running, is the key's one unfinished task, so a second one is refused (2000)."""
    slow = ("generate", "an owl", "-m", "gemini_3_pro_image_preview", "--server", server.url)
    first = server.run(*slow, "--key", server.spare_key, "--timeout", "0.5", cwd=tmp_path)
    second = server.run(*slow, "--key", server.spare_key, cwd=tmp_path)

    assert first.returncode == 1
    task_id = first.stderr.split("task ", 1)[1].split()[0]
    assert f"error: task {task_id} is still " in first.stderr
    assert (
        f"suggestion: The task goes on: see it with 'easel task get {task_id}'. To wait longer, "
        "pass a larger --timeout (such as --timeout 1) or none."
    ) in first.stderr
    assert second.returncode == 1
    assert "error 2000:" in second.stderr
    assert (
        "suggestion: Wait for one of the key's tasks to finish ('easel task get TASK_ID'), "
        "then retry."
    ) in second.stderr
    assert not [word for word in NOT_CLI if word in first.stderr + second.stderr]


@pytest.mark.parametrize(
    ("answer", "message", "suggestion"),
    [
        pytest.param(
            Response(b"<html>502 Bad Gateway</html>", 502, media_type="text/html"),
            "error: HTTP 502 from http://127.0.0.1:",
            "suggestion: Check that --server (or EASEL_SERVER) names an Easel server; if so, "
            "try again later.",
            id="proxy-502",
        ),
        pytest.param(
            Response(b"<html>a web page</html>", 200, media_type="text/html"),
            "did not answer a protocol envelope",
            "suggestion: Check that --server (or EASEL_SERVER) names an Easel server; if so, "
            "try again later.",
            id="not-easel",
        ),
        pytest.param(
            error_response(ServiceUnavailable("the database is unreachable.")),
            "error 1000: the database is unreachable.",
            f"suggestion: {ServiceUnavailable.default_suggestion}",
            id="easel-503",
        ),
    ],
)
def test_a_failing_or_foreign_server_is_explained_in_cli_terms(
    tmp_path: Path, answer: Response, message: str, suggestion: str
) -> None:
    """What answers at --server: a proxy whose Easel is down, a web page, or Easel's own 503
    envelope (rendered by the API's renderer), whose suggestion already speaks to anyone."""
    with running(Peer("127.0.0.1", otherwise=answer)) as peer:
        out = Server(peer.url, "tsk_any", "", "").call("balance", cwd=tmp_path)

    assert out.returncode == 1
    assert message in out.stderr
    assert suggestion in out.stderr


@pytest.mark.parametrize(
    "command",
    [
        (),
        ("generate",),
        ("text-to-image",),
        ("task", "get"),
        ("balance",),
        ("serve",),
        ("keys", "create"),
    ],
    ids=lambda command: " ".join(("easel", *command)),
)
def test_help_shows_no_value_type_beside_a_flag(command: tuple[str, ...]) -> None:
    page = help_page(*command)

    assert "--help " in page
    assert "<bool>" not in page


def test_generate_help_lists_the_templates_and_types_only_options_with_a_value() -> None:
    page = help_page("generate")

    assert all(slug in option_line(page, "--template") for slug in TEMPLATES)
    assert "<str>" in option_line(page, "--model")
    assert "<float>" in option_line(page, "--timeout")
    assert option_line(page, "--t-pose").split()[1:3] == ["--t-pose", "Ask"]  # no type between


def test_balance_models_and_task_get(server: Server, tmp_path: Path) -> None:
    generated = server.call("generate", "a hen", "-o", "hen.png", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    task_id = generated.stderr.split("task ", 1)[1].split()[0]

    balance = server.call("balance", cwd=tmp_path)
    models = server.call("models", cwd=tmp_path)
    task = server.call("task", "get", task_id, cwd=tmp_path)
    missing = server.call("task", "get", "no-such-task", cwd=tmp_path)

    assert balance.returncode == 0
    assert balance.stdout.startswith("balance ")
    assert balance.stdout.strip().endswith("frozen 0")
    assert models.returncode == 0
    assert "flux.1_kontext_pro (default)" in models.stdout
    assert "gemini_3.1_flash_image_preview" in models.stdout
    assert "served" in models.stdout
    assert task.returncode == 0
    assert f"task_id: {task_id}" in task.stdout
    assert "status: success" in task.stdout
    assert "image: http://" in task.stdout
    assert missing.returncode == 1
    assert "error 2001:" in missing.stderr


def test_models_names_the_backends_serving_each_model(server: Server, tmp_path: Path) -> None:
    wide = {"COLUMNS": "200"}  # one table row a line
    out = server.run("models", "--server", server.url, "--key", server.key, cwd=tmp_path, env=wide)

    assert out.returncode == 0, out.stderr
    cells = [line.split("│")[1:-1] for line in out.stdout.splitlines() if line.count("│") == 5]
    served_by = {model.strip(): served.strip() for model, _, served, _ in cells}
    assert served_by["flux.1_kontext_pro (default)"] == "dry (placeholder)"
    assert served_by["gpt_4o"] == "broken (placeholder)"
    assert served_by["midjourney"] == "no (no backend is configured for it)"


def test_progress_says_estimating_while_the_model_has_no_measured_run(tmp_path: Path) -> None:
    """No worker runs the task, so the model never gets a run to measure: the progress line
    and ``task get`` say "estimating…" rather than a number made up."""
    config = write_config(tmp_path)
    key = create_key(config, 100)
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with easel_process(
        "serve", "--no-worker", "--config", str(config), "--port", str(port), log=log
    ) as proc:
        wait_healthy(url, proc, log)
        server = Server(url, key, poor_key=key, spare_key=key)  # only .call is used here
        waited = server.call("generate", "a fox", "--timeout", "1.5", cwd=tmp_path)
        task_id = waited.stderr.split("task ", 1)[1].split()[0]
        shown = server.call("task", "get", task_id, cwd=tmp_path)

    assert waited.returncode == 1
    assert "0 ahead in the queue · estimating…" in waited.stderr, waited.stderr
    assert "ETA" not in waited.stderr
    assert shown.returncode == 0, shown.stderr
    assert "status: queued" in shown.stdout
    assert "running_left_time: estimating…" in shown.stdout
