"""RS-M-CLIP: a multilingual CLIP for remote-sensing imagery, with a DINO self-distillation head.

The towers are transformers' own `CLIPVisionModel` and `XLMRobertaModel` (or, for the standard CLIP checkpoints,
`CLIPTextModel`), so SDPA / flash attention and gradient checkpointing come with them. This file travels to the Hub with the model (``trust_remote_code``): it imports only
transformers, torch and its sibling ``configuration_rsmclip``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import CLIPTextModel, CLIPVisionModel, PreTrainedModel, XLMRobertaModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, auto_docstring, can_return_tuple

from .configuration_rsmclip import RSMCLIPConfig


@auto_docstring
@dataclass
class RSMCLIPOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `return_loss` is `True`):
        Symmetric InfoNCE loss for image-text similarity (the i-th text is the positive of the i-th image).
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        The scaled cosine similarities between `image_embeds` and `text_embeds`.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
        The scaled cosine similarities between `text_embeds` and `image_embeds` (the transpose).
    text_embeds (`torch.FloatTensor` of shape `(text_batch_size, projection_dim)`):
        The L2-normalised text embeddings: the pooled last hidden state of the text tower (masked mean for
        XLM-RoBERTa, the end-of-text token for CLIP), then the projection.
    image_embeds (`torch.FloatTensor` of shape `(image_batch_size, projection_dim)`):
        The L2-normalised image embeddings: the vision tower's pooled output through `visual_projection`.
    text_model_output (`BaseModelOutputWithPooling`):
        The text tower's output; its `pooler_output` is the projected, un-normalised text embedding.
    vision_model_output (`BaseModelOutputWithPooling`):
        The vision tower's output; its `pooler_output` is the projected, un-normalised image embedding.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where the i-th row's positive is the i-th column."""
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def clip_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of the text->image and image->text cross-entropies."""
    return (contrastive_loss(logits_per_text) + contrastive_loss(logits_per_text.t())) / 2.0


class RSMCLIPDistillationHead(nn.Module):
    """The DINO projection head: MLP -> L2 normalisation -> weight-normalised linear layer to `out_dim` logits.

    With `norm_last_layer=True` the weight-norm magnitude is fixed at 1 (not trained), as in DINO:
    `requires_grad_(True)` leaves it frozen.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        num_layers = max(num_layers, 1)
        if num_layers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(num_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False)
        )
        self.norm_last_layer = norm_last_layer
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad = False

    def requires_grad_(self, requires_grad: bool = True) -> RSMCLIPDistillationHead:
        super().requires_grad_(requires_grad)
        if self.norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mlp(features)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


