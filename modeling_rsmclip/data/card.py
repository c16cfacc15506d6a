"""The dataset card (README.md with YAML metadata) written next to a built dataset and pushed to the Hub.

The card is huggingface_hub's `DatasetCard.from_template`: `DatasetCardData` for the metadata and the Jinja
template `DATASET_CARD_TEMPLATE` for the text; `make_dataset_card` only gathers the values the template shows."""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import DatasetCard, DatasetCardData

from .report import BuildReport


@dataclass(frozen=True)
class SourceInfo:
    """What the card says about a source benchmark: its name, licence terms and the papers to cite."""

    name: str
    license: str
    citations: tuple[str, ...]
    homepage: str | None = None


UCMERCED_CITATION = """@inproceedings{yang2010bag,
  title     = {Bag-of-visual-words and spatial extensions for land-use classification},
  author    = {Yang, Yi and Newsam, Shawn},
  booktitle = {Proceedings of the 18th SIGSPATIAL International Conference on Advances in Geographic Information Systems},
  pages     = {270--279},
  year      = {2010}
}"""

QU2016_CITATION = """@inproceedings{qu2016deep,
  title     = {Deep semantic understanding of high resolution remote sensing image},
  author    = {Qu, Bo and Li, Xuelong and Tao, Dacheng and Lu, Xiaoqiang},
  booktitle = {2016 International Conference on Computer, Information and Telecommunication Systems (CITS)},
  pages     = {1--5},
  year      = {2016},
  publisher = {IEEE}
}"""

RSSCN7_CITATION = """@article{zou2015deep,
  title   = {Deep learning based feature selection for remote sensing scene classification},
  author  = {Zou, Qin and Ni, Lihao and Zhang, Tong and Wang, Qian},
  journal = {IEEE Geoscience and Remote Sensing Letters},
  volume  = {12},
  number  = {11},
  pages   = {2321--2325},
  year    = {2015}
}"""

RSICD_CITATION = """@article{lu2018exploring,
  title   = {Exploring models and data for remote sensing image caption generation},
  author  = {Lu, Xiaoqiang and Wang, Binqiang and Zheng, Xiangtao and Li, Xuelong},
  journal = {IEEE Transactions on Geoscience and Remote Sensing},
  volume  = {56},
  number  = {4},
  pages   = {2183--2195},
  year    = {2018}
}"""

RSITMD_CITATION = """@article{yuan2022exploring,
  title   = {Exploring a fine-grained multiscale method for cross-modal remote sensing image retrieval},
  author  = {Yuan, Zhiqiang and Zhang, Wenkai and Fu, Kun and Li, Xuan and Deng, Chubo and Wang, Hongqi and Sun, Xian},
  journal = {IEEE Transactions on Geoscience and Remote Sensing},
  volume  = {60},
  pages   = {1--19},
  year    = {2022}
}"""

NWPU_CAPTIONS_CITATION = """@article{cheng2022nwpu,
  title   = {NWPU-Captions dataset and MLCA-Net for remote sensing image captioning},
  author  = {Cheng, Qimin and Huang, Haiyan and Xu, Yuan and Zhou, Yuzhuo and Li, Huanying and Wang, Zhongyuan},
  journal = {IEEE Transactions on Geoscience and Remote Sensing},
  volume  = {60},
  pages   = {1--19},
  year    = {2022}
}"""

NWPU_RESISC45_CITATION = """@article{cheng2017remote,
  title   = {Remote sensing image scene classification: Benchmark and state of the art},
  author  = {Cheng, Gong and Han, Junwei and Lu, Xiaoqiang},
  journal = {Proceedings of the IEEE},
  volume  = {105},
  number  = {10},
  pages   = {1865--1883},
  year    = {2017}
}"""

RSMCLIP_CITATION = """@inproceedings{silva2024multilingual,
  title     = {Multilingual Vision-Language Pre-training for the Remote Sensing Domain},
  author    = {Silva, Jo{\\~a}o Daniel and Magalh{\\~a}es, Jo{\\~a}o and Tuia, Devis and Martins, Bruno},
  booktitle = {Proceedings of the 32nd ACM International Conference on Advances in Geographic Information Systems (SIGSPATIAL)},
  year      = {2024},
  eprint    = {2410.23370},
  archivePrefix = {arXiv}
}"""

_RESEARCH_USE = (
    "annotations released by their authors for academic research use; check the original distribution terms"
)

