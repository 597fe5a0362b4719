"""The web playground in a real browser: Debian's Chromium, driven by Playwright, against a real
``easel serve`` process (SQLite, a file store, the placeholder backend with ``delay_s`` so a
task runs long enough to watch).

The tests use the page the way a person does: paste the key, write a prompt, add reference
images (file picker and drag and drop), submit, watch the progress, see the image, the lowered
balance and the gallery; an API error in words; the keyboard alone. Screenshots go to
``test-artifacts/playground/`` (git-ignored); their paths are printed (``pytest -s``).

Chromium comes from Debian, not ``playwright install`` (see ``browser.py``): without
``/usr/bin/chromium`` the browser tests skip, except under ``EASEL_CI=1`` where they fail.
The last tests need no browser: they check, in process, that the page and every file it
loads are served, and that nothing else is.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, FilePayload, Page, expect

from browser import TIMEOUT_MS, chromium
from easel.api.envelope import install_error_handlers
from easel.web import router
from processes import create_key, easel_process, free_port, wait_healthy, write_config

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "playground"
# The worker stores progress once a second (its heartbeat), so 3 s shows two steps.
DELAY_S = 3.0
CREDITS = 100
PRICE = 5  # flux.1_kontext_pro, the default model
T2I_PRICE = 5  # text_to_image's flat price
PROMPT = "a red fox in the snow, colours of image[1]"
OUTAGE = "Connection lost: the server does not answer. Trying again…"
API = "**/v2/openapi/**"


def png(color: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def png_file(name: str, color: tuple[int, int, int]) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": png(color)}


class Server(NamedTuple):
    base_url: str
    config: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("playground")
    config = write_config(directory, delay_s=DELAY_S)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = directory / "server.log"
    with easel_process("serve", "--config", str(config), "--port", str(port), log=log) as proc:
        wait_healthy(base_url, proc, log)
        yield Server(base_url, config)


@pytest.fixture
def key(server: Server) -> str:
    """A fresh key with CREDITS credits for each test."""
    return create_key(server.config, CREDITS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(base_url=server.base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    # Intercept file choosers from the start: ``expect_file_chooser`` alone turns interception
    # on asynchronously, and a picker opened before that is a real (headless) dialog that
    # blocks every later one.
    page.on("filechooser", lambda chooser: None)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    # API errors the page shows on purpose are answered with 4xx, and an outage test aborts
    # requests as a lost connection does; the console notes those.
    expected = ("status of 4", "net::ERR_INTERNET_DISCONNECTED")
    assert [e for e in errors if not any(note in e for note in expected)] == []


def shot(page: Page, name: str, *, full_page: bool = False, show: str = "") -> Path:
    """Save a screenshot from the top of the page, or scrolled to the element ``show``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if show:
        page.locator(show).evaluate("el => el.scrollIntoView({block: 'start'})")
    else:
        page.evaluate("window.scrollTo(0, 0)")  # the header is sticky: shoot from the top
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    return path


def enter_key(page: Page, key: str, credits: int = CREDITS) -> None:
    page.goto("/")
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#balance-amount")).to_have_text(str(credits))
    expect(page.get_by_label("Model")).to_have_value("flux.1_kontext_pro")


