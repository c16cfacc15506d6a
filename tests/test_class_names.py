"""Class-name tables for the standard scene datasets, folder aliases, user and builder names, and flagged fallbacks
in zero-shot evaluation (issue 13, item 8)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from datasets import load_from_disk

from modeling_rsmclip.cli import main as cli_main
from modeling_rsmclip.data.builder import build_dataset, save_dataset
from modeling_rsmclip.evaluation.embed import Embedder
from modeling_rsmclip.evaluation.zero_shot import (
    evaluate_zero_shot,
    find_class_names_dataset,
    load_builder_labels,
    load_image_folder,
)
from modeling_rsmclip.templates import (
    CLASS_FOLDER_ALIASES,
    CLASS_NAMES,
    LANGUAGES,
    PROMPT_TEMPLATES,
    class_name,
    split_identifier,
)
from modeling_rsmclip.testing import sample_dir

EXPECTED_CLASSES = {
    "aid": 30,
    "eurosat": 10,
    "nwpu-resisc45": 45,
    "ucm": 21,
    "whu-rs19": 19,
    "rsscn7": 7,
    "patternnet": 38,
    "optimal-31": 31,
    "rsi-cb256": 35,
}
SCRIPTS = {"zh": r"[\u4e00-\u9fff]", "ko": r"[\uac00-\ud7af]", "ru": r"[\u0400-\u04ff]"}
RSSCN7_DISTRIBUTED = {
    "aGrass": "grass",
    "bField": "field",
    "cIndustry": "industry",
    "dRiverLake": "river_lake",
    "eForest": "forest",
    "fResident": "residential",
    "gParking": "parking",
}


def test_tables_cover_nine_datasets_in_ten_languages():
    for dataset, count in EXPECTED_CLASSES.items():
        table = CLASS_NAMES[dataset]
        assert len(table) == count, dataset
        for folder, names in table.items():
            assert sorted(names) == sorted(LANGUAGES), (dataset, folder)
            assert all(name.strip() for name in names.values()), (dataset, folder)
            for lang, script in SCRIPTS.items():  # written in the language's own script, not copied English
                assert re.search(script, names[lang]), (dataset, folder, lang, names[lang])
    # the folders as distributed
    assert {"BareLand", "StorageTanks", "RailwayStation", "Viaduct"} <= set(CLASS_NAMES["aid"])
    assert {"AnnualCrop", "HerbaceousVegetation", "SeaLake"} <= set(CLASS_NAMES["eurosat"])
    assert {"snowberg", "thermal_power_station", "ground_track_field"} <= set(CLASS_NAMES["nwpu-resisc45"])
    assert {"footballField", "railwayStation"} <= set(CLASS_NAMES["whu-rs19"])
    assert {"oil_gas_field", "wastewater_treatment_plant"} <= set(CLASS_NAMES["patternnet"])
    assert {"sandbeach", "river_protection_forest", "airport_runway"} <= set(CLASS_NAMES["rsi-cb256"])
    assert CLASS_FOLDER_ALIASES["rsscn7"] == RSSCN7_DISTRIBUTED


def test_folder_aliases_and_identifier_splitting():
    assert class_name("rsscn7", "aGrass", "en") == CLASS_NAMES["rsscn7"]["grass"]["en"] == "grassland"
    assert class_name("RSSCN7", "fResident", "de") == CLASS_NAMES["rsscn7"]["residential"]["de"]
    assert class_name("aid", "BareLand", "zh") == "裸地"
    assert class_name("AID", "bare_land", "fr") == CLASS_NAMES["aid"]["BareLand"]["fr"]  # any spelling
    assert class_name("NWPU_RESISC45", "Storage-Tank", "ru") == CLASS_NAMES["ucm"]["storagetanks"]["ru"]
    assert split_identifier("BareLand") == "bare land"
    assert split_identifier("river_lake") == "river lake"
    assert split_identifier("footballField") == "football field"
    assert split_identifier("NIRBand2") == "nir band 2"
    assert class_name(None, "aGrass", "en") == "a grass"  # no table named: only the split identifier
    assert find_class_names_dataset(list(RSSCN7_DISTRIBUTED)) == "rsscn7"
    assert find_class_names_dataset(list(CLASS_NAMES["aid"])) == "aid"
    assert find_class_names_dataset(list(CLASS_NAMES["eurosat"])) == "eurosat"
    assert find_class_names_dataset(list(CLASS_NAMES["optimal-31"])) == "optimal-31"  # also inside NWPU's 45
    assert find_class_names_dataset(list(CLASS_NAMES["nwpu-resisc45"])) == "nwpu-resisc45"


@pytest.fixture(scope="module")
def rsscn7_distributed(tmp_path_factory) -> Path:
    """The bundled RSSCN7 images under the dataset's distributed folder names (aGrass, ..., gParking)."""
    root = tmp_path_factory.mktemp("rsscn7-distributed") / "RSSCN7"
    for folder, plain in RSSCN7_DISTRIBUTED.items():
        shutil.copytree(sample_dir() / "rsscn7" / plain, root / folder)
    return root


