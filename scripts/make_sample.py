"""Rebuild ``examples/sample/``: a few MB of the real data in ../shared/data, in the same layouts.

UCM-Captions: 2 test-split images per class (42), with their Karpathy entries, the translations of their captions
and their labels. RSSCN7-mini: 1 image per class (7). The sample drives README's quickstart and the basic tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from modeling_rsmclip.testing import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_shared = str(shared_data_dir())
    parser.add_argument("--shared-data", default=default_shared)
    parser.add_argument("--out", default=str(ROOT / "examples" / "sample"))
    parser.add_argument("--per-class", type=int, default=2)
    args = parser.parse_args()
    shared, out = Path(args.shared_data), Path(args.out)
    if out.exists():
        shutil.rmtree(out)

    ucm = shared / "ucm-captions"
    with open(ucm / "labels.csv", newline="") as f:
        labels = {row["filename"]: row for row in csv.DictReader(f)}
    data = json.load(open(ucm / "dataset.json"))
    taken: dict[str, int] = {}
    images = []
    for entry in data["images"]:
        row = labels[entry["filename"]]
        if entry["split"] != "test" or taken.get(row["label"], 0) >= args.per_class:
            continue
        taken[row["label"]] = taken.get(row["label"], 0) + 1
        images.append(entry)
    (out / "ucm" / "images").mkdir(parents=True)
    for entry in images:
        shutil.copyfile(ucm / "images" / entry["filename"], out / "ucm" / "images" / entry["filename"])
    json.dump({"images": images, "dataset": "ucm-captions-sample"}, open(out / "ucm" / "dataset.json", "w"))
    with open(out / "ucm" / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "split"])
        for entry in images:
            writer.writerow([entry["filename"], labels[entry["filename"]]["label"], entry["split"]])
    english = {s["raw"].strip() for entry in images for s in entry["sentences"]}
    (out / "ucm" / "translations").mkdir()
    for path in sorted((ucm / "translations").glob("*.json")):
        rows = [r for r in json.load(open(path)) if r["en"].strip() in english]
        json.dump(rows, open(out / "ucm" / "translations" / path.name, "w"), ensure_ascii=False, indent=0)

    for class_dir in sorted(p for p in (shared / "rsscn7-mini").iterdir() if p.is_dir()):
        (out / "rsscn7" / class_dir.name).mkdir(parents=True)
        for file in sorted(class_dir.glob("*.jpg"))[:1]:
            shutil.copyfile(file, out / "rsscn7" / class_dir.name / file.name)
    print(
        f"wrote {len(images)} UCM images and {len(list((out / 'rsscn7').rglob('*.jpg')))} RSSCN7 images to {out}"
    )


if __name__ == "__main__":
    main()
