"""Tiny random-weight Z-Image, FLUX.2 klein and Qwen-Image-Edit-Plus pipelines, built offline.

Part of ``easel demo-weights`` (:mod:`easel.backends.demo_weights`): the same idea as its FLUX
pipelines, for the open-weight families. **Their images are noise.**

The three share one tokenizer: a real ``Qwen2Tokenizer`` (byte-level BPE) built in code over
the 256 byte symbols and no merges, plus the chat and vision special tokens the pipelines'
prompt templates use, with a minimal chat template; so no Hub download. Each text encoder is a
Qwen3 (Z-Image, klein) or Qwen2.5-VL (Qwen-Image-Edit) model of hidden size 16 over that
vocabulary. klein's encoder keeps 27 layers, since the pipeline reads hidden states 9, 18 and
27. The Qwen-Image-Edit processor is transformers' Qwen2-VL one, built without torchvision
where it is missing (:mod:`._vl_processor`).

The shapes follow the rules of each model: Z-Image's ``cap_feat_dim`` is the encoder's hidden
size; klein's ``joint_attention_dim`` is three stacked hidden states (3 × 16) and its
``in_channels`` 4 × the VAE's latent channels; Qwen-Image's transformer reads 4 × the VAE's
``z_dim`` channels. torch, diffusers and transformers are imported inside the functions.
"""

from __future__ import annotations

from typing import Any

_HIDDEN = 16  # every text encoder's hidden size
# The special tokens of the Qwen prompt templates, after the 256 byte symbols.
_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer() -> Any:
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate([*symbols, *_SPECIALS])}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=_CHAT)
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIALS[1:]})
    return tokenizer


def _qwen3(model_class: Any, vocab_size: int, layers: int) -> Any:
    import torch
    from transformers import Qwen3Config

    torch.manual_seed(0)
    config = Qwen3Config(
        hidden_size=_HIDDEN,
        intermediate_size=_HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=vocab_size,
        max_position_embeddings=512,
    )
    return model_class(config)


def z_image() -> Any:
    """A ``ZImagePipeline``: one main and one refiner layer, a one-block VAE."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Model

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    transformer: Any = ZImageTransformer2DModel(  # type: ignore[no-untyped-call]
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=_HIDDEN,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 128, 128],  # positions up to 256 pixels a side
    )
    with torch.no_grad():  # created with torch.empty: fixed so the folder is reproducible
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    torch.manual_seed(0)
    vae = AutoencoderKL(  # type: ignore[no-untyped-call]
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return ZImagePipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler(),  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=_qwen3(Qwen3Model, len(tokenizer), layers=2),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def flux2_klein() -> Any:
    """A step-distilled ``Flux2KleinPipeline``: one double and one single block."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3ForCausalLM

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * _HIDDEN,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(  # type: ignore[no-untyped-call]
        sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 4),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return Flux2KleinPipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler(),  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=_qwen3(Qwen3ForCausalLM, len(tokenizer), layers=27),
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )


def qwen_image_edit_plus() -> Any:
    """A ``QwenImageEditPlusPipeline``: one transformer block, a small causal 3-D VAE and a
    one-layer Qwen2.5-VL whose vision tokens are the tokenizer's."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from easel.backends import _vl_processor

    tokenizer = _tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIALS}
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(  # type: ignore[no-untyped-call]
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4, 4],  # three halvings: 8 pixels a latent, as the real VAE
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    torch.manual_seed(0)
    text = {"hidden_size": _HIDDEN, "intermediate_size": _HIDDEN, "num_hidden_layers": 1}
    rope = {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}
    config = Qwen2_5_VLConfig(
        text_config={**text, "num_attention_heads": 2, "num_key_value_heads": 2,
                     "vocab_size": len(tokenizer), "rope_scaling": rope, "rope_theta": 1e6},
        vision_config={"depth": 1, "hidden_size": _HIDDEN, "intermediate_size": _HIDDEN,
                       "num_heads": 2, "out_hidden_size": _HIDDEN},
        hidden_size=_HIDDEN,  # type: ignore[call-arg]  # as diffusers' own tests build it
        vocab_size=len(tokenizer),
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )  # fmt: skip
    pipe: Any = QwenImageEditPlusPipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler(),  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=Qwen2_5_VLForConditionalGeneration(config),
        tokenizer=tokenizer,
        processor=_vl_processor.build(tokenizer, _CHAT),
        transformer=transformer,
    )
    # Without torchvision the processor is Easel's stand-in: the folder names the published one.
    pipe.register_to_config(processor=("transformers", "Qwen2VLProcessor"))
    return pipe


BUILDERS = {
    "z-image": z_image,
    "flux2-klein": flux2_klein,
    "qwen-image-edit-plus": qwen_image_edit_plus,
}
