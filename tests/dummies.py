"""Tiny random-weight components and pipelines for tests (the way diffusers' tests build dummy components).

The CLIP tokenizer is the real CLIP BPE one shipped with MiniCanvas; the T5 tokenizer is a word-level one
built in code.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from hirm.encoders import TextEncoder
from hirm.minicanvas.tokenizer import load_tokenizer

WORDS = "a an the of in on with by star circle cat dog painting van gogh photo picture red blue shape".split()  # noqa: SIM905


def clip_tokenizer() -> CLIPTokenizer:
    return load_tokenizer()


def t5_tokenizer() -> T5TokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0)


def clip_config(hidden: int = 32, layers: int = 4, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=projection_dim,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="quick_gelu",
    )


def clip_text_model(seed: int = 0, hidden: int = 32, layers: int = 4, projection: bool = False):
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(clip_config(hidden, layers)).eval()


def text_encoder(seed: int = 0, hidden: int = 32, layers: int = 4) -> TextEncoder:
    return TextEncoder("text_encoder", clip_text_model(seed, hidden, layers), clip_tokenizer())


def t5_model(seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(WORDS) + 3, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg).eval()


def vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=2, sample_size=16)


def sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
    )
    return StableDiffusionPipeline(
        vae=vae(seed), text_encoder=clip_text_model(seed), tokenizer=clip_tokenizer(), unet=unet.eval(),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=4,
    )
    return StableDiffusionXLPipeline(
        vae=vae(seed), text_encoder=clip_text_model(seed), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_model(seed + 1, projection=True), tokenizer_2=clip_tokenizer(), unet=unet.eval(),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), force_zeros_for_empty_prompt=True,
    )


def sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(), vae=_sd3_vae(seed),
        text_encoder=clip_text_model(seed, projection=True), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_model(seed + 1, projection=True), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_model(seed), tokenizer_3=t5_tokenizer(),
    )


def _sd3_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=2, sample_size=16, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.0609, scaling_factor=1.5035)


def flux_pipeline(seed: int = 0) -> FluxPipeline:
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed)
    flux_vae = AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             norm_num_groups=2, sample_size=16, use_quant_conv=False, use_post_quant_conv=False,
                             shift_factor=0.0609, scaling_factor=1.5035)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=flux_vae, text_encoder=clip_text_model(seed),
        tokenizer=clip_tokenizer(), text_encoder_2=t5_model(seed), tokenizer_2=t5_tokenizer(),
        transformer=transformer.eval(),
    )
