# Copyright 2026 The ovis-u1-hf authors. Licensed under the Apache License, Version 2.0.
"""LoRA loading for the Ovis-U1 pipelines, on diffusers' LoRA machinery (`LoraBaseMixin`), as each in-library family.

Like the pipeline modules, this file imports only third-party packages: it is copied into saved pipeline folders.
"""

import os
from collections.abc import Callable

import torch
from diffusers.loaders.lora_base import LoraBaseMixin, _fetch_state_dict, _load_lora_into_text_encoder
from diffusers.utils import logging, require_peft_backend
from huggingface_hub.utils import validate_hf_hub_args


logger = logging.get_logger(__name__)

TRANSFORMER_NAME = "transformer"
TEXT_ENCODER_NAME = "text_encoder"


class OvisU1LoraLoaderMixin(LoraBaseMixin):
    r"""
    Loads LoRA layers into [`OvisU1Transformer2DModel`] (`transformer`) and into the understanding model
    (`text_encoder`, whose language model provides the condition). Specific to [`OvisU1TextToImagePipeline`] and
    [`OvisU1EditPipeline`].

    A LoRA file holds diffusers-format keys prefixed with the component's name (`transformer.` / `text_encoder.`), as
    [`~OvisU1LoraLoaderMixin.save_lora_weights`] writes them.
    """

    _lora_loadable_modules = [TRANSFORMER_NAME, TEXT_ENCODER_NAME]
    transformer_name = TRANSFORMER_NAME
    text_encoder_name = TEXT_ENCODER_NAME

    @classmethod
    @validate_hf_hub_args
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor], **kwargs):
        r"""
        Returns the LoRA state dict of a Hub id, a folder, a file (`weight_name`) or a dict.

        See [`~loaders.StableDiffusionLoraLoaderMixin.lora_state_dict`] for the arguments (`cache_dir`,
        `force_download`, `proxies`, `local_files_only`, `token`, `revision`, `subfolder`, `weight_name`,
        `use_safetensors`, `return_lora_metadata`).
        """
        return_lora_metadata = kwargs.pop("return_lora_metadata", False)
        use_safetensors = kwargs.pop("use_safetensors", None)
        # As every diffusers family: safetensors first, a pickled file only when safetensors were not asked for.
        allow_pickle = use_safetensors is None
        state_dict, metadata = _fetch_state_dict(
            pretrained_model_name_or_path_or_dict=pretrained_model_name_or_path_or_dict,
            weight_name=kwargs.pop("weight_name", None),
            use_safetensors=True if use_safetensors is None else use_safetensors,
            local_files_only=kwargs.pop("local_files_only", None),
            cache_dir=kwargs.pop("cache_dir", None),
            force_download=kwargs.pop("force_download", False),
            proxies=kwargs.pop("proxies", None),
            token=kwargs.pop("token", None),
            revision=kwargs.pop("revision", None),
            subfolder=kwargs.pop("subfolder", None),
            user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
            allow_pickle=allow_pickle,
        )
        if any("dora_scale" in k for k in state_dict):
            logger.warning("DoRA checkpoints are not supported: their `dora_scale` entries are ignored.")
            state_dict = {k: v for k, v in state_dict.items() if "dora_scale" not in k}
        return (state_dict, metadata) if return_lora_metadata else state_dict

    @require_peft_backend
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs,
    ):
        """
        Loads the LoRA layers of `pretrained_model_name_or_path_or_dict` into `self.transformer` and, where the file has
        some, `self.text_encoder`. Other arguments go to [`~OvisU1LoraLoaderMixin.lora_state_dict`].

        Args:
            pretrained_model_name_or_path_or_dict (`str`, `os.PathLike` or `dict`):
                A Hub id, a folder, or a state dict (a file: its folder with `weight_name`).
            adapter_name (`str`, *optional*):
                Name of the adapter; defaults to `default_{i}`.
            hotswap (`bool`, defaults to `False`):
                Replace the weights of the loaded adapter `adapter_name` in place (transformer only); see
                [`~loaders.StableDiffusionLoraLoaderMixin.load_lora_weights`].
            low_cpu_mem_usage (`bool`, *optional*):
                Load the LoRA weights without initialising random ones first.
        """
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        kwargs["return_lora_metadata"] = True
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        if not all("lora" in key for key in state_dict):
            raise ValueError("Invalid LoRA checkpoint: every parameter name must contain 'lora'.")
        known = (f"{self.transformer_name}.", f"{self.text_encoder_name}.")
        unknown = sorted({key.split(".")[0] for key in state_dict if not key.startswith(known)})
        if unknown:
            # Unprefixed keys would be dropped silently by both loaders.
            raise ValueError(
                f"LoRA keys must start with {self.transformer_name!r}. or {self.text_encoder_name!r}., got {unknown}."
            )

        transformer_keys = any(key.startswith(known[0]) for key in state_dict)
        if transformer_keys:
            self.load_lora_into_transformer(
                state_dict,
                transformer=self.transformer,
                adapter_name=adapter_name,
                metadata=metadata,
                _pipeline=self,
                low_cpu_mem_usage=low_cpu_mem_usage,
                hotswap=hotswap,
            )
        if any(key.startswith(known[1]) for key in state_dict):
            if getattr(self, "text_encoder", None) is None:
                raise ValueError("The LoRA has text encoder layers but the pipeline has no `text_encoder`.")
            self.load_lora_into_text_encoder(
                state_dict,
                network_alphas=None,
                text_encoder=self.text_encoder,
                lora_scale=self.lora_scale,
                adapter_name=adapter_name,
                _pipeline=self,
                metadata=metadata,
                low_cpu_mem_usage=low_cpu_mem_usage,
                hotswap=hotswap,
            )

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ):
        """Loads the `transformer.`-prefixed LoRA layers of `state_dict` into `transformer`."""
        logger.info(f"Loading {cls.transformer_name}.")
        transformer.load_lora_adapter(
            state_dict,
            network_alphas=None,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def load_lora_into_text_encoder(
        cls,
        state_dict,
        network_alphas,
        text_encoder,
        prefix=None,
        lora_scale=1.0,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ):
        """Loads the `text_encoder.`-prefixed LoRA layers of `state_dict` into `text_encoder` (transformers' PEFT
        integration)."""
        _load_lora_into_text_encoder(
            state_dict=state_dict,
            network_alphas=network_alphas,
            lora_scale=lora_scale,
            text_encoder=text_encoder,
            prefix=prefix,
            text_encoder_name=cls.text_encoder_name,
            adapter_name=adapter_name,
            metadata=metadata,
            _pipeline=_pipeline,
            low_cpu_mem_usage=low_cpu_mem_usage,
            hotswap=hotswap,
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, torch.nn.Module | torch.Tensor] | None = None,
        text_encoder_lora_layers: dict[str, torch.nn.Module | torch.Tensor] | None = None,
        is_main_process: bool = True,
        weight_name: str | None = None,
        save_function: Callable | None = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata: dict | None = None,
        text_encoder_lora_adapter_metadata: dict | None = None,
    ):
        r"""
        Saves the LoRA layers of the transformer and/or the text encoder (e.g. `get_peft_model_state_dict(model)`)
        into one file, with their adapter configs as metadata. See
        [`~loaders.StableDiffusionLoraLoaderMixin.save_lora_weights`].
        """
        lora_layers, lora_metadata = {}, {}
        if transformer_lora_layers:
            lora_layers[cls.transformer_name] = transformer_lora_layers
            lora_metadata[cls.transformer_name] = transformer_lora_adapter_metadata
        if text_encoder_lora_layers:
            lora_layers[cls.text_encoder_name] = text_encoder_lora_layers
            lora_metadata[cls.text_encoder_name] = text_encoder_lora_adapter_metadata
        if not lora_layers:
            raise ValueError("Pass `transformer_lora_layers`, `text_encoder_lora_layers` or both.")
        cls._save_lora_weights(
            save_directory=save_directory,
            lora_layers=lora_layers,
            lora_metadata=lora_metadata,
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
        )

    def fuse_lora(
        self,
        components: list[str] = [TRANSFORMER_NAME, TEXT_ENCODER_NAME],
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs,
    ):
        r"""Fuses the LoRA layers into the weights of `components`; see [`~loaders.LoraBaseMixin.fuse_lora`]."""
        super().fuse_lora(
            components=components, lora_scale=lora_scale, safe_fusing=safe_fusing, adapter_names=adapter_names, **kwargs
        )

    def unfuse_lora(self, components: list[str] = [TRANSFORMER_NAME, TEXT_ENCODER_NAME], **kwargs):
        r"""Reverses [`~OvisU1LoraLoaderMixin.fuse_lora`]."""
        super().unfuse_lora(components=components, **kwargs)
