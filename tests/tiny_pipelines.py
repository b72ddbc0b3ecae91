"""Tiny random Ovis-U1 generation pipelines for tests."""

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

from ovis_u1_hf import OvisU1Processor
from ovis_u1_hf.pipelines import OvisU1EditPipeline, OvisU1TextToImagePipeline, OvisU1Transformer2DModel
from tiny import tiny_image_processor, tiny_tokenizer
from tiny_models import tiny_model


def tiny_scheduler(timestep_shift: bool = True) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=timestep_shift,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def tiny_components(timestep_shift: bool = True, seed: int = 0) -> dict:
    processor = OvisU1Processor(tiny_image_processor(), tiny_tokenizer())
    text_encoder = tiny_model(
        seed=seed,
        vocab_size=len(processor.tokenizer),
        image_token_id=processor.image_token_id,
        visual_indicator_token_ids=[processor.image_start_token_id, processor.image_end_token_id],
    )
    torch.manual_seed(seed)
    transformer = OvisU1Transformer2DModel(
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=2 * text_encoder.config.hidden_size,
        axes_dims_rope=(4, 6, 6),
        refiner_num_layers=1,
        refiner_num_attention_heads=4,
    )
    with torch.no_grad():  # zero-initialised gates and outputs would hide most of the model
        for parameter in transformer.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.13025,
    )
    return dict(
        text_encoder=text_encoder,
        processor=processor,
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=tiny_scheduler(timestep_shift),
    )


def tiny_text_to_image_pipeline(**kwargs) -> OvisU1TextToImagePipeline:
    pipe = OvisU1TextToImagePipeline(**tiny_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_edit_pipeline(**kwargs) -> OvisU1EditPipeline:
    pipe = OvisU1EditPipeline(**tiny_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
