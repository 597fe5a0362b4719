"""The published configs of the models the GPU benchmarks build with random weights.

``bench/flux_gpu.py`` and ``bench/gpu_families.py`` cannot download weights (the GPU machines
reach nothing outside), and the compute of a model does not depend on its weight values: so
they build each model from the values of its published ``config.json`` (the keys are the
constructor arguments of the diffusers or transformers class named beside each) with random
weights. Values as published on the Hugging Face Hub:

* FLUX.1-dev: ``black-forest-labs/FLUX.1-dev`` transformer, VAE and scheduler; its text
  encoders are CLIP ViT-L/14's text tower and T5 v1.1 XXL's encoder.
* Z-Image-Turbo: ``Tongyi-MAI/Z-Image-Turbo`` transformer and scheduler; its VAE is FLUX.1's
  and its text encoder Qwen3-4B.
* FLUX.2 [klein] 4B: ``black-forest-labs/FLUX.2-klein-4B`` transformer (5 double, 20 single
  blocks; ``joint_attention_dim`` is three stacked Qwen3-4B hidden states, 3 × 2560); the
  FLUX.2 VAE, whose published config is ``AutoencoderKLFlux2``'s defaults; Qwen3-4B. Its
  scheduler takes FLUX.1's dynamic-shift values: a schedule sets noise levels, not compute.
* Qwen-Image-Edit-2511: ``Qwen/Qwen-Image-Edit-2511`` transformer (60 layers,
  ``zero_cond_t``), scheduler, the Qwen-Image VAE (``AutoencoderKLQwenImage``'s defaults)
  and Qwen2.5-VL-7B as its text encoder (its vision tower included).

Token ids (``*_token_id``) are not set here: the benchmark takes them from its tokenizers.
``tests/test_bench_gpu.py`` checks that these configs make models of the published sizes.
"""

from __future__ import annotations

from typing import Any

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}  # fmt: skip
FLUX_DEV_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}  # fmt: skip
FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
    "max_shift": 1.15, "shift": 3.0, "use_dynamic_shifting": True,
}  # fmt: skip
CLIP_L_TEXT: dict[str, Any] = {  # CLIPTextConfig
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "projection_dim": 768,
}  # fmt: skip
T5_XXL_ENCODER: dict[str, Any] = {  # T5Config (v1.1 XXL)
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "num_heads": 64, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False,
}  # fmt: skip
QWEN3_4B: dict[str, Any] = {  # Qwen3Config
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
}  # fmt: skip
QWEN25_VL_7B: dict[str, Any] = {  # Qwen2_5_VLConfig
    "text_config": {
        "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
    },
    "vision_config": {
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
        "hidden_act": "silu", "in_chans": 3, "tokens_per_second": 2,
    },
    "vocab_size": 152064, "hidden_size": 3584, "tie_word_embeddings": False,
}  # fmt: skip
Z_IMAGE_TURBO_TRANSFORMER: dict[str, Any] = {
    "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840,
    "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5,
    "qk_norm": True, "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0,
    "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
}  # fmt: skip
FLUX2_KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 128, "num_layers": 5, "num_single_layers": 20,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32],
    "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": False,
}  # fmt: skip
FLUX2_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
    "max_shift": 1.15, "shift": 3.0, "use_dynamic_shifting": True,
}  # fmt: skip
QWEN_IMAGE_EDIT_2511_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
    "guidance_embeds": False, "axes_dims_rope": [16, 56, 56], "zero_cond_t": True,
}  # fmt: skip
QWEN_IMAGE_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192,
    "max_shift": 0.9, "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02,
    "time_shift_type": "exponential", "use_dynamic_shifting": True,
}  # fmt: skip

# family (the diffusers backend's ``pipeline``) -> component -> its published config
PUBLISHED: dict[str, dict[str, dict[str, Any]]] = {
    "flux": {
        "transformer": FLUX_DEV_TRANSFORMER, "vae": FLUX_DEV_VAE,
        "text_encoder": CLIP_L_TEXT, "text_encoder_2": T5_XXL_ENCODER,
    },
    "z-image": {
        "transformer": Z_IMAGE_TURBO_TRANSFORMER, "vae": FLUX_DEV_VAE,
        "text_encoder": QWEN3_4B,
    },
    "flux2-klein": {
        "transformer": FLUX2_KLEIN_4B_TRANSFORMER, "vae": {}, "text_encoder": QWEN3_4B,
    },
    "qwen-image-edit-plus": {
        "transformer": QWEN_IMAGE_EDIT_2511_TRANSFORMER, "vae": {},
        "text_encoder": QWEN25_VL_7B,
    },
}  # fmt: skip
# The schedulers' configs hold no sizes: the tiny runs use them too.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "flux": FLUX_DEV_SCHEDULER,
    "z-image": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False},
    "flux2-klein": FLUX2_SCHEDULER,
    "qwen-image-edit-plus": QWEN_IMAGE_SCHEDULER,
}