def _eval(tiny_saved: Path, folder: Path, out: Path, *extra: str) -> dict:
    argv = [
        "eval-zero-shot",
        "--model",
        str(tiny_saved),
        "--image-folder",
        str(folder),
        "--languages",
        "en,de",
    ]
    argv += ["--output-dir", str(out), "--no-cache", "--num-workers", "0", "--quiet", "--no-plots", *extra]
    assert cli_main(argv) == 0
    return json.loads(next(out.glob("zero_shot_*.json")).read_text(encoding="utf-8"))


def test_distributed_folder_names_give_the_same_result_as_plain_names(
    tiny_saved, rsscn7_distributed, tmp_path, capsys
):
    plain = _eval(tiny_saved, sample_dir() / "rsscn7", tmp_path / "plain")
    capsys.readouterr()
    distributed = _eval(tiny_saved, rsscn7_distributed, tmp_path / "distributed")
    printed = capsys.readouterr().out
    assert "7 from templates.CLASS_NAMES['rsscn7']" in printed and "WARNING" not in printed
    assert distributed["unmapped_classes"] == {}
    for lang in ("en", "de"):
        # same prompts, same images (in the same class order: aGrass..gParking sorts like grass..parking does not,
        # so compare by class)
        by_class = dict(zip(distributed["classes"], distributed["class_names"][lang]))
        assert by_class == {f: CLASS_NAMES["rsscn7"][p][lang] for f, p in RSSCN7_DISTRIBUTED.items()}
        assert distributed["languages"][lang]["top1"] == pytest.approx(plain["languages"][lang]["top1"])


