"""The types Tripo's official Go and JS SDKs decode v3 answers into, as strict Python checks.

Go (VAST-AI-Research/tripo-go-sdk, types.go and client.go): ``encoding/json`` into structs.
Each struct is a pydantic model in strict mode: a field must have the Go field's JSON type
(``int``/``int64`` take only integral JSON numbers, so ``5.0`` fails as ``json.Unmarshal``
fails; ``float64`` takes any number; ``string`` takes no number), ``null`` leaves the zero value
(every field is ``… | None``), and a field the struct does not declare is ignored.

JS (VAST-AI-Research/tripo-js-sdk, types/index.d.ts): plain ``JSON.parse``, so nothing fails at
run time; what a TypeScript caller relies on is the declared type. Each interface is a
``TypedDict`` checked strictly: a required field must be there with its type, an optional
(``?``) one may be absent but not ``null``, and ``[key: string]: any`` lets other fields be.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

GO_STATUSES_TERMINAL = ("success", "failed", "cancelled", "banned", "expired")  # constants.go

GoInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # int and int64 on 64-bit Go


class GoStrict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    _raw: str = PrivateAttr(default="")  # the JSON text decoded (json.RawMessage's bytes)


class GoEnvelope(GoStrict):  # types.go: envelope
    code: GoInt | None = None
    data: Any = None
    message: str | None = None
    suggestion: str | None = None


class GoCreated(GoStrict):  # http.go createTask: struct{ TaskID string }
    task_id: str | None = None


class GoUploaded(GoStrict):  # types.go: UploadedFile
    file_token: str | None = None


class GoBalance(GoStrict):  # types.go: Balance
    balance: float | None = None
    frozen: float | None = None


class GoTaskOutput(GoStrict):  # types.go: TaskOutput
    model: str | None = None
    model_url: str | None = None
    model_urls: list[str | None] | None = None
    base_model: str | None = None
    pbr_model: str | None = None
    rendered_image: str | None = None
    rendered_image_url: str | None = None
    generated_image_url: str | None = None
    riggable: bool | None = None
    rig_type: str | None = None


class GoTask(GoStrict):  # types.go: Task
    task_id: str | None = None
    type: str | None = None
    status: str | None = None  # TaskStatus is a string type: any value decodes
    progress: GoInt | None = None
    input: Any = None  # json.RawMessage
    output: GoTaskOutput | None = None
    credits_consumed: float | None = None
    created_at: str | None = None
    completed_at: str | None = None
    running_left_time: GoInt | None = None
    queuing_num: GoInt | None = None
    error_code: GoInt | None = None
    error_message: str | None = None


class GoTaskList(GoStrict):  # client.go ListTasks: struct{ Tasks []Task }
    tasks: list[GoTask] | None = None


JsStatus = Literal[
    "queued", "running", "success", "failed", "cancelled", "unknown", "banned", "expired"
]


class JsTaskOutput(TypedDict):
    model: NotRequired[str]
    model_url: NotRequired[str]
    model_urls: NotRequired[list[str]]
    base_model: NotRequired[str]
    pbr_model: NotRequired[str]
    rendered_image: NotRequired[str]
    rendered_image_url: NotRequired[str]
    generated_image_url: NotRequired[str]
    riggable: NotRequired[bool]
    rig_type: NotRequired[str]


class JsTask(TypedDict):
    task_id: str
    type: str
    status: JsStatus
    progress: NotRequired[float]
    input: NotRequired[dict[str, Any]]
    output: NotRequired[JsTaskOutput]
    credits_consumed: NotRequired[float]
    created_at: NotRequired[str]
    completed_at: NotRequired[str]
    running_left_time: NotRequired[float]
    queuing_num: NotRequired[float]
    error_code: NotRequired[float]
    error_message: NotRequired[str]


class JsTaskList(TypedDict):  # listTasks(taskIds): Promise<{ tasks: Task[] }>
    tasks: list[JsTask]


class JsBalance(TypedDict):
    balance: float
    frozen: NotRequired[float]


class JsUploaded(TypedDict):  # uploadFile: Promise<{ file_token: string }>
    file_token: str


class JsCreated(TypedDict):  # #createTask's caller: `const { task_id } = …`
    task_id: str


T = TypeVar("T")


def js_decode(declared: type[T], value: Any) -> T:
    """``value`` checked against the declared TypeScript type (strict; extra keys kept)."""
    adapter: TypeAdapter[T] = TypeAdapter(declared)
    adapter.validate_python(value, strict=True)
    checked: T = value
    return checked
