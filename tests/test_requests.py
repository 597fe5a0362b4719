"""Specification of ``parse_generate_image``: a task body in, a request or an error out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from easel.domain import templates
from easel.domain.catalog import CATALOG
from easel.domain.errors import (
    EaselError,
    InvalidParameter,
    InvalidPromptCharacters,
    ModelVersionInvalid,
    TaskTypeNotSupported,
)
from easel.domain.parsing import FileRef, GenerateImageRequest, parse_file, parse_generate_image
from easel.domain.prompts import T_POSE_INSTRUCTION


def body(**fields: Any) -> dict[str, Any]:
    """A valid minimal task body, with ``fields`` added or overridden."""
    return {"type": "generate_image", "prompt": "a cat on a windowsill", **fields}


def token(n: int) -> dict[str, Any]:
    return {"type": "png", "file_token": f"token-{n}"}


def tokens(count: int) -> list[dict[str, Any]]:
    return [token(n) for n in range(1, count + 1)]


def refused(fields: dict[str, Any], error: type[EaselError] = InvalidParameter) -> EaselError:
    with pytest.raises(error) as caught:
        parse_generate_image(fields)
    return caught.value


# --- type -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_type",
    [
        pytest.param("text_to_model", id="another-tripo-task-type"),
        pytest.param("generate-image", id="hyphenated"),
        pytest.param("GENERATE_IMAGE", id="upper-case"),
        pytest.param(None, id="missing"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_a_type_other_than_generate_image_is_refused_with_2002(task_type: object) -> None:
    fields = body(type=task_type)
    if task_type is None:
        del fields["type"]
    error = refused(fields, TaskTypeNotSupported)
    assert error.code == 2002
    assert repr(task_type) in error.message


# --- prompt -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param("  \n\t ", id="whitespace-only"),
    ],
)
def test_a_missing_or_blank_prompt_without_a_template_is_refused_with_1004(
    prompt: str | None,
) -> None:
    fields = body(prompt=prompt)
    if prompt is None:
        del fields["prompt"]
    error = refused(fields)
    assert error.code == 1004
    assert "prompt is required" in error.message
    assert "template" in error.suggestion


def test_a_template_without_a_prompt_is_accepted_and_composes_the_template_prompt() -> None:
    fields = body(template="figure")
    del fields["prompt"]
    request = parse_generate_image(fields)
    assert request.prompt == ""
    assert request.template is templates.TEMPLATES["figure"]
    assert request.composed_prompt == templates.TEMPLATES["figure"].prompt


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param(42, id="number"),
        pytest.param(True, id="boolean"),
        pytest.param(["a", "cat"], id="list"),
        pytest.param({"text": "a cat"}, id="object"),
    ],
)
def test_a_prompt_that_is_not_a_string_is_refused_with_1004(prompt: object) -> None:
    error = refused(body(prompt=prompt))
    assert error.code == 1004
    assert "prompt must be a string" in error.message


def test_the_prompt_rules_apply_to_the_request_prompt() -> None:
    assert refused(body(prompt="a" * 1025)).code == 1004
    emoji = refused(body(prompt="a cat 😺"), InvalidPromptCharacters)
    assert emoji.code == 2009
    assert "position 6" in emoji.message


# --- model_version ----------------------------------------------------------------------------


def test_model_version_defaults_to_flux_1_kontext_pro() -> None:
    request = parse_generate_image(body())
    assert request.model.version == "flux.1_kontext_pro"
    assert request.notes == ()
    assert request.input_echo()["model_version"] == "flux.1_kontext_pro"


def test_an_explicit_null_model_version_means_the_default() -> None:
    assert parse_generate_image(body(model_version=None)).model.version == "flux.1_kontext_pro"


@pytest.mark.parametrize("version", CATALOG)
def test_every_model_version_is_accepted_for_a_text_only_request(version: str) -> None:
    request = parse_generate_image(body(model_version=version))
    assert request.model.version == version
    assert request.notes == ()


@pytest.mark.parametrize("version", ["flux.2", "gpt-4o", "midjourney_v7", ""])
def test_an_unknown_model_version_is_refused_with_2017(version: str) -> None:
    error = refused(body(model_version=version), ModelVersionInvalid)
    assert error.code == 2017
    assert "flux.1_kontext_pro" in error.suggestion


def test_a_model_version_that_is_not_a_string_is_refused_with_1004() -> None:
    error = refused(body(model_version=1))
    assert error.code == 1004
    assert "model_version" in error.message


@pytest.mark.parametrize(
    "images",
    [
        pytest.param({"file": token(1)}, id="file"),
        pytest.param({"files": tokens(2)}, id="files"),
        pytest.param({"template": "t_pose"}, id="t_pose-template-image"),
        pytest.param({"template": "t-pose"}, id="t-pose-alias"),
    ],
)
def test_flux_1_dev_with_images_runs_on_flux_1_kontext_pro_with_a_note(
    images: dict[str, Any],
) -> None:
    request = parse_generate_image(body(model_version="flux.1_dev", **images))
    assert request.model.version == "flux.1_kontext_pro"
    assert request.input_echo()["model_version"] == "flux.1_kontext_pro"
    assert len(request.notes) == 1
    assert "flux.1_dev" in request.notes[0]
    assert "upgraded to flux.1_kontext_pro" in request.notes[0]


def test_flux_1_dev_with_more_images_than_kontext_takes_is_refused_after_the_upgrade() -> None:
    error = refused(body(model_version="flux.1_dev", files=tokens(5)))
    assert error.code == 1004
    assert "flux.1_kontext_pro takes at most 4" in error.message


def test_flux_1_dev_with_a_template_without_images_stays_flux_1_dev() -> None:
    request = parse_generate_image(body(model_version="flux.1_dev", template="variants"))
    assert request.model.version == "flux.1_dev"
    assert request.notes == ()


@pytest.mark.parametrize(
    ("images", "named"),
    [
        pytest.param({"file": token(1)}, "your files", id="file"),
        pytest.param({"files": tokens(1)}, "your files", id="files"),
        pytest.param({"template": "t_pose"}, "the template 't_pose'", id="t_pose-template"),
    ],
)
def test_midjourney_with_images_is_refused_with_1004(images: dict[str, Any], named: str) -> None:
    error = refused(body(model_version="midjourney", **images))
    assert error.code == 1004
    assert "midjourney cannot use image input" in error.message
    assert named in error.message


def test_midjourney_with_a_template_without_images_is_accepted() -> None:
    request = parse_generate_image(body(model_version="midjourney", template="figure"))
    assert request.model.version == "midjourney"
    assert request.image_count == 0


# --- file and files ---------------------------------------------------------------------------


def test_file_and_files_together_put_file_first() -> None:
    request = parse_generate_image(
        body(file={"file_token": "single"}, files=[{"file_token": "a"}, {"file_token": "b"}])
    )
    assert [ref.value for ref in request.files] == ["single", "a", "b"]
    assert request.input_echo()["files"] == [
        {"file_token": "single"},
        {"file_token": "a"},
        {"file_token": "b"},
    ]


@pytest.mark.parametrize(
    ("model", "extra", "image_count"),
    [
        pytest.param("flux.1_kontext_pro", {"files": tokens(4)}, 4, id="kontext-4-files"),
        pytest.param(
            "flux.1_kontext_pro", {"file": token(0), "files": tokens(3)}, 4, id="kontext-file+3"
        ),
        pytest.param(
            "flux.1_kontext_pro",
            {"files": tokens(3), "template": "t_pose"},
            4,
            id="kontext-3-files+template-image",
        ),
        pytest.param("gpt_4o", {"files": tokens(10)}, 10, id="gpt_4o-10"),
        pytest.param("gpt_image_2", {"files": tokens(10)}, 10, id="gpt_image_2-10"),
        pytest.param(
            "gemini_3.1_flash_image_preview",
            {"files": tokens(9), "template": "t_pose"},
            10,
            id="gemini_3.1-9-files+template-image",
        ),
    ],
)
def test_up_to_the_models_file_limit_is_accepted(
    model: str, extra: dict[str, Any], image_count: int
) -> None:
    request = parse_generate_image(body(model_version=model, **extra))
    assert request.model.version == model
    assert request.image_count == image_count


@pytest.mark.parametrize(
    ("model", "extra", "limit", "count"),
    [
        pytest.param("flux.1_kontext_pro", {"files": tokens(5)}, 4, 5, id="kontext-5-files"),
        pytest.param(
            "flux.1_kontext_pro", {"file": token(0), "files": tokens(4)}, 4, 5, id="kontext-file+4"
        ),
        pytest.param(
            "flux.1_kontext_pro",
            {"files": tokens(4), "template": "t_pose"},
            4,
            5,
            id="kontext-4-files+template-image-counts",
        ),
        pytest.param("gpt_4o", {"files": tokens(11)}, 10, 11, id="gpt_4o-11"),
        pytest.param("gpt_image_1.5", {"files": tokens(11)}, 10, 11, id="gpt_image_1.5-11"),
        pytest.param(
            "gemini_2.5_flash_image_preview",
            {"files": tokens(10), "template": "t_pose"},
            10,
            11,
            id="gemini_2.5-10-files+template-image-counts",
        ),
    ],
)
def test_more_images_than_the_model_takes_is_refused_with_1004(
    model: str, extra: dict[str, Any], limit: int, count: int
) -> None:
    error = refused(body(model_version=model, **extra))
    assert error.code == 1004
    assert f"{model} takes at most {limit} images; this request has {count}" in error.message


def test_files_must_be_a_list() -> None:
    error = refused(body(files=token(1)))
    assert error.code == 1004
    assert "files must be a list" in error.message


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        pytest.param({"file": "token-1"}, "file must be an object", id="file-a-string"),
        pytest.param({"files": ["token-1"]}, "files[0] must be an object", id="files-of-strings"),
        pytest.param(
            {"files": [token(1), {"type": "png"}]},
            "files[1] must have exactly one of",
            id="names-the-bad-index",
        ),
    ],
)
def test_a_bad_file_object_is_refused_with_1004_naming_where_it_is(
    fields: dict[str, Any], named: str
) -> None:
    error = refused(body(**fields))
    assert error.code == 1004
    assert named in error.message


# --- File objects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "has"),
    [
        pytest.param({"type": "png"}, "none", id="no-source"),
        pytest.param({"file_token": None, "url": None}, "none", id="only-nulls"),
        pytest.param(
            {"file_token": "t", "url": "https://example.com/a.png"}, "file_token, url", id="two"
        ),
        pytest.param(
            {"file_token": "t", "object": {"bucket": "b", "key": "k"}},
            "file_token, object",
            id="token-and-object",
        ),
        pytest.param(
            {
                "file_token": "t",
                "url": "https://example.com/a.png",
                "object": {"bucket": "b", "key": "k"},
            },
            "file_token, url, object",
            id="three",
        ),
    ],
)
def test_a_file_needs_exactly_one_of_file_token_url_or_object(
    file: dict[str, Any], has: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_file(file, "file")
    assert caught.value.code == 1004
    assert f"exactly one of file_token, url, object (it has {has})" in caught.value.message


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        pytest.param(
            {"type": "png", "file_token": "abc"},
            FileRef("file_token", "abc", type="png"),
            id="file_token",
        ),
        pytest.param(
            {"url": "http://example.com/a.png"},
            FileRef("url", "http://example.com/a.png"),
            id="http-url",
        ),
        pytest.param(
            {"type": "jpeg", "url": "https://cdn.example.com/x/y.jpg?sig=1"},
            FileRef("url", "https://cdn.example.com/x/y.jpg?sig=1", type="jpeg"),
            id="https-url",
        ),
        pytest.param(
            {"object": {"bucket": "tripo-data", "key": "uploads/a.png"}},
            FileRef("object", "uploads/a.png", bucket="tripo-data"),
            id="object",
        ),
        pytest.param(
            {"file_token": "abc", "url": None}, FileRef("file_token", "abc"), id="null-is-absent"
        ),
        pytest.param(
            {"type": "webp", "file_token": "abc"},
            FileRef("file_token", "abc", type="webp"),
            id="type-is-advisory-only",
        ),
    ],
)
def test_a_file_with_one_valid_source_is_accepted(file: dict[str, Any], expected: FileRef) -> None:
    assert parse_file(file, "file") == expected


@pytest.mark.parametrize(
    ("file", "message"),
    [
        pytest.param({"url": "ftp://example.com/a.png"}, "url must be an http(s) URL", id="ftp"),
        pytest.param({"url": "file:///etc/passwd"}, "url must be an http(s) URL", id="file-url"),
        pytest.param({"url": "example.com/a.png"}, "url must be an http(s) URL", id="no-scheme"),
        pytest.param({"url": "https://"}, "url must be an http(s) URL", id="no-host"),
        pytest.param({"url": "http://[::1"}, "url must be an http(s) URL", id="broken-ipv6-host"),
        pytest.param({"url": "http://[zz]/a"}, "url must be an http(s) URL", id="bad-ipv6-host"),
        pytest.param({"url": ""}, "url must be a non-empty string", id="empty-url"),
        pytest.param({"url": 5}, "url must be a non-empty string", id="url-a-number"),
        pytest.param({"file_token": ""}, "file_token must be a non-empty string", id="empty-token"),
        pytest.param({"file_token": "  "}, "file_token must be a non-empty string", id="blank"),
        pytest.param({"file_token": 7}, "file_token must be a non-empty string", id="int-token"),
        pytest.param({"object": {"key": "k"}}, "object must be", id="object-without-bucket"),
        pytest.param({"object": {"bucket": "b"}}, "object must be", id="object-without-key"),
        pytest.param({"object": {"bucket": "b", "key": ""}}, "object must be", id="empty-key"),
        pytest.param({"object": {"bucket": 1, "key": "k"}}, "object must be", id="int-bucket"),
        pytest.param({"object": "b/k"}, "object must be", id="object-a-string"),
        pytest.param(
            {"type": 1, "file_token": "abc"}, "type must be a string", id="type-not-a-string"
        ),
    ],
)
def test_a_file_with_an_invalid_source_is_refused_with_1004(
    file: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_file(file, "files[2]")
    assert caught.value.code == 1004
    assert f"files[2].{message}" in caught.value.message


# A File source value paired with whether it is a valid value for that source.
Tagged = tuple[object, bool]

_NON_BLANK = st.text(min_size=1).filter(lambda s: bool(s.strip()))
_HOST = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,2}", fullmatch=True)

_TOKEN_VALUES: st.SearchStrategy[Tagged] = st.one_of(
    _NON_BLANK.map(lambda v: (v, True)),
    st.sampled_from(["", " ", "\t\n"]).map(lambda v: (v, False)),
    st.one_of(st.integers(), st.booleans(), st.lists(st.text(), max_size=2)).map(
        lambda v: (v, False)
    ),
)
_URL_VALUES: st.SearchStrategy[Tagged] = st.one_of(
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["http", "https"]),
        _HOST,
        st.from_regex(r"[A-Za-z0-9_./-]{0,30}", fullmatch=True),
    ).map(lambda v: (v, True)),
    st.builds(
        lambda scheme, host: f"{scheme}://{host}/a.png",
        st.sampled_from(["ftp", "file", "data", "s3", "javascript"]),
        _HOST,
    ).map(lambda v: (v, False)),
    st.text().filter(lambda s: ":" not in s).map(lambda v: (v, False)),  # no scheme at all
    st.sampled_from(["http://", "https:///a.png", "http://[::1", "http://[zz]/"]).map(
        lambda v: (v, False)
    ),
    st.integers().map(lambda v: (v, False)),
)
_OBJECT_VALUES: st.SearchStrategy[Tagged] = st.one_of(
    st.fixed_dictionaries({"bucket": st.text(min_size=1), "key": st.text(min_size=1)}).map(
        lambda v: (v, True)
    ),
    st.fixed_dictionaries({"key": st.text(min_size=1)}).map(lambda v: (v, False)),
    st.fixed_dictionaries({"bucket": st.text(min_size=1)}).map(lambda v: (v, False)),
    st.fixed_dictionaries({"bucket": st.text(min_size=1), "key": st.just("")}).map(
        lambda v: (v, False)
    ),
    st.fixed_dictionaries({"bucket": st.integers(), "key": st.text(min_size=1)}).map(
        lambda v: (v, False)
    ),
    st.one_of(st.text(), st.integers(), st.lists(st.text(), max_size=2)).map(lambda v: (v, False)),
)


@given(
    file_token=st.none() | _TOKEN_VALUES,
    url=st.none() | _URL_VALUES,
    object_=st.none() | _OBJECT_VALUES,
    file_type=st.none() | st.sampled_from(["png", "jpeg", "webp", "gif"]),
)
def test_a_random_file_object_is_accepted_iff_exactly_one_valid_source_is_present(
    file_token: Tagged | None,
    url: Tagged | None,
    object_: Tagged | None,
    file_type: str | None,
) -> None:
    sources = {"file_token": file_token, "url": url, "object": object_}
    present = {name: tagged for name, tagged in sources.items() if tagged is not None}
    file: dict[str, Any] = {name: value for name, (value, _) in present.items()}
    if file_type is not None:
        file["type"] = file_type
    should_accept = len(present) == 1 and next(iter(present.values()))[1]

    if should_accept:
        ref = parse_file(file, "file")
        (name,) = present
        assert ref.source == name
        assert ref.type == file_type
        if name == "object":
            assert (ref.bucket, ref.value) == (file["object"]["bucket"], file["object"]["key"])
        else:
            assert ref.value == file[name].strip()
    else:
        with pytest.raises(InvalidParameter) as caught:
            parse_file(file, "file")
        assert caught.value.code == 1004


# --- booleans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["t_pose", "sketch_to_render"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("yes", id="yes"),
        pytest.param("true", id="string-true"),
        pytest.param(1, id="one"),
        pytest.param(0, id="zero"),
        pytest.param([], id="list"),
    ],
)
def test_t_pose_and_sketch_to_render_must_be_booleans(flag: str, value: object) -> None:
    error = refused(body(**{flag: value}))
    assert error.code == 1004
    assert f"{flag} must be true or false" in error.message


def test_t_pose_and_sketch_to_render_default_to_false() -> None:
    request = parse_generate_image(body())
    assert request.t_pose is False
    assert request.sketch_to_render is False


def test_t_pose_true_adds_its_instruction_after_the_user_prompt() -> None:
    request = parse_generate_image(body(t_pose=True, sketch_to_render=False))
    assert request.t_pose is True
    assert request.composed_prompt == f"a cat on a windowsill\n\n{T_POSE_INSTRUCTION}"


# --- image[N] ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "prompt"),
    [
        pytest.param({"files": tokens(2)}, "mix image[1] and image[2]", id="user-files"),
        pytest.param(
            {"files": tokens(2), "template": "t_pose"},
            "pose image[1] like image[3]",
            id="template-image-comes-after-user-files",
        ),
        pytest.param({"template": "t_pose"}, "follow image[1]", id="template-image-alone"),
        pytest.param(
            {"file": token(0), "files": tokens(1)}, "image[2] over image[1]", id="file-and-files"
        ),
    ],
)
def test_image_references_count_user_images_then_template_images(
    extra: dict[str, Any], prompt: str
) -> None:
    parse_generate_image(body(prompt=prompt, **extra))


@pytest.mark.parametrize(
    ("extra", "prompt", "count"),
    [
        pytest.param({"files": tokens(2), "template": "t_pose"}, "image[4]", 3, id="past-tmpl"),
        pytest.param({"files": tokens(2)}, "image[3]", 2, id="past-user-files"),
        pytest.param({"files": tokens(2)}, "image[0]", 2, id="zero"),
        pytest.param({}, "image[1]", 0, id="no-images"),
        pytest.param({"model_version": "flux.1_dev"}, "image[1]", 0, id="text-only-model"),
    ],
)
def test_an_image_reference_beyond_the_images_given_is_refused_with_1004(
    extra: dict[str, Any], prompt: str, count: int
) -> None:
    error = refused(body(prompt=prompt, **extra))
    assert error.code == 1004
    assert f"has {count} image(s)" in error.message


# --- the accepted request ---------------------------------------------------------------------


def test_input_echo_holds_the_effective_model_version_and_the_files() -> None:
    request = parse_generate_image(
        body(
            model_version="flux.1_dev",
            file={"type": "png", "url": "https://example.com/a.png"},
            files=[{"object": {"bucket": "tripo-data", "key": "k/1.png"}}],
            template="3d-enhance",
            sketch_to_render=True,
        )
    )
    assert isinstance(request, GenerateImageRequest)
    assert request.input_echo() == {
        "prompt": "a cat on a windowsill",
        "model_version": "flux.1_kontext_pro",
        "files": [
            {"type": "png", "url": "https://example.com/a.png"},
            {"object": {"bucket": "tripo-data", "key": "k/1.png"}},
        ],
        "template": "3d_enhance",
        "t_pose": False,
        "sketch_to_render": True,
    }


def test_input_echo_of_a_text_only_request_has_no_files() -> None:
    echo = parse_generate_image(body(model_version="gpt_4o")).input_echo()
    assert echo == {
        "prompt": "a cat on a windowsill",
        "model_version": "gpt_4o",
        "t_pose": False,
        "sketch_to_render": False,
    }


@pytest.mark.parametrize("template", [42, ["t_pose"]])
def test_a_template_that_is_not_a_string_is_refused_with_1004(template: object) -> None:
    error = refused(body(template=template))
    assert error.code == 1004
    assert "template must be a string" in error.message


def test_an_unknown_template_in_a_request_is_refused_with_1004() -> None:
    error = refused(body(template="cartoon"))
    assert error.code == 1004
    assert "'cartoon'" in error.message


@pytest.mark.parametrize(
    "extra",
    [
        {"negative_prompt": "x" * 256},
        {"negative_prompt": 7},
        {"style_image": {"type": "png"}},
        {"style_image": "not a file"},
    ],
)
def test_text_to_image_fields_the_schema_calls_invalid_are_refused_on_generate_image_too(
    extra: dict[str, Any],
) -> None:
    """The one published body schema documents negative_prompt and style_image for both task
    types; generate_image ignores valid ones but refuses what the schema calls invalid."""
    with pytest.raises(InvalidParameter):
        parse_generate_image({"type": "generate_image", "prompt": "a cat", **extra})
    valid = {"negative_prompt": "blur", "style_image": {"type": "png", "file_token": "t"}}
    request = parse_generate_image({"type": "generate_image", "prompt": "a cat", **valid})
    assert (request.files, request.negative_prompt) == ((), "")
