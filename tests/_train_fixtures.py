"""Small real datasets and helpers for the training tests.

The dataset is a slice of the real UCM-Captions set (../shared/data/ucm-captions): original JPEG bytes, the five
English captions of each image and their nine machine translations, in the dataset builder's schema
(image, image_id, source, label, captions=[{lang, text}]), saved with `save_to_disk`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
from _shared_data import need_shared_data


def ucm_dir() -> Path:
    return need_shared_data("ucm-captions", "dataset.json").parent


FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "label": datasets.Value("string"),
        "captions": datasets.List({"lang": datasets.Value("string"), "text": datasets.Value("string")}),
    }
)


def build_ucm_dataset(per_split: dict[str, int]) -> datasets.DatasetDict:
    """`per_split[split]` images of each UCM split, spread over the 21 classes (every k-th image)."""
    root = ucm_dir()
    entries = json.loads((root / "dataset.json").read_text())["images"]
    with open(root / "labels.csv", newline="") as handle:
        labels = {row["filename"]: row["label"] for row in csv.DictReader(handle)}
    translations = {}
    for path in sorted((root / "translations").glob("*.json")):
        translations[path.stem] = {
            row["en"]: row["text"] for row in json.loads(path.read_text(encoding="utf-8"))
        }
    splits = {}
    for split, count in per_split.items():
        name = "val" if split == "validation" else split
        in_split = [e for e in entries if e["split"] == name]
        stride = max(1, len(in_split) // count)
        chosen = in_split[::stride][:count]
        rows = {"image": [], "image_id": [], "source": [], "label": [], "captions": []}
        for entry in chosen:
            english = [s["raw"] for s in entry["sentences"]]
            captions = [{"lang": "en", "text": t} for t in english]
            for lang, table in translations.items():
                captions += [{"lang": lang, "text": table[t]} for t in english if t in table]
            rows["image"].append({"bytes": (root / "images" / entry["filename"]).read_bytes(), "path": None})
            rows["image_id"].append(entry["filename"])
            rows["source"].append("ucm-captions")
            rows["label"].append(labels.get(entry["filename"]))
            rows["captions"].append(captions)
        splits[split] = datasets.Dataset.from_dict(rows, features=FEATURES)
    return datasets.DatasetDict(splits)


def save_ucm_dataset(out_dir: Path, per_split: dict[str, int] | None = None) -> Path:
    per_split = per_split or {"train": 48, "validation": 16, "test": 8}
    build_ucm_dataset(per_split).save_to_disk(str(out_dir))
    return out_dir


def save_tiny_processor(out_dir: Path) -> Path:
    """The tiny model's processor (a small XLM-R-style tokenizer trained on real captions + CLIP at 32 px)."""
    from modeling_rsmclip.testing import make_tiny_model_and_processor

    _, processor = make_tiny_model_and_processor(out_dir / "build")
    processor.save_pretrained(str(out_dir / "processor"))
    return out_dir / "processor"


def reset_accelerate() -> None:
    """Forget the process-wide Accelerate state, so that a test can run `train` again in the same process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_config(data: Path, processor: Path, output_dir: Path, **overrides):
    """A fast configuration of the tiny preset on the small UCM slice (32 px global, 16 px local crops)."""
    from modeling_rsmclip.training.config import TrainingConfig

    values = {
        "preset": "tiny",
        "tokenizer_name_or_path": str(processor),
        "dataset": str(data),
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "num_local_crops": 2,
        "dataloader_num_workers": 0,
        "learning_rate": 1e-3,
        "warmup_steps": 2,
        "logging_steps": 1,
        "save_steps": 0,
        "eval_steps": 0,
        "validation_split": None,
        "report_to": "none",
        "max_steps": 6,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def state_dict_from(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