def drop_file(page: Page, selector: str, name: str, data: bytes) -> None:
    """Drop a file on ``selector`` as a drag from the desktop would (a DataTransfer)."""
    transfer = page.evaluate_handle(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            const file = new File([new Uint8Array(bytes)], name, { type: "image/png" });
            transfer.items.add(file);
            return transfer;
        }""",
        [name, list(data)],
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def record_progress(page: Page) -> None:
    """Keep every progress value and detail text the page shows, in order."""
    page.evaluate(
        """() => {
            window.seen = [];
            const progress = document.getElementById("task-progress");
            const detail = document.getElementById("task-detail");
            const note = () => window.seen.push([progress.value, detail.textContent]);
            new MutationObserver(note).observe(progress, { attributes: true });
            new MutationObserver(note).observe(detail, { childList: true, characterData: true,
                                                        subtree: true });
        }"""
    )


@pytest.mark.e2e
def test_generate_with_reference_images(page: Page, key: str) -> None:
    enter_key(page, key)
    expect(page.locator("#key-hint")).to_have_text(f"Key …{key[-4:]}")
    served = page.locator("#model option:not([disabled])")
    # Model ids as the protocol spells them, with the kind of backend that serves each.
    expect(served.first).to_have_text("flux.1_kontext_pro · 5 credits · placeholder")
    unserved = page.locator("#model option[disabled]").first
    expect(unserved).to_contain_text("not served here")
    expect(page.locator("#model-help")).to_contain_text("Served by dry (placeholder).")
    expect(page.locator("#model-help")).to_contain_text("not this model's image")
    shot(page, "1-key-entered")

    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    expect(page.locator("#prompt-count")).to_have_text("42 / 1024")
    page.locator("#file-input").set_input_files(files=[png_file("orange.png", (230, 120, 30))])
    drop_file(page, "#dropzone", "teal.png", png((20, 150, 140)))
    thumbs = page.locator("#thumbs li")
    expect(thumbs).to_have_count(2)
    expect(page.locator("#thumbs .thumb-state")).to_have_text(["Uploaded", "Uploaded"])
    expect(page.locator("#images-count")).to_have_text("2 chosen of at most 4.")
    page.get_by_label("Template").select_option("figure")
    expect(page.locator("#template-help")).to_contain_text("stylized figure")
    expect(page.locator("#submit")).to_have_text(f"Generate · {PRICE} credits")

    record_progress(page)
    page.get_by_role("button", name="Generate").click()
    progress = page.locator("#task-progress")
    page.wait_for_function(
        """() => document.getElementById("task-progress").value > 0
              && document.getElementById("task-status").textContent === "Running" """
    )
    expect(page.locator("#task-detail")).to_contain_text("left")
    expect(page.get_by_role("button", name="Cancel task")).to_be_visible()
    shot(page, "2-running-with-progress")

    expect(page.locator("#task-status")).to_have_text("Done: the image is ready")
    expect(progress).to_have_attribute("value", "100")
    image = page.locator("#result-image")
    page.wait_for_function(
        "() => { const i = document.getElementById('result-image');"
        " return i.complete && i.naturalWidth > 0; }"
    )
    assert image.evaluate("img => img.naturalWidth") == 512
    expect(image).to_have_attribute(
        "alt", "Generated image: a red fox in the snow, colours of image[1]"
    )
    expect(page.get_by_role("button", name="Cancel task")).to_be_hidden()
    task_id = page.locator("#task-meta").inner_text().rsplit("task ", 1)[1]
    with page.expect_download() as download:
        page.get_by_role("link", name="Download image").click()
    assert download.value.suggested_filename == f"easel-{task_id}.png"
    saved = ARTIFACTS / "downloaded.png"
    download.value.save_as(saved)
    with Image.open(saved) as downloaded:
        assert (downloaded.format, downloaded.width) == ("PNG", 512)

    seen: list[list[Any]] = page.evaluate("window.seen")
    values = [value for value, _ in seen]
    assert values == sorted(values), values
    assert any(0 < value < 100 for value in values), values
    assert values[-1] == 100
    assert any("left" in detail for _, detail in seen), seen

    expect(page.locator("#balance-amount")).to_have_text(str(CREDITS - PRICE))
    expect(page.locator("#balance-frozen")).to_have_text("")
    tiles = page.locator("#gallery .tile")
    expect(tiles).to_have_count(1)
    expect(tiles.first).to_contain_text("a red fox in the snow")
    expect(tiles.first.locator(".badge")).to_have_text("success")
    expect(tiles.first).to_contain_text(f"{PRICE} credits")
    page.wait_for_function(
        "() => { const i = document.querySelector('#gallery .tile img');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    shot(page, "3-result-shown", full_page=True)

    # The gallery survives a reload (localStorage), and so does the key.
    page.reload()
    expect(page.locator("#balance-amount")).to_have_text(str(CREDITS - PRICE))
    expect(page.locator("#gallery .tile .badge")).to_have_text(["success"])

    page.set_viewport_size({"width": 390, "height": 844})
    page.locator("#gallery .tile").first.click()
    expect(page.locator("#result-image")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "4-phone-390x844", show="#task-panel")
    shot(page, "4-phone-390x844-full", full_page=True)


@pytest.mark.e2e
def test_text_to_image_with_a_negative_prompt(page: Page, key: str, server: Server) -> None:
    enter_key(page, key)
    page.get_by_label("Text to image").check()
    expect(page.get_by_label("Model")).to_be_hidden()  # it runs on the server's t2i model
    expect(page.get_by_label("Template")).to_be_hidden()
    expect(page.locator("#dropzone")).to_be_hidden()
    expect(page.locator("#negative-help")).to_contain_text(
        f"runs on flux.1_kontext_pro for {T2I_PRICE} credits"
    )
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
    negative = page.get_by_label("Negative prompt")
    negative.fill("n" * 256)
    expect(page.locator("#negative-count")).to_have_text("256 / 255 (too long)")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-error")).to_contain_text("the limit is 255")
    negative.fill("people, boats")
    expect(page.locator("#form-error")).to_be_hidden()  # the fix clears the complaint
    expect(page.locator("#prompt-help")).not_to_contain_text("reference images")
    expect(page.locator("#submit")).to_have_text(f"Generate · {T2I_PRICE} credits")
    shot(page, "text-to-image-form")

    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#task-status")).to_have_text("Done: the image is ready")
    task_id = page.locator("#task-meta").inner_text().rsplit("task ", 1)[1]
    expect(page.locator("#balance-amount")).to_have_text(str(CREDITS - T2I_PRICE))
    expect(page.locator("#gallery .tile").first).to_contain_text(f"{T2I_PRICE} credits")
    answer = httpx.get(
        f"{server.base_url}/v2/openapi/task/{task_id}",
        headers={"Authorization": f"Bearer {key}"},
    ).json()["data"]
    assert answer["type"] == "text_to_image"
    assert answer["input"]["negative_prompt"] == "people, boats"

    page.get_by_label("Generate image").check()  # back: the model and the images return
    expect(page.get_by_label("Model")).to_be_visible()
    expect(page.get_by_label("Negative prompt")).to_be_hidden()


@pytest.mark.e2e
def test_an_outage_is_shown_until_the_connection_is_back(page: Page, key: str) -> None:
    enter_key(page, key)
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
    page.get_by_role("button", name="Generate").click()
    detail = page.locator("#task-detail")
    expect(detail).to_contain_text("left")
    record_progress(page)

    page.route(API, lambda route: route.abort("internetdisconnected"))
    expect(detail).to_have_text(OUTAGE)
    expect(detail).to_have_class(re.compile(r"\bwarn\b"))
    shot(page, "7-outage", show="#task-panel")
    page.wait_for_timeout(2_000)  # four ETA refreshes (every 500 ms) and several tries
    expect(detail).to_have_text(OUTAGE)
    details = [text for _, text in page.evaluate("window.seen")]
    outage = details[details.index(OUTAGE) :]
    assert set(outage) == {OUTAGE}, details  # nothing overwrote it while the server was away

    page.unroute(API)
    expect(page.locator("#task-status")).to_have_text("Done: the image is ready")
    expect(detail).to_have_text("100% done")
    expect(detail).not_to_have_class(re.compile(r"\bwarn\b"))


@pytest.mark.e2e
def test_a_balance_below_the_price_is_warned_before_submit(page: Page, server: Server) -> None:
    enter_key(page, create_key(server.config, 7), credits=7)
    warning = page.locator("#balance-warning")
    expect(warning).to_be_hidden()  # flux.1_kontext_pro costs 5
    page.get_by_label("Model").select_option("gpt_image_2")
    expect(warning).to_have_text(
        "gpt_image_2 costs 10 credits; the balance is 7, so the server will refuse this task. "
        "Ask the server's operator for credits, or choose a cheaper model."
    )
    shot(page, "8-balance-warning", show="#submit")

    # The server has the last word (a balance may have grown meanwhile); its answer keeps the
    # model id as the protocol spells it, uncapitalised.
    page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
    page.get_by_role("button", name="Generate").click()
    title = page.locator("#form-error .error-title")
    expect(title).to_have_text("gpt_image_2 costs 10 credits; the balance is 7. (error 2010)")
    page.get_by_label("Model").select_option("flux.1_kontext_pro")
    expect(warning).to_be_hidden()


@pytest.mark.e2e
def test_t_pose_is_offered_once(page: Page, key: str) -> None:
    enter_key(page, key)
    expect(page.locator("#template option")).not_to_have_count(1)  # the templates are in
    options = page.locator("#template option").all_inner_texts()
    assert "Character completion" in options
    choices = options + page.locator("#task-form label").all_inner_texts()
    assert [c for c in choices if c.startswith("T-pose")] == [
        "T-pose redraw the character in a T-pose"
    ]
    expect(page.get_by_role("checkbox", name="T-pose")).to_be_visible()


@pytest.mark.e2e
def test_api_error_shown_in_words(page: Page, key: str) -> None:
    enter_key(page, key)
    page.get_by_label("Prompt", exact=True).fill("a happy cat 😀")
    page.get_by_role("button", name="Generate").click()
    alert = page.locator("#form-error")
    expect(alert).to_have_attribute("role", "alert")
    expect(alert).to_contain_text(
        "Prompt contains a character that is not allowed at position 12: U+1F600 (emoji)."
    )
    expect(alert).to_contain_text("(error 2009)")
    expect(alert).to_contain_text("What to do: Remove emoji and special Unicode characters")
    shot(page, "5-error-2009", show="#prompt")
    expect(page.locator("#balance-amount")).to_have_text(str(CREDITS))
    expect(page.locator("#gallery-empty")).to_be_visible()

    # A key the server does not know is refused in words too.
    page.get_by_role("button", name="Forget key").click()
    page.get_by_role("textbox", name="API key").fill("tsk_not-a-real-key")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-error")).to_contain_text("unknown or revoked API key")
    expect(page.locator("#key-error")).to_contain_text("easel keys create")


@pytest.mark.e2e
def test_keyboard_only(page: Page, key: str) -> None:
    page.goto("/")
    expect(page.get_by_role("textbox", name="API key")).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.locator("#balance-amount")).to_have_text(str(CREDITS))
    prompt = page.get_by_label("Prompt", exact=True)
    expect(prompt).to_be_focused()
    page.keyboard.type("a lighthouse at dusk")

    page.keyboard.press("Tab")
    expect(page.get_by_label("Model")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Template")).to_be_focused()
    page.keyboard.press("Tab")
    t_pose = page.get_by_role("checkbox", name="T-pose")
    expect(t_pose).to_be_focused()
    page.keyboard.press("Space")
    expect(t_pose).to_be_checked()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    dropzone = page.get_by_role("button", name="Reference images")
    expect(dropzone).to_be_focused()
    outline = dropzone.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline == "solid", "the focused drop zone shows a focus ring"
    shot(page, "6-keyboard-focus")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(files=[png_file("blue.png", (40, 60, 200))])
    expect(page.locator("#thumbs .thumb-state")).to_have_text(["Uploaded"])
    with page.expect_file_chooser():
        page.keyboard.press("Space")

    page.keyboard.press("Tab")
    remove = page.get_by_role("button", name="Remove image[1] (blue.png)")
    expect(remove).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#thumbs li")).to_have_count(0)
    expect(dropzone).to_be_focused()

    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Generate")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#task-status")).to_have_text("Done: the image is ready")
    body = page.evaluate(
        "async () => { const t = JSON.parse(localStorage.getItem('easel.apiKey'));"
        " const id = document.querySelector('#gallery .tile').dataset.taskId;"
        " const r = await fetch('/v2/openapi/task/' + id,"
        " {headers: {Authorization: 'Bearer ' + t}}); return (await r.json()).data.input; }"
    )
    assert body["t_pose"] is True
    assert body["prompt"] == "a lighthouse at dusk"


# -- the page's files, in process (no browser) ----------------------------------------------


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    with TestClient(app) as client:
        yield client


def test_page_and_every_file_it_loads_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<meta name="viewport"' in page.text
    wanted = set(re.findall(r'(?:href|src)="(/playground/[^"]+)"', page.text))
    seen: set[str] = set()
    while wanted - seen:
        path = (wanted - seen).pop()
        seen.add(path)
        response = client.get(path)
        assert response.status_code == 200, path
        if path.endswith(".js"):
            assert response.headers["content-type"] == "text/javascript; charset=utf-8"
            imports = re.findall(r'from "\./([\w-]+\.js)"', response.text)
            wanted |= {f"/playground/{name}" for name in imports}
    assert seen >= {"/playground/app.js", "/playground/api.js", "/playground/styles.css"}


def test_templates_json_lists_the_eight_templates(client: TestClient) -> None:
    templates = client.get("/playground/templates.json").json()
    assert [t["slug"] for t in templates] == [
        "asset_extraction",
        "character_completion",
        "t_pose",
        "head_extraction",
        "3d_enhance",
        "variants",
        "print_clay",
        "figure",
    ]
    assert {t["title"] for t in templates} >= {"T-pose", "3D enhance", "Asset extraction"}
    assert next(t for t in templates if t["slug"] == "t_pose")["images"] == 1


@pytest.mark.parametrize(
    "path", ["/playground/nope.js", "/playground/__init__.py", "/playground/..%2F__init__.py"]
)
def test_other_files_are_refused(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 403
    assert response.json()["code"] == 1005
