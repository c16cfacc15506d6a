"""Training data: the dataset builder's `DatasetDict` (from disk or the Hub, optionally streamed), caption language
sampling, per-sample views and batching.

Rows follow the builder's schema: `image` (original file bytes), `image_id`, `source`, `label`, `captions` (a list
of `{"lang", "text"}`). Decoding, augmentation and tokenisation run in the DataLoader workers.

Every random choice of a sample (its caption language and caption, every crop, flip and colour change) comes from a
seed derived from `(seed, epoch, sample key)`, not from the order in which workers happen to process samples: the
same run gives the same batches with any number of workers, and a resumed run gives the batches the interrupted run
would have seen.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from ..processing_rsmclip import load_image_file, pil_to_rgb
from ..safe_io import raise_for_damaged_folder
from .augment import MultiCropAugmentation

REQUIRED_COLUMNS = ("image", "captions")


# ------------------------------------------------------------------------------------------------------- loading
def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("dataset_dict.json", "state.json"))


def load_split(
    name_or_path: str,
    split: str,
    *,
    config_name: str | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of a builder dataset: a `save_to_disk` folder, a folder of data files, or a Hub id.

    The image column is read undecoded (`{"bytes", "path"}`): decoding happens in the workers, where a bad image is
    reported with its row.
    """
    path = Path(name_or_path)
    if _is_saved_to_disk(path):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as error:  # datasets / Arrow name no file: find the damaged one
            raise_for_damaged_folder(path, error)
            raise
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path} has no split {split!r} (it has: {', '.join(loaded)})")
            dataset = loaded[split]
        else:
            dataset = loaded
        if streaming:
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(64, len(dataset) // 256)))
    else:
        try:
            dataset = datasets.load_dataset(name_or_path, config_name, split=split, streaming=streaming)
        except ValueError as error:
            raise ValueError(f"cannot load split {split!r} of dataset {name_or_path!r}: {error}") from error
    columns = dataset.column_names or list((dataset.features or {}).keys())
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(
            f"dataset {name_or_path!r} (split {split!r}) lacks the column(s) {', '.join(missing)}; expected the "
            f"schema written by `rsmclip build-dataset` (image, image_id, source, label, captions), got {columns}"
        )
    return dataset.cast_column("image", datasets.Image(decode=False))


# --------------------------------------------------------------------------------------------------- sampling
def sample_seed(seed: int, epoch: int, key: str | int) -> int:
    """A 63-bit seed from `(seed, epoch, key)`, stable across processes and Python runs (no `hash()`)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def allowed_languages(caption_languages: Sequence[str] | None) -> list[str] | None:
    """`None` for every language, else the list of codes (`["all"]` means every language)."""
    if not caption_languages or list(caption_languages) == ["all"]:
        return None
    return list(dict.fromkeys(caption_languages))


def sample_caption(
    captions: Sequence[dict[str, str]], languages: Sequence[str] | None, rng: random.Random, where: str
) -> tuple[str, str]:
    """Draw a language uniformly among the allowed ones the image has captions in, then one of its captions.

    Returns `(lang, text)`. An image without a non-empty caption in an allowed language is an error naming it.
    """
    by_lang: dict[str, list[str]] = {}
    for caption in captions or []:
        text = (caption.get("text") or "").strip()
        if text and (languages is None or caption.get("lang") in languages):
            by_lang.setdefault(caption["lang"], []).append(text)
    if not by_lang:
        wanted = "any language" if languages is None else ", ".join(languages)
        raise ValueError(f"{where} has no non-empty caption in {wanted}")
    lang = rng.choice(sorted(by_lang))
    return lang, rng.choice(by_lang[lang])


def decode_image(value: Any, where: str) -> PIL.Image.Image:
    """An RGB PIL image from the dataset's `{"bytes", "path"}` cell (any PIL mode, 16-bit included)."""
    try:
        if isinstance(value, PIL.Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = load_image_file(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = load_image_file(value["path"])
        else:
            raise ValueError("the image cell holds neither bytes nor a path")
        return PIL.Image.fromarray(pil_to_rgb(image))
    except Exception as error:  # noqa: BLE001 - any decoding failure becomes an error naming the row
        raise ValueError(f"cannot decode the image of {where}: {error}") from error


def row_name(row: dict[str, Any], index: int | None = None) -> str:
    parts = []
    if index is not None:
        parts.append(f"row {index}")
    if row.get("source") or row.get("image_id"):
        parts.append(f"{row.get('source') or '?'}/{row.get('image_id') or '?'}")
    return " ".join(parts) or "a row"


class SampleTransform:
    """Turn one dataset row into the tensors of one training sample.

    Returns a dict with `text` (the sampled caption), `lang`, `pixel_values` (the CLIP view, or `None` when the
    CLIP loss uses the first global crop), `global_crops` and `local_crops` (lists of tensors; empty without
    distillation).
    """

    def __init__(
        self,
        clip_transform: Any | None,
        multicrop: MultiCropAugmentation | None,
        caption_languages: Sequence[str] | None,
        seed: int,
    ) -> None:
        self.clip_transform = clip_transform
        self.multicrop = multicrop
        self.languages = allowed_languages(caption_languages)
        self.seed = seed

    def __call__(self, row: dict[str, Any], key: str | int, epoch: int, where: str) -> dict[str, Any]:
        seed = sample_seed(self.seed, epoch, key)
        lang, text = sample_caption(row.get("captions"), self.languages, random.Random(seed), where)
        image = decode_image(row.get("image"), where)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pixel_values = self.clip_transform(image) if self.clip_transform is not None else None
            global_crops, local_crops = self.multicrop(image) if self.multicrop is not None else ([], [])
        return {
            "text": text,
            "lang": lang,
            "pixel_values": pixel_values,
            "global_crops": global_crops,
            "local_crops": local_crops,
        }


class TrainingExamples(Dataset):
    """Map-style training samples; `set_epoch` changes every sample's random draws."""

    def __init__(self, rows: datasets.Dataset, transform: SampleTransform) -> None:
        self.rows = rows
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """`index`, or `(epoch, index)` from `EpochSpanningSampler` (the epoch then comes with the index, so
        DataLoader workers that live through epoch boundaries draw each epoch's augmentations)."""
        epoch = self.epoch
        if isinstance(index, tuple | list):
            epoch, index = index
        row = self.rows[int(index)]
        return self.transform(row, key=int(index), epoch=int(epoch), where=row_name(row, int(index)))


class StreamingExamples(IterableDataset):
    """Training samples from a streamed dataset (shuffled with a buffer; sample keys are `source/image_id`).

    Each process reads its own part of the stream (`datasets.distributed.split_dataset_by_node`), and DataLoader
    workers split that part between them.
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        transform: SampleTransform,
        *,
        seed: int,
        buffer_size: int,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> None:
        if num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            rows = split_dataset_by_node(rows, rank=process_index, world_size=num_processes)
        self.rows = rows.shuffle(seed=seed, buffer_size=buffer_size)
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.rows.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            key = f"{row.get('source') or ''}/{row.get('image_id') or ''}"
            yield self.transform(row, key=key, epoch=self.epoch, where=row_name(row))


class EpochShuffleSampler(Sampler[int]):
    """A permutation of `range(num_samples)` drawn from `seed + epoch` (set with `set_epoch`)."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


class EpochSpanningSampler(Sampler[tuple[int, int]]):
    """One sampler for all the epochs of a run: `(epoch, index)` pairs, epoch after epoch.

    Epoch `e` is the permutation `EpochShuffleSampler` draws for it (`seed + e`), cut to its first
    `samples_per_epoch` indices (a whole number of optimiser steps, so no step straddles two epochs). Because one
    DataLoader iteration spans the whole run, its workers are not stopped and restarted at every epoch boundary
    and their prefetch queue never runs dry there. `set_start(epoch, offset)` starts the iteration `offset`
    samples into `epoch` (exact resume without re-reading skipped batches).
    """

    def __init__(self, num_samples: int, seed: int, samples_per_epoch: int, num_epochs: int) -> None:
        if not 0 < samples_per_epoch <= num_samples:
            raise ValueError(f"samples_per_epoch must be in 1..{num_samples}, got {samples_per_epoch}")
        self.num_samples = num_samples
        self.seed = seed
        self.samples_per_epoch = samples_per_epoch
        self.num_epochs = num_epochs
        self.start_epoch = 0
        self.start_offset = 0

    def set_start(self, epoch: int, offset: int = 0) -> None:
        if not 0 <= offset < self.samples_per_epoch:
            raise ValueError(f"offset must be in 0..{self.samples_per_epoch - 1}, got {offset}")
        self.start_epoch, self.start_offset = epoch, offset

    def __len__(self) -> int:
        return max(0, (self.num_epochs - self.start_epoch) * self.samples_per_epoch - self.start_offset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for epoch in range(self.start_epoch, self.num_epochs):
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator)[: self.samples_per_epoch].tolist()
            first = self.start_offset if epoch == self.start_epoch else 0
            for index in order[first:]:
                yield epoch, index


class TrainingCollator:
    """Stack a list of samples into a batch and tokenise the captions.

    Crops are stacked view-major (all samples of view 0, then view 1, ...), the layout `DINOLoss` expects:
    `global_crops` is `(n_global * B, 3, G, G)` and `local_crops` `(n_local * B, 3, L, L)`.
    """

    def __init__(self, tokenizer: Any, max_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            [s["text"] for s in samples],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        if samples[0]["pixel_values"] is not None:
            batch["pixel_values"] = torch.stack([s["pixel_values"] for s in samples])
        for name in ("global_crops", "local_crops"):
            n_views = len(samples[0][name])
            if n_views:
                batch[name] = torch.stack([s[name][v] for v in range(n_views) for s in samples])
        return batch


# ---------------------------------------------------------------------------------------------- validation data
class ValidationExamples(Dataset):
    """Validation rows: the CLIP view of the image (no augmentation) and its captions in the chosen languages."""

    def __init__(self, rows: datasets.Dataset, transform: Any, languages: Sequence[str] | None) -> None:
        self.rows = rows
        self.transform = transform
        self.languages = allowed_languages(languages)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[int(index)]
        where = row_name(row, int(index))
        captions = [
            (c["lang"], c["text"].strip())
            for c in row.get("captions") or []
            if (c.get("text") or "").strip() and (self.languages is None or c.get("lang") in self.languages)
        ]
        return {"pixel_values": self.transform(decode_image(row.get("image"), where)), "captions": captions}


def collate_validation(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "captions": [s["captions"] for s in samples],
    }
