"""Published configurations of SD2.1-base, SDXL-base and FLUX.1-dev, embedded.

GPU cost depends on the architecture, the resolution and the step count, not on the weights.
Weights cannot be downloaded here, so the real-size cost benchmark builds these architectures
with random weights. The values are those of the ``config.json`` files of
``stabilityai/stable-diffusion-2-1-base``, ``stabilityai/stable-diffusion-xl-base-1.0`` and
``black-forest-labs/FLUX.1-dev`` (denoiser, text encoders, VAE), and of OpenAI's CLIP
ViT-L/14 vision tower for the stand-in verifier.
"""
from __future__ import annotations

from typing import Any

SD21_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
)

SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + pooled text 1280
    norm_num_groups=32,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
)

FLUX_DEV_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

# Text encoders (transformers configs).
CLIP_L_TEXT: dict[str, Any] = dict(  # openai/clip-vit-large-patch14 (SDXL enc. 1, FLUX)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
OPENCLIP_H_TEXT: dict[str, Any] = dict(  # SD 2.x text encoder (OpenCLIP ViT-H/14)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
    projection_dim=512, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)
OPENCLIP_BIGG_TEXT: dict[str, Any] = dict(  # SDXL text encoder 2 (OpenCLIP ViT-bigG/14)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
    projection_dim=1280, bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)
T5_XXL_ENCODER: dict[str, Any] = dict(  # google/t5-v1_1-xxl encoder (FLUX text encoder 2)
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
    is_encoder_decoder=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)

_VAE_COMMON: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
)
SD21_VAE: dict[str, Any] = dict(_VAE_COMMON, latent_channels=4, sample_size=512,
                                scaling_factor=0.18215)
SDXL_VAE: dict[str, Any] = dict(_VAE_COMMON, latent_channels=4, sample_size=1024,
                                scaling_factor=0.13025, force_upcast=True)
FLUX_VAE: dict[str, Any] = dict(_VAE_COMMON, latent_channels=16, sample_size=1024,
                                scaling_factor=0.3611, shift_factor=0.1159,
                                use_quant_conv=False, use_post_quant_conv=False,
                                force_upcast=True)

CLIP_L14_VISION: dict[str, Any] = dict(  # openai/clip-vit-large-patch14 image tower
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)
TINY_CLIP_VISION: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    image_size=64, patch_size=8, projection_dim=32, hidden_act="quick_gelu",
)

# Which published parts make each backbone: {component name: (class name, config)}.
BACKBONE_COMPONENTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "sd21": {
        "unet": ("UNet2DConditionModel", SD21_UNET),
        "text_encoder": ("CLIPTextModel", OPENCLIP_H_TEXT),
        "vae": ("AutoencoderKL", SD21_VAE),
    },
    "sdxl": {
        "unet": ("UNet2DConditionModel", SDXL_UNET),
        "text_encoder": ("CLIPTextModel", CLIP_L_TEXT),
        "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG_TEXT),
        "vae": ("AutoencoderKL", SDXL_VAE),
    },
    "flux": {
        "transformer": ("FluxTransformer2DModel", FLUX_DEV_TRANSFORMER),
        "text_encoder": ("CLIPTextModel", CLIP_L_TEXT),
        "text_encoder_2": ("T5EncoderModel", T5_XXL_ENCODER),
        "vae": ("AutoencoderKL", FLUX_VAE),
    },
}

# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json: the 512 px base model
# predicts epsilon (the 768 px stable-diffusion-2-1 predicts v). Shipped as PNDM, which cannot
# restart at t0, so the benchmark steps DDIM from this same config, as the README advises users.
SD21_BASE_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    prediction_type="epsilon",
    trained_betas=None,
)
# Benchmark settings whose scheduler differs from the tiny pipelines' (class name, config).
BENCH_SCHEDULERS = {"sd21": ("DDIMScheduler", SD21_BASE_SCHEDULER)}

# Parameter counts of the published checkpoints (denoisers), to check the configs against.
PUBLISHED_DENOISER_PARAMS = {"sd21": 865_910_724, "sdxl": 2_567_463_684, "flux": 11_901_408_320}


def build_component(class_name: str, config: dict[str, Any]) -> Any:
    """Instantiate one component with random weights (in the ambient device/dtype context)."""
    import diffusers
    import transformers

    if hasattr(diffusers, class_name) and class_name != "CLIPTextModel":
        return getattr(diffusers, class_name)(**config)
    cls = getattr(transformers, class_name)
    config_cls = {"T5EncoderModel": transformers.T5Config,
                  "CLIPVisionModelWithProjection": transformers.CLIPVisionConfig}.get(
                      class_name, transformers.CLIPTextConfig)
    return cls(config_cls(**config))
