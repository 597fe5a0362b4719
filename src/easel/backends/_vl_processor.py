"""transformers' Qwen2-VL processor without torchvision, for Qwen-Image-Edit-Plus.

``QwenImageEditPlusPipeline`` reads its prompt and reference images through a
``Qwen2VLProcessor``, which transformers builds from an image processor, a tokenizer and a
**video processor**. Video processors exist only as torchvision classes, and the processor's
constructor checks every part's class against ``transformers.VideoProcessorMixin``, a name the
package exports only where torchvision is installed (``ProcessorMixin.__init__`` →
``check_argument_for_proper_class``), even when the part is None. So without torchvision no
``Qwen2VLProcessor`` can be built, and ``from_pretrained`` of the pipeline fails.

The pipeline never passes a video. :func:`processor_class` is ``Qwen2VLProcessor`` less its
video part (an ``__init__`` without ``video_processor``: transformers reads a processor's
parts from that signature), which loads the image processor of the saved folder with the
PIL backend (``Qwen2VLImageProcessorPil``) where torchvision is missing. Where torchvision is
installed nothing here is used: the pipeline loads its processor as published.
transformers is imported inside the functions.
"""

from __future__ import annotations

import functools
from typing import Any

_VIDEO = {"video_processor_type": "Qwen2VLVideoProcessor"}  # its defaults, as published


def torchvision_missing() -> bool:
    """Whether transformers will refuse to build a video processor here."""
    from transformers import is_torchvision_available

    return not is_torchvision_available()


@functools.cache
def processor_class() -> Any:
    """``Qwen2VLProcessor`` without a video processor, under the same name: transformers writes
    the class name into the saved files, which then read as a standard processor's."""
    from transformers import Qwen2VLProcessor as Full

    class Qwen2VLProcessor(Full):  # type: ignore[misc, unused-ignore]  # Any without transformers
        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None
        ) -> None:
            super().__init__(  # type: ignore[no-untyped-call]
                image_processor, tokenizer, None, chat_template=chat_template
            )

        def to_dict(self) -> dict[str, Any]:
            """Also name the video processor, with its defaults, so that the saved folder
            loads as published where torchvision is installed."""
            return {**super().to_dict(), "video_processor": dict(_VIDEO)}

    return Qwen2VLProcessor


def build(tokenizer: Any, chat_template: str) -> Any:
    """A Qwen2-VL processor over ``tokenizer`` with default image settings: the published
    class where torchvision is installed, else :func:`processor_class` with the PIL image
    processor."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    if torchvision_missing():
        image_only = processor_class()
        return image_only(Qwen2VLImageProcessorPil(), tokenizer, chat_template=chat_template)
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2VLProcessor(  # type: ignore[no-untyped-call]
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=chat_template,
    )


def load(where: str, **hub: Any) -> Any:
    """The image-only processor of a saved pipeline (its ``processor`` folder); ``hub``:
    ``local_files_only`` and ``token``."""
    return processor_class().from_pretrained(where, subfolder="processor", **hub)