def test_unmapped_identifiers_are_split_and_flagged_user_names_win(tiny, tiny_saved, tmp_path, capsys):
    root = tmp_path / "scenes"
    for folder, source in (("BareLand", "field"), ("StorageTanks", "industry"), ("MyOddClass", "forest")):
        shutil.copytree(sample_dir() / "rsscn7" / source, root / folder)
    (root / "EmptyClass").mkdir()
    results = _eval(tiny_saved, root, tmp_path / "out")
    printed = capsys.readouterr().out
    assert results["classes"] == ["BareLand", "MyOddClass", "StorageTanks"]
    assert results["skipped"]["empty_class_folders"] == ["EmptyClass"]
    assert results["unmapped_classes"] == {"MyOddClass": "my odd class"}
    assert results["untranslated_class_names"] == {"de": ["MyOddClass"]}
    assert results["class_name_sources"]["BareLand"] == "templates.CLASS_NAMES['aid']"
    assert results["class_names"]["de"] == [
        CLASS_NAMES["aid"]["BareLand"]["de"],
        "my odd class",
        CLASS_NAMES["aid"]["StorageTanks"]["de"],
    ]
    assert "MyOddClass -> 'my odd class'" in printed and "skipped 1 class folder(s) without images" in printed

    # The prompts really are the resolved names: top-1 equals a direct computation with them.
    model, processor = tiny
    data = load_image_folder(root)
    with torch.no_grad():
        pixels = processor(images=[data.images[i] for i in range(len(data.labels))], return_tensors="pt")
        images = F.normalize(model.get_image_features(**pixels).pooler_output.double(), dim=-1)
        classes = []
        for name in results["class_names"]["de"]:
            text = processor(text=[t.format(name) for t in PROMPT_TEMPLATES["de"]], return_tensors="pt")
            prompts = F.normalize(model.get_text_features(**text).pooler_output.double(), dim=-1)
            classes.append(F.normalize(prompts.mean(0), dim=0))
    predicted = (images @ torch.stack(classes).T).argmax(1).numpy()
    expected_top1 = 100.0 * float(np.mean(predicted == np.asarray(data.labels)))
    assert results["languages"]["de"]["top1"] == pytest.approx(expected_top1)

    # --class-names FILE: YAML folder -> name (every language) and folder -> {language: name}
    names_file = tmp_path / "names.yaml"
    names_file.write_text(
        yaml.safe_dump({"MyOddClass": "a quarry", "BareLand": {"de": "Brachland"}, "NotAClass": "x"}),
        encoding="utf-8",
    )
    results = _eval(tiny_saved, root, tmp_path / "out-user", "--class-names", str(names_file))
    printed = capsys.readouterr().out
    assert results["class_names"]["en"][:2] == [CLASS_NAMES["aid"]["BareLand"]["en"], "a quarry"]
    assert results["class_names"]["de"][:2] == ["Brachland", "a quarry"]
    assert results["class_name_sources"] == {
        "BareLand": "user",
        "MyOddClass": "user",
        "StorageTanks": "templates.CLASS_NAMES['aid']",
    }
    assert results["unmapped_classes"] == {} and results["unused_class_names"] == ["NotAClass"]
    assert "not classes of the dataset: NotAClass" in printed
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"BareLand": {"xx": "?"}}), encoding="utf-8")
    argv = [
        "eval-zero-shot",
        "--model",
        str(tiny_saved),
        "--image-folder",
        str(root),
        "--class-names",
        str(bad),
    ]
    assert cli_main(argv + ["--output-dir", str(tmp_path / "out-bad"), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: .*bad\.json: class 'BareLand' has unknown language code\(s\) \['xx'\].*\n", err
    )


def test_builder_names_are_used_by_the_evaluation(tiny, tmp_path):
    root = tmp_path / "folders"
    for folder, source in (("aGrass", "grass"), ("Quarry", "industry")):
        shutil.copytree(sample_dir() / "rsscn7" / source, root / folder)
    given = {"Quarry": {"en": "an open-pit quarry", "de": "ein Steinbruch"}}
    dataset, report = build_dataset(
        "imagefolder",
        source="rsscn7",
        images=root,
        languages="en,de",
        class_names=given,
        split_ratios=(0, 0, 1),
        cache_dir=tmp_path / "arrow",
        progress=False,
    )
    save_dataset(dataset, report, tmp_path / "built")
    captions = [c["text"] for row in load_from_disk(str(tmp_path / "built"))["test"] for c in row["captions"]]
    assert PROMPT_TEMPLATES["de"][0].format("ein Steinbruch") in captions
    assert PROMPT_TEMPLATES["de"][0].format(CLASS_NAMES["rsscn7"]["grass"]["de"]) in captions  # alias aGrass
    data = load_builder_labels(str(tmp_path / "built"), "test")
    assert data.builder_class_names["Quarry"] == given["Quarry"]
    model, processor = tiny
    embedder = Embedder(model, processor, batch_size=16, cache_dir=None, show_progress=False)
    results = evaluate_zero_shot(embedder, data, ["en", "de"], ks=(1,))
    assert results["class_name_sources"] == {"Quarry": "builder", "aGrass": "builder"}
    assert results["class_names"]["de"] == ["ein Steinbruch", CLASS_NAMES["rsscn7"]["grass"]["de"]]
    assert results["unmapped_classes"] == {}
