"""Known vision-language models for remote sensing (and the general models they start from), as data.

Each entry says where the weights are (a Hub repository and, for a bare OpenCLIP checkpoint, the file in it), what
they are (family, architecture, the OpenCLIP architecture the file loads into), which languages the model was
trained on, its licence as its authors state it, and its paper. `rsmclip convert NAME OUT` takes a name of this
table. The families:

- `rsmclip-xlmr`: OpenCLIP ViT + XLM-RoBERTa text tower (RS-M-CLIP and its multilingual start point); converts
  with `rsmclip convert`.
- `openclip-clip`: OpenCLIP checkpoints of the standard CLIP architecture (ViT image tower, CLIP text transformer);
  converts with `rsmclip convert`.
- `clip`, `siglip`, `altclip`: transformers-native checkpoints (`CLIPModel`, `SiglipModel`, `AltCLIPModel`).

Nothing here imports torch or transformers: the command line lists and resolves names without loading a model.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import PurePosixPath

from .templates import LANGUAGES

FAMILIES: tuple[str, ...] = ("rsmclip-xlmr", "openclip-clip", "clip", "siglip", "altclip")
FORMATS: tuple[str, ...] = ("open_clip", "transformers")
# The families that `rsmclip convert` turns into this project's format.
CONVERTIBLE_FAMILIES: tuple[str, ...] = ("rsmclip-xlmr", "openclip-clip")


@dataclass(frozen=True)
class KnownModel:
    """One model of the table.

    Attributes:
        name: the short name used on the command line, e.g. `"remoteclip-vit-b-32"`.
        title: a human-readable name.
        hub_id: the Hugging Face Hub repository, or None when the weights are not on the Hub (then `url`).
        file: the checkpoint file inside the repository (a bare OpenCLIP state dict, e.g. `"RemoteCLIP-ViT-B-32.pt"`),
            or None when the repository is a complete OpenCLIP folder (`open_clip_config.json` + weights, or an
            OpenCLIP pretrained tag) or a transformers model.
        format: `"open_clip"` or `"transformers"`.
        family: one of `FAMILIES`.
        architecture: the architecture in words, e.g. `"ViT-B/32"`.
        open_clip_model: the OpenCLIP architecture (built-in model config) that the checkpoint loads into, e.g.
            `"ViT-B-32-quickgelu"`; None when the repository says it itself or the format is transformers.
        languages: ISO 639-1 codes of the training captions; None for a model trained on many languages without a
            fixed list (e.g. LAION-5B's).
        license: the licence as the authors state it; None when they state none.
        paper: the reference to cite.
        supported: False for a checkpoint this project cannot hold (e.g. a ResNet image tower).
        note: why not, or what else to know.
        url: the official download when the weights are not on the Hub.
    """

    name: str
    title: str
    hub_id: str | None
    file: str | None
    format: str
    family: str
    architecture: str
    open_clip_model: str | None
    languages: tuple[str, ...] | None
    license: str | None
    paper: str
    supported: bool = True
    note: str = ""
    url: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family {self.family!r} is not one of {FAMILIES}")
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format {self.format!r} is not one of {FORMATS}")
        if self.hub_id is None and self.url is None:
            raise ValueError(f"{self.name}: neither a Hub repository nor a download URL")

    @property
    def english_only(self) -> bool:
        """Trained on English captions only (prompts in other languages are outside its training)."""
        return self.languages == ("en",)

    @property
    def convertible(self) -> bool:
        """Whether `rsmclip convert` turns this checkpoint into this project's format."""
        return self.supported and self.family in CONVERTIBLE_FAMILIES

    @property
    def source(self) -> str:
        """Where the weights are, as `rsmclip convert` and users write it."""
        if self.hub_id is None:
            return str(self.url)
        return f"hf-hub:{self.hub_id}" + (f" ({self.file})" if self.file else "")

    def download_commands(self, local_dir: str | None = None) -> list[str]:
        """The commands that fetch the weights into `local_dir` (default: `<name>-checkpoint`) where the network is
        reachable, for a machine that is offline later."""
        local_dir = local_dir or f"{self.name}-checkpoint"
        if self.hub_id is not None:
            files = f" {self.file}" if self.file else ""
            return [f"hf download {self.hub_id}{files} --local-dir {local_dir}"]
        archive = PurePosixPath(str(self.url)).name
        return [f"curl -O {self.url}", f"unzip {archive} -d {local_dir}"]


_RS_M_CLIP_PAPER = (
    "Silva, Magalhães, Tuia, Martins. Multilingual Vision-Language Pre-training for the Remote Sensing Domain. "
    "SIGSPATIAL 2024. arXiv:2410.23370"
)
_REMOTECLIP_PAPER = (
    "Liu, Chen, et al. RemoteCLIP: A Vision Language Foundation Model for Remote Sensing. IEEE TGRS 2024. "
    "arXiv:2306.11029"
)
_GEORSCLIP_PAPER = (
    "Zhang, Zhao, Guo, Yin. RS5M and GeoRSCLIP: A Large Scale Vision-Language Dataset and A Large Vision-Language "
    "Model for Remote Sensing. IEEE TGRS 2024. arXiv:2306.11300"
)
_SKYCLIP_PAPER = (
    "Wang, Prabha, Huang, Wu, Rajagopal. SkyScript: A Large and Semantically Diverse Vision-Language Dataset for "
    "Remote Sensing. AAAI 2024. arXiv:2312.12856"
)
_CLIP_PAPER = (
    "Radford et al. Learning Transferable Visual Models From Natural Language Supervision. ICML 2021. "
    "arXiv:2103.00020"
)
_SKYSCRIPT_CKPT = "https://opendatasharing.s3.us-west-2.amazonaws.com/SkyScript/ckpt"
_REMOTECLIP_LICENSE_NOTE = "The authors state no licence for the weights."
_SKYCLIP_NOTE = (
    "Not on the Hugging Face Hub: the authors publish a zip archive holding an OpenCLIP training checkpoint (the "
    "licence is their repository's)."
)

KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name="rs-m-clip",
        title="RS-M-CLIP",
        hub_id="joaodaniel/RS-M-CLIP",
        file=None,
        format="open_clip",
        family="rsmclip-xlmr",
        architecture="ViT-B/32 + XLM-RoBERTa base",
        open_clip_model=None,
        languages=LANGUAGES,
        license="mit",
        paper=_RS_M_CLIP_PAPER,
    ),
    KnownModel(
        name="laion-clip-vit-b-32-xlm-roberta-base",
        title="OpenCLIP xlm-roberta-base-ViT-B-32 (laion5b_s13b_b90k), RS-M-CLIP's start point",
        hub_id="laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k",
        file=None,
        format="open_clip",
        family="rsmclip-xlmr",
        architecture="ViT-B/32 + XLM-RoBERTa base",
        open_clip_model="xlm-roberta-base-ViT-B-32",
        languages=None,
        license="mit",
        paper=(
            "Cherti et al. Reproducible scaling laws for contrastive language-image learning. CVPR 2023. "
            "arXiv:2212.07143 (trained on LAION-5B, multilingual)"
        ),
    ),
    KnownModel(
        name="remoteclip-vit-b-32",
        title="RemoteCLIP ViT-B/32",
        hub_id="chendelong/RemoteCLIP",
        file="RemoteCLIP-ViT-B-32.pt",
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-B/32",
        open_clip_model="ViT-B-32",
        languages=("en",),
        license=None,
        paper=_REMOTECLIP_PAPER,
        note=_REMOTECLIP_LICENSE_NOTE,
    ),
    KnownModel(
        name="remoteclip-vit-l-14",
        title="RemoteCLIP ViT-L/14",
        hub_id="chendelong/RemoteCLIP",
        file="RemoteCLIP-ViT-L-14.pt",
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-L/14",
        open_clip_model="ViT-L-14",
        languages=("en",),
        license=None,
        paper=_REMOTECLIP_PAPER,
        note=_REMOTECLIP_LICENSE_NOTE,
    ),
    KnownModel(
        name="remoteclip-rn50",
        title="RemoteCLIP RN50",
        hub_id="chendelong/RemoteCLIP",
        file="RemoteCLIP-RN50.pt",
        format="open_clip",
        family="openclip-clip",
        architecture="RN50 (ModifiedResNet)",
        open_clip_model="RN50",
        languages=("en",),
        license=None,
        paper=_REMOTECLIP_PAPER,
        supported=False,
        note="Its image tower is a ModifiedResNet, which this project cannot hold (ViT image towers only).",
    ),
    KnownModel(
        name="georsclip-vit-b-32",
        title="GeoRSCLIP ViT-B/32",
        hub_id="Zilun/GeoRSCLIP",
        file="ckpt/RS5M_ViT-B-32.pt",
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-B/32, QuickGELU",
        # The authors load it into OpenCLIP's ViT-B/32 built from the OpenAI weights, which use QuickGELU.
        open_clip_model="ViT-B-32-quickgelu",
        languages=("en",),
        license="cc",
        paper=_GEORSCLIP_PAPER,
    ),
    KnownModel(
        name="georsclip-vit-h-14",
        title="GeoRSCLIP ViT-H/14",
        hub_id="Zilun/GeoRSCLIP",
        file="ckpt/RS5M_ViT-H-14.pt",
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-H/14",
        open_clip_model="ViT-H-14",
        languages=("en",),
        license="cc",
        paper=_GEORSCLIP_PAPER,
    ),
    KnownModel(
        name="skyclip-vit-b-32",
        title="SkyCLIP ViT-B/32 (top 50%)",
        hub_id=None,
        file=None,
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-B/32",
        # Continued from OpenCLIP's laion2b_e16 ViT-B-32 (exact GELU).
        open_clip_model="ViT-B-32",
        languages=("en",),
        license="mit",
        paper=_SKYCLIP_PAPER,
        note=_SKYCLIP_NOTE,
        url=f"{_SKYSCRIPT_CKPT}/SkyCLIP_ViT_B32_top50pct.zip",
    ),
    KnownModel(
        name="skyclip-vit-l-14",
        title="SkyCLIP ViT-L/14 (top 50%)",
        hub_id=None,
        file=None,
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-L/14, QuickGELU",
        # Continued from the OpenAI ViT-L/14; the authors evaluate it with --force-quick-gelu.
        open_clip_model="ViT-L-14-quickgelu",
        languages=("en",),
        license="mit",
        paper=_SKYCLIP_PAPER,
        note=_SKYCLIP_NOTE,
        url=f"{_SKYSCRIPT_CKPT}/SkyCLIP_ViT_L14_top50pct.zip",
    ),
    KnownModel(
        name="git-rsclip",
        title="Git-RSCLIP",
        hub_id="lcybuaa/Git-RSCLIP",
        file=None,
        format="transformers",
        family="siglip",
        architecture="SigLIP ViT-L/16, 256 px",
        open_clip_model=None,
        languages=("en",),
        license="apache-2.0",
        paper=(
            "Liu et al. Text2Earth: Unlocking Text-driven Remote Sensing Image Generation with a Global-Scale Dataset "
            "and a Foundation Model. IEEE GRSM 2025. arXiv:2501.00895"
        ),
    ),
    KnownModel(
        name="openai-clip-vit-b-32",
        title="OpenAI CLIP ViT-B/32",
        hub_id="openai/clip-vit-base-patch32",
        file=None,
        format="transformers",
        family="clip",
        architecture="ViT-B/32, QuickGELU",
        open_clip_model=None,
        languages=("en",),
        license="mit",
        paper=_CLIP_PAPER,
    ),
    KnownModel(
        name="openai-clip-vit-b-32-openclip",
        title="OpenAI CLIP ViT-B/32 (OpenCLIP checkpoint)",
        hub_id="timm/vit_base_patch32_clip_224.openai",
        file=None,
        format="open_clip",
        family="openclip-clip",
        architecture="ViT-B/32, QuickGELU",
        open_clip_model="ViT-B-32-quickgelu",
        languages=("en",),
        license="apache-2.0",
        paper=_CLIP_PAPER,
    ),
)

