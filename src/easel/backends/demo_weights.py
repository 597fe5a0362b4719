"""Tiny random-weight pipelines of every ``diffusers`` family, written to disk without the Hub.

``write_demo_weights(DIR)`` saves one diffusers pipeline per family (the backend's
``pipeline`` names): ``DIR/flux`` (``FluxPipeline``), ``DIR/flux-kontext``
(``FluxKontextPipeline``), and the open-weight ones built in :mod:`._demo_open_weights`
(``DIR/z-image``, ``DIR/flux2-klein``, ``DIR/qwen-image-edit-plus``), that a ``diffusers``
backend loads like real weights (``weights = "DIR/flux"``). **Their images are noise**:
every weight is random and the models are a few hundred kilobytes to a few megabytes. They
exist so the whole path (config, load, progress, cancel, references, PNG out) runs on any
CPU in seconds, offline.

The configs follow diffusers' own FLUX test components (``tests/pipelines/flux``), with the
three Hub downloads of those tests replaced by local objects: a ``T5Config`` built in code,
and both tokenizers made with the ``tokenizers`` library (a ``WordLevel`` model over a small
vocabulary) wrapped in ``PreTrainedTokenizerFast``. The pipelines only call the tokenizers,
read ``model_max_length`` and ``batch_decode``, so no CLIP/T5 tokenizer class is needed.

The sizes keep the FLUX shape rules: transformer ``in_channels`` = 4 × VAE latent channels,
the RoPE axes sum to the head dim, T5 ``d_model`` = ``joint_attention_dim`` and CLIP
``hidden_size`` = ``pooled_projection_dim``. A 64×64 image at 2–4 steps takes well under a
second on CPU. torch, diffusers and transformers are imported inside the function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_WIDTH = 32  # hidden size shared by T5 d_model, joint_attention_dim, CLIP and pooled dims
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3: bos, pad, eos, unk
_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "with",
    "and",
    "to",
    "from",
    "image",
    "photo",
    "picture",
    "cat",
    "dog",
    "person",
    "man",
    "woman",
    "red",
    "green",
    "blue",
    "black",
    "white",
    "small",
    "large",
    "background",
    "style",
    "render",
    "sketch",
    "object",
    "model",
    "front",
    "view",
    "pose",
    "t",
    "turn",
    "into",
    "make",
    "change",
    "add",
    "remove",
    "keep",
    "same",
    "color",
    "light",
    "dark",
]


def _tokenizer(model_max_length: int, with_bos: bool) -> Any:
    """A word-level tokenizer that lowercases, splits on whitespace, appends ``</s>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*_SPECIALS, *_WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<s> $A </s>" if with_bos else "$A </s>"
    core.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        model_max_length=model_max_length,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _components() -> dict[str, Any]:
    """Every FLUX component except the transformer, seeded so the folders are reproducible."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = CLIPTextConfig(
        hidden_size=_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(_SPECIALS) + len(_WORDS),
        projection_dim=_WIDTH,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        hidden_act="gelu",
        max_position_embeddings=77,
    )
    t5 = T5Config(
        d_model=_WIDTH,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        vocab_size=len(_SPECIALS) + len(_WORDS),
        pad_token_id=1,
        eos_token_id=2,
    )
    vae = AutoencoderKL(  # type: ignore[no-untyped-call]
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(),  # type: ignore[no-untyped-call]
        "text_encoder": CLIPTextModel(clip),
        "text_encoder_2": T5EncoderModel(t5),
        "tokenizer": _tokenizer(model_max_length=77, with_bos=True),
        "tokenizer_2": _tokenizer(model_max_length=512, with_bos=False),
        "vae": vae,
    }


def _transformer() -> Any:
    """One double and one single block; ``guidance_embeds`` as in FLUX.1-dev and Kontext-dev."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_WIDTH,
        pooled_projection_dim=_WIDTH,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )


def _flux(pipeline_class: Any) -> Any:
    return pipeline_class(transformer=_transformer(), **_components())


def _builders() -> dict[str, Callable[[], Any]]:
    from diffusers import FluxKontextPipeline, FluxPipeline

    from easel.backends._demo_open_weights import BUILDERS

    return {
        "flux": lambda: _flux(FluxPipeline),
        "flux-kontext": lambda: _flux(FluxKontextPipeline),
        **BUILDERS,
    }


def tiny_pipeline(family: str) -> Any:
    """A tiny random pipeline of ``family`` in memory (what :func:`write_demo_weights` saves)."""
    return _builders()[family]()


def write_demo_weights(directory: Path, families: Iterable[str] | None = None) -> dict[str, Path]:
    """Write tiny random pipelines to ``directory/<family>``: ``families`` (the ``pipeline``
    names of the diffusers backend), by default every family.

    Returns ``{family: path}``. Each folder reloads with ``from_pretrained(path,
    local_files_only=True)`` (Qwen-Image-Edit-Plus's, where torchvision is missing, given the
    processor that :func:`._vl_processor.load` reads, as Easel's loader does). The images
    they make are noise.
    """
    builders = _builders()
    names = list(builders) if families is None else list(families)
    written: dict[str, Path] = {}
    for name in names:
        target = directory / name
        builders[name]().save_pretrained(target)
        written[name] = target
    return written