@auto_docstring
class RSMCLIPPreTrainedModel(PreTrainedModel):
    config: RSMCLIPConfig
    config_class = RSMCLIPConfig
    base_model_prefix = "rsmclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = [
        "CLIPEncoderLayer",
        "CLIPVisionEmbeddings",
        "CLIPTextEmbeddings",
        "XLMRobertaLayer",
        "XLMRobertaEmbeddings",
    ]

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, so that weights missing at `from_pretrained` get the same initialisation as the constructor's.

        transformers skips, for custom code, every module whose own parameters are all loaded, because custom
        `_init_weights` may write parameters in place. That also skips parameter-less containers (`CLIPAttention`,
        `CLIPMLP`, and this model once `logit_scale` is loaded) whose initialisation sets their children's
        weights, so the vision tower's and the projections' missing weights would get the generic N(0, 0.02).
        Here every initialisation goes through `transformers.initialization`, which leaves loaded tensors alone.
        """
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        factor = self.config.initializer_factor
        if isinstance(module, RSMCLIPModel):
            init.normal_(
                module.visual_projection.weight, std=self.config.vision_config.hidden_size**-0.5 * factor
            )
            for layer in module.text_projection.modules():
                if isinstance(layer, nn.Linear):
                    init.normal_(layer.weight, std=layer.in_features**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, parametrize.ParametrizationList) and hasattr(module, "original0"):
            # The weight-normalised last layer of the distillation head: direction ~ truncated N(0, range * factor)
            # as the head's other layers (DINO's 0.02 by default), unit magnitude.
            init.trunc_normal_(module.original1, std=self.config.initializer_range * factor)
            init.ones_(module.original0)
        elif isinstance(module, nn.Linear) and parametrize.is_parametrized(module):
            pass  # its weight is computed from the parametrisation above
        elif isinstance(module, nn.Linear):
            # Linear layers outside the towers (the towers initialise their own): DINO's truncated normal.
            init.trunc_normal_(module.weight, std=self.config.initializer_range * factor)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm | nn.Embedding):
            super()._init_weights(module)


@auto_docstring(
    custom_intro="""
    RS-M-CLIP: CLIP ViT image tower + XLM-RoBERTa text tower (masked mean pooling, MLP projection), a learned
    temperature, and the DINO distillation head used by the self-distillation loss during training. With a
    `CLIPTextConfig` as `text_config` the text tower is CLIP's causal text transformer (`CLIPTextModel`), pooled at
    the end-of-text token (the argmax of the ids) with a linear projection: the standard CLIP architecture.

    The distillation head is trained only by the self-distillation step (`get_distillation_logits`, or the
    training step of `train.py`), never by `forward`. Its parameters are therefore frozen (`requires_grad=False`) whenever the
    model is built or loaded, so a plain CLIP fine-tune (`forward(return_loss=True)` under the Trainer or DDP)
    has no trainable parameter without a gradient. The distillation step unfreezes it with
    `model.distillation_head.requires_grad_(True)` (the weight-norm magnitude stays fixed with
    `dino_norm_last_layer`).
    """
)
class RSMCLIPModel(RSMCLIPPreTrainedModel):
    def __init__(self, config: RSMCLIPConfig) -> None:
        super().__init__(config)
        vision_config = config.vision_config
        text_config = config.text_config

        self.vision_model = CLIPVisionModel._from_config(vision_config)
        if config.is_clip_text:
            self.text_model = CLIPTextModel._from_config(text_config)
        else:
            self.text_model = XLMRobertaModel._from_config(text_config, add_pooling_layer=False)
        self.visual_projection = nn.Linear(vision_config.hidden_size, config.projection_dim, bias=False)
        if config.text_projection_type == "mlp":
            self.text_projection = nn.Sequential(
                nn.Linear(text_config.hidden_size, config.text_projection_hidden_dim, bias=False),
                nn.GELU(),
                nn.Linear(config.text_projection_hidden_dim, config.projection_dim, bias=False),
            )
        else:
            self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.distillation_head = RSMCLIPDistillationHead(
            in_dim=vision_config.hidden_size,
            out_dim=config.dino_out_dim,
            hidden_dim=config.dino_hidden_dim,
            bottleneck_dim=config.dino_bottleneck_dim,
            num_layers=config.dino_num_layers,
            norm_last_layer=config.dino_norm_last_layer,
        )
        # Trained only by the distillation step, which unfreezes it (see the class docstring).
        self.distillation_head.requires_grad_(False)
        self.post_init()

    # ----------------------------------------------------------------------------------------------- text tower
    def _text_attention_mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        # CLIP's causal text tower needs no padding mask: the end-of-text token it pools never sees what follows
        # (OpenCLIP pads with id 0, a real token, so a mask cannot be derived from the ids).
        if attention_mask is None and not self.config.is_clip_text:
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        return attention_mask

    @can_return_tuple
    @auto_docstring
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        r"""
        Encode texts. `pooler_output` is the projected, un-normalised embedding `(batch, projection_dim)`.

        XLM-RoBERTa: pooling is the mean over non-padding tokens (`attention_mask`, or `input_ids != pad_token_id`
        when no mask is given), so the same text padded to different lengths has the same embedding. CLIP: the
        state of the end-of-text token, found as the argmax of the ids (the EOT token has the highest id), as
        OpenAI CLIP and OpenCLIP pool; padding after it changes nothing (causal attention).
        """
        if input_ids is None:
            raise ValueError("get_text_features needs `input_ids` (tokenize the texts with the processor)")
        attention_mask = self._text_attention_mask(input_ids, attention_mask)
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if self.config.text_pooler_type == "mean_pooler":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        elif self.config.text_pooler_type == "argmax_pooler":
            # int32: ONNX's ArgMax takes no int64 at opset 14 (as transformers' CLIPTextModel does it)
            eot = input_ids.to(dtype=torch.int, device=hidden.device).argmax(dim=-1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot]
        else:
            pooled = hidden[:, 0]
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=self.text_projection(pooled),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # --------------------------------------------------------------------------------------------- image tower
    def get_image_backbone_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = True, **kwargs: Any
    ) -> torch.Tensor:
        """The pooled CLS feature after the post-layernorm, before projection: the distillation head's input.

        `interpolate_pos_encoding` defaults to True so that local crops smaller than the training size work.
        """
        outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            **kwargs,
        )
        return outputs.pooler_output

    @can_return_tuple
    @auto_docstring
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        r"""
        Encode images. `pooler_output` is the projected, un-normalised embedding `(batch, projection_dim)`.
        """
        if pixel_values is None:
            raise ValueError(
                "get_image_features needs `pixel_values` (preprocess the images with the processor)"
            )
        outputs = self.vision_model(
            pixel_values=pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            **kwargs,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.visual_projection(outputs.pooler_output),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def get_distillation_logits(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = True
    ) -> torch.Tensor:
        """DINO head logits `(batch, dino_out_dim)` for a batch of (global or local) crops."""
        return self.distillation_head(
            self.get_image_backbone_features(pixel_values, interpolate_pos_encoding)
        )

    # ------------------------------------------------------------------------------------------------- forward
    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> RSMCLIPOutput:
        r"""
        return_loss (`bool`, *optional*):
            Whether or not to return the symmetric InfoNCE loss (the i-th text is the positive of the i-th image).
        """
        if input_ids is None or input_ids.shape[0] == 0:
            raise ValueError(
                "no texts given (an empty list of texts or candidate labels?): pass at least one text"
            )
        if pixel_values is None or pixel_values.shape[0] == 0:
            raise ValueError("no images given: pass at least one image")
        # return_dict=True: the feature methods would follow `config.return_dict` and return tuples.
        vision_outputs = self.get_image_features(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        text_outputs = self.get_text_features(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logit_scale = self.logit_scale.exp()
        logits_per_text = logit_scale * text_embeds @ image_embeds.t().to(text_embeds.dtype)
        logits_per_image = logits_per_text.t()
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"return_loss needs as many texts as images (pairs), got {logits_per_text.shape[0]} texts and "
                    f"{logits_per_text.shape[1]} images"
                )
            loss = clip_loss(logits_per_text)
        return RSMCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, reading safetensors only (a pickled `.bin` is refused).

        Loading replaces the parameters, so the distillation head is frozen again here, as the constructor does.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("RS-M-CLIP weights are read from safetensors only")
        kwargs["use_safetensors"] = True
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.distillation_head.requires_grad_(False)
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained` (safetensors), plus what a Hub-hosted copy needs to run without this
        package: the code files, `auto_map` for AutoModel and AutoModelForZeroShotImageClassification, and the
        retrieval pipeline (`custom_pipelines`)."""
        pipeline_file = Path(__file__).with_name("pipeline_rsmclip.py")
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(
            {
                "AutoConfig": "configuration_rsmclip.RSMCLIPConfig",
                "AutoModel": "modeling_rsmclip.RSMCLIPModel",
                "AutoModelForZeroShotImageClassification": "modeling_rsmclip.RSMCLIPModel",
            }
        )
        self.config.auto_map = auto_map
        if pipeline_file.exists():
            self.config.custom_pipelines = {
                "rsmclip-retrieval": {
                    "impl": "pipeline_rsmclip.RSMCLIPRetrievalPipeline",
                    "pt": ["AutoModel"],
                    "type": "multimodal",
                }
            }
        if kwargs.pop("safe_serialization", True) is False:
            raise ValueError("RS-M-CLIP weights are saved as safetensors only")
        super().save_pretrained(save_directory, *args, **kwargs)
        if pipeline_file.exists():
            shutil.copyfile(pipeline_file, Path(save_directory) / pipeline_file.name)

    # -------------------------------------------------------------------------------------- dense patch features
    def get_patch_features(
        self,
        pixel_values: torch.Tensor,
        naclip: bool = False,
        naclip_gaussian_std: float = 5.0,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Dense image features: one projected, un-normalised embedding per patch, `(batch, h, w, projection_dim)`
        with `h, w` = image height and width // `patch_size` (7 x 7 for ViT-B/32 at 224 px).

        The patch tokens of the last layer go through the post-layernorm and the visual projection, as the CLS
        token does in `get_image_features`, so they can be compared with text embeddings by cosine similarity.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, 3, height, width)`): processed images.
            naclip (`bool`, *optional*, defaults to `False`): replace the last vision block by NACLIP's
                neighbourhood attention (Hajimiri, Ben Ayed, Dolz, "Pay Attention to Your Neighbours: Training-Free
                Open-Vocabulary Semantic Segmentation", WACV 2025, arXiv:2404.08181): attention logits from
                key-key similarity plus a Gaussian kernel over the 2-D patch grid, and no residual connection and
                no feed-forward in that block (see `naclip_attention`). Training-free, and much better localised.
            naclip_gaussian_std (`float`, *optional*, defaults to 5.0): standard deviation of the Gaussian, in
                patches (NACLIP's default).
            interpolate_pos_encoding (`bool`, *optional*): for images of another size than the model's.
        """
        if pixel_values is None:
            raise ValueError(
                "get_patch_features needs `pixel_values` (preprocess the images with the processor)"
            )
        vision = self.vision_model
        patch = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        hidden = vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden = vision.pre_layrnorm(hidden)
        layers = vision.encoder.layers
        for layer in layers[:-1] if naclip else layers:
            hidden = layer(hidden, None)
        if naclip:
            hidden = naclip_attention(layers[-1], hidden, grid, naclip_gaussian_std)
        patches = self.visual_projection(vision.post_layernorm(hidden[:, 1:]))
        return patches.reshape(patches.shape[0], grid[0], grid[1], patches.shape[-1])


# ------------------------------------------------------------------------------------- NACLIP neighbourhood attention
def naclip_neighbourhood_bias(
    grid: tuple[int, int], std: float, device: Any = None, dtype: Any = None
) -> torch.Tensor:
    """NACLIP's additive attention bias `(1 + h*w, 1 + h*w)`: for patches p and q at grid positions (i, j) and
    (k, l), `exp(-((i - k)**2 + (j - l)**2) / (2 * std**2))`; 0 in the CLS row and column."""
    if std <= 0:
        raise ValueError(f"the NACLIP Gaussian standard deviation must be positive, got {std}")
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )
    points = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)
    kernel = torch.exp(-torch.cdist(points, points).pow(2) / (2.0 * std**2))
    bias = torch.zeros(kernel.shape[0] + 1, kernel.shape[1] + 1, dtype=torch.float64)
    bias[1:, 1:] = kernel
    return bias.to(device=device, dtype=dtype or torch.float32)


def naclip_attention(
    layer: nn.Module,
    hidden_states: torch.Tensor,
    grid: tuple[int, int],
    std: float = 5.0,
    return_weights: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """NACLIP's replacement of a CLIP encoder layer (Hajimiri et al., WACV 2025, arXiv:2404.08181).

    `x = layer_norm1(hidden_states)`; per head, `softmax(k k^T * scale + neighbourhood_bias) v` (keys compared with
    keys instead of queries, plus the Gaussian neighbourhood of `naclip_neighbourhood_bias`), then `out_proj`. The
    layer's residual connection and feed-forward block are dropped. Returns the new hidden states `(batch, tokens,
    hidden)`, and the attention weights `(batch, heads, tokens, tokens)` when `return_weights=True`.
    """
    attention = layer.self_attn
    x = layer.layer_norm1(hidden_states)
    batch, tokens, _ = x.shape
    if tokens != 1 + grid[0] * grid[1]:
        raise ValueError(f"{tokens} tokens do not match a CLS token plus a {grid[0]}x{grid[1]} patch grid")
    shape = (batch, tokens, attention.num_heads, attention.head_dim)
    keys = attention.k_proj(x).view(shape).transpose(1, 2)
    values = attention.v_proj(x).view(shape).transpose(1, 2)
    bias = naclip_neighbourhood_bias(grid, std, device=x.device, dtype=x.dtype)
    weights = torch.softmax(keys @ keys.transpose(-1, -2) * attention.scale + bias, dim=-1)
    output = attention.out_proj((weights @ values).transpose(1, 2).reshape(batch, tokens, -1))
    return (output, weights) if return_weights else output


RSMCLIPModel.register_for_auto_class("AutoModel")

__all__ = ["RSMCLIPModel", "RSMCLIPPreTrainedModel", "RSMCLIPDistillationHead", "RSMCLIPOutput", "clip_loss"]