_BY_NAME = {model.name: model for model in KNOWN_MODELS}
if len(_BY_NAME) != len(KNOWN_MODELS):  # pragma: no cover - a mistake in the table above
    raise RuntimeError("duplicate names in KNOWN_MODELS")


def list_known_models(family: str | None = None) -> list[KnownModel]:
    """The known models, in table order; only those of `family` when given."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    return [model for model in KNOWN_MODELS if family is None or model.family == family]


def is_known_model(name: str) -> bool:
    return name.lower() in _BY_NAME


def get_known_model(name: str) -> KnownModel:
    """The entry named `name` (case-insensitive); a `KeyError` naming the closest names otherwise."""
    model = _BY_NAME.get(name.lower())
    if model is None:
        close = difflib.get_close_matches(name.lower(), list(_BY_NAME), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(_BY_NAME)}"
        raise KeyError(f"{name!r} is not a known model{hint}")
    return model


def find_known_checkpoint_file(relative_path: str) -> KnownModel | None:
    """The known model whose checkpoint file is `relative_path` (a path relative to a download folder, compared
    by its full path, then by its file name), if exactly one."""
    path = PurePosixPath(relative_path.replace("\\", "/"))
    by_path = [m for m in KNOWN_MODELS if m.file and PurePosixPath(m.file) == path]
    if by_path:
        return by_path[0]
    by_name = [m for m in KNOWN_MODELS if m.file and PurePosixPath(m.file).name == path.name]
    return by_name[0] if len(by_name) == 1 else None


__all__ = [
    "CONVERTIBLE_FAMILIES",
    "FAMILIES",
    "KNOWN_MODELS",
    "KnownModel",
    "find_known_checkpoint_file",
    "get_known_model",
    "is_known_model",
    "list_known_models",
]