SOURCES: dict[str, SourceInfo] = {
    "ucm-captions": SourceInfo(
        "UCM-Captions (UC Merced Land Use + captions)",
        "imagery: USGS National Map orthoimagery (public domain in the United States); captions: "
        + _RESEARCH_USE,
        (UCMERCED_CITATION, QU2016_CITATION),
        "http://weegee.vision.ucmerced.edu/datasets/landuse.html",
    ),
    "ucm": SourceInfo(
        "UC Merced Land Use",
        "USGS National Map orthoimagery (public domain in the United States); class labels by the dataset authors",
        (UCMERCED_CITATION,),
        "http://weegee.vision.ucmerced.edu/datasets/landuse.html",
    ),
    "sydney-captions": SourceInfo("Sydney-Captions", _RESEARCH_USE, (QU2016_CITATION,)),
    "rsicd": SourceInfo("RSICD", _RESEARCH_USE, (RSICD_CITATION,)),
    "rsitmd": SourceInfo("RSITMD", _RESEARCH_USE, (RSITMD_CITATION,)),
    "nwpu-captions": SourceInfo(
        "NWPU-Captions", _RESEARCH_USE, (NWPU_CAPTIONS_CITATION, NWPU_RESISC45_CITATION)
    ),
    "nwpu-resisc45": SourceInfo("NWPU-RESISC45", _RESEARCH_USE, (NWPU_RESISC45_CITATION,)),
    "rsscn7": SourceInfo("RSSCN7", "Google Earth imagery; " + _RESEARCH_USE, (RSSCN7_CITATION,)),
}
SOURCES["ucmerced"] = SOURCES["ucm"]
SOURCES["rsscn7-mini"] = SOURCES["rsscn7"]
SOURCES["sydney"] = SOURCES["sydney-captions"]
SOURCES["nwpu"] = SOURCES["nwpu-captions"]


DATASET_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ pretty_name }}

Remote-sensing images with captions in {{ languages|length }} languages ({{ languages|join(", ") }}), built for
multilingual CLIP training and evaluation (RS-M-CLIP). Source: **{{ source_name }}**;
{% if layout == "karpathy" -%}
English captions from the source annotations, machine-translated into the other languages\
{% if translation_model %} with `{{ translation_model }}`{% else %} (translation cache){% endif %}.
{%- else -%}
captions made from class names inserted into per-language remote-sensing prompt templates (hand-checked \
class-name translations where known, else machine-translated).
{%- endif %}

## Structure

Splits: {{ rows|join(", ") }}. Columns:

- `image` (`Image`): the original image file, byte for byte;
- `image_id` (`string`): the file name in the source dataset;
- `source` (`string`): `{{ source_id }}`;
- `label` (`string`, may be null): the class of the image (\
{% if labels %}{{ labels|length }} classes: {{ labels|join(", ") }}{% else %}no class labels{% endif %});
- `captions` (list of `{"lang": string, "text": string}`): every caption of the image in every language.

```python
from datasets import load_dataset

ds = load_dataset("<this repository>", split="train")
row = ds[0]
english = [c["text"] for c in row["captions"] if c["lang"] == "en"]
```

## Counts (captions per split and language)

| split | rows | {{ languages|join(" | ") }} |
|---|---:|{{ "---:|" * languages|length }}
{% for split, count in rows.items() -%}
| {{ split }} | {{ count }} |{% for lang in languages %} {{ captions.get(split, {}).get(lang, 0) }} |{% endfor %}
{% endfor %}
Build report: {% for action, count in report_counts %}{{ count }} {{ action }}{% if not loop.last %}, {% endif %}\
{% endfor %} items (see `build_report.json` for each item and its reason).

## Translations

The non-English captions are machine translations, not human ones\
{% if translation_model %} (model: `{{ translation_model }}`){% endif %}.
They can be wrong, literal, or inconsistent between captions of the same image.

## Licence

{{ license_text }}. The machine translations follow the terms of the source captions.

## Citation

```bibtex
{{ citations|join("\\n\\n") }}
```

"""


def _size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M"


def make_dataset_card(
    report: BuildReport,
    *,
    translation_model: str | None = None,
    pretty_name: str | None = None,
) -> DatasetCard:
    """A dataset card for one build: metadata for the Hub, schema, counts, provenance, licences, citations."""
    source = SOURCES.get(report.source.lower())
    translation_model = translation_model or report.translation_model
    languages = report.languages or ["en"]
    total_rows = sum(report.rows.values())
    task_categories = ["zero-shot-image-classification"]
    task_categories += (
        ["image-classification"] if report.layout == "imagefolder" else ["image-to-text", "text-to-image"]
    )
    data = DatasetCardData(
        language=list(languages),
        license="other",
        license_name="source-dataset-terms",
        multilinguality="multilingual" if len(languages) > 1 else "monolingual",
        size_categories=[_size_category(total_rows)],
        task_categories=task_categories,
        task_ids=["image-captioning"] if report.layout == "karpathy" else None,
        annotations_creators=["expert-generated"],
        language_creators=["expert-generated", "machine-generated"],
        source_datasets=[f"extended|{report.source}"],
        pretty_name=pretty_name or f"{source.name if source else report.source}, multilingual",
        tags=["remote-sensing", "earth-observation", "image-text-retrieval", "machine-translated", "clip"],
    )
    return DatasetCard.from_template(
        data,
        template_str=DATASET_CARD_TEMPLATE,
        languages=list(languages),
        source_name=source.name if source else report.source,
        source_id=report.source,
        layout=report.layout,
        translation_model=translation_model,
        rows=report.rows,
        captions=report.captions,
        labels=sorted(report.labels),
        report_counts=[(action, report.count(action)) for action in ("skipped", "repaired", "incomplete")],
        license_text=(
            source.license if source else "the terms of the source dataset apply (not known to the builder)"
        ),
        citations=[*(source.citations if source else ()), RSMCLIP_CITATION],
    )
