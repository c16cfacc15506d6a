"""What the index's build and search share: its optional dependencies, FAISS search parameters and the model
fingerprint that ties an index to the model that embeds its queries."""

from __future__ import annotations

from typing import Any


def require_index_dependencies() -> tuple[Any, Any]:
    """Import faiss and pyarrow, or say which command installs them."""
    try:
        import faiss
        import pyarrow
    except ImportError as err:
        raise ImportError(
            f'archive search needs faiss and pyarrow ({err.name} is missing): pip install "rsmclip[index]"'
        ) from err
    return faiss, pyarrow


def apply_search_params(index: Any, params: dict[str, int]) -> None:
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


FINGERPRINT_VERSION = 3  # 3: the config without the folder it was loaded from


def index_fingerprint(model: Any, processor: Any, manifest: dict[str, Any] | None = None) -> str:
    """What an index requires of the model that queries it: `evaluation.embed.model_fingerprint` of the weights,
    config and processor, and how its family tokenizes queries (inference precision left out: a bf16 GPU build is
    queried in fp32 on a CPU; the folder the model was loaded from left out: copies of one model are one model).

    With the ``manifest`` of an index made before fingerprint version 3 (which hashed the model's folder too), the
    manifest's fingerprint is returned when the model matches it by that earlier recipe, so such indexes keep
    working with the model folder that built them."""
    from ..evaluation.embed import model_fingerprint
    from ..inference.families import text_rule

    # How queries are tokenized (`inference.families`): RS-M-CLIP's rule (77 tokens, padded to the longest, with
    # the attention mask) keeps the key of earlier indexes; SigLIP's fixed length without a mask is added to it.
    rule = text_rule(model)
    extra = f"index\0{rule.max_length}"
    if rule.fixed_length or not rule.attention_mask:
        extra += f"\0fixed_length={rule.fixed_length}\0attention_mask={rule.attention_mask}"
    fingerprint = model_fingerprint(model, processor, extra=extra)
    recorded = (manifest or {}).get("model", {})
    if (
        recorded.get("fingerprint") not in (None, fingerprint)
        and recorded.get("fingerprint_version", 2) < FINGERPRINT_VERSION
        and model_fingerprint(model, processor, extra=extra, portable=False) == recorded["fingerprint"]
    ):
        return recorded["fingerprint"]
    return fingerprint
