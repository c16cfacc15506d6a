"""Recall@K and zero-shot metrics against hand-computed cases."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_rsmclip.evaluation.metrics import (
    average_prompt_embeddings,
    first_correct_ranks,
    pessimistic_top1,
    recall_at_k,
    retrieval_metrics,
    retrieval_metrics_by_language,
    zero_shot_metrics,
)

REPO = Path(__file__).resolve().parents[1]

# 3 images x 6 texts, two captions per image (text_to_image below). Ranks worked out by hand in the comments.
SIM = np.array(
    [
        [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],
        [0.7, 0.6, 0.5, 0.4, 0.6, 0.3],
        [0.2, 0.3, 0.1, 0.9, 0.5, 0.4],
    ]
)
TEXT_TO_IMAGE = [0, 0, 1, 1, 2, 2]


def test_retrieval_hand_computed() -> None:
    # image->text: I0 best own caption 0.9, nothing above -> rank 0. I1 best own 0.5; t0 .7, t1 .6, t4 .6 are above
    # -> rank 3. I2 best own 0.5 (t4); t3 .9 above -> rank 1. Ranks [0, 3, 1].
    # text->image (columns): t0 [.9 .7 .2] own I0 -> 0; t1 [.1 .6 .3] own I0 -> 2; t2 [.8 .5 .1] own I1 -> 1;
    # t3 [.2 .4 .9] own I1 -> 1; t4 [.3 .6 .5] own I2 -> 1; t5 [0 .3 .4] own I2 -> 0. Ranks [0, 2, 1, 1, 1, 0].
    m = retrieval_metrics(SIM, TEXT_TO_IMAGE, ks=(1, 2, 3))
    assert m["i2t_R@1"] == pytest.approx(100 / 3)
    assert m["i2t_R@2"] == pytest.approx(200 / 3)
    assert m["i2t_R@3"] == pytest.approx(200 / 3)  # rank 3 is not < 3
    assert m["t2i_R@1"] == pytest.approx(200 / 6)
    assert m["t2i_R@2"] == pytest.approx(500 / 6)
    assert m["t2i_R@3"] == pytest.approx(100.0)
    assert m["mR"] == pytest.approx((100 / 3 + 200 / 3 + 200 / 3 + 200 / 6 + 500 / 6 + 100) / 6)
    assert (m["num_images"], m["num_texts"], m["images_without_texts"]) == (3, 6, 0)
    assert list(first_correct_ranks(SIM.T, [[i] for i in TEXT_TO_IMAGE])) == [0, 2, 1, 1, 1, 0]


def test_any_of_five_rule() -> None:
    # Image 0 has captions 0-4, image 1 captions 5-9.
    text_to_image = [0] * 5 + [1] * 5
    sim = np.array(
        [
            # Only one of image 0's captions (0.95) beats image 1's captions: a hit at R@1 although the other four
            # own captions rank 6th-9th.
            [0.1, 0.2, 0.95, 0.3, 0.1, 0.9, 0.8, 0.7, 0.6, 0.5],
            # Image 1: its best caption (0.9) ties with all five captions of image 0 -> rank 5: miss at R@5,
            # hit at R@6.
            [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1],
        ]
    )
    m = retrieval_metrics(sim, text_to_image, ks=(1, 5, 6))
    assert (m["i2t_R@1"], m["i2t_R@5"], m["i2t_R@6"]) == (50.0, 50.0, 100.0)
    assert list(first_correct_ranks(sim, [list(range(5)), list(range(5, 10))])) == [0, 5]


def test_ties_count_against_the_model() -> None:
    # A tie with an incorrect item counts against the query ...
    assert list(first_correct_ranks([[0.5, 0.5, 0.1]], [[1]])) == [1]
    assert list(first_correct_ranks([[0.5, 0.5, 0.1]], [[0]])) == [1]
    assert recall_at_k([[0.5, 0.5, 0.1]], [[0]], ks=(1, 2)) == {1: 0.0, 2: 100.0}
    # ... a tie between two correct items does not.
    assert list(first_correct_ranks([[0.9, 0.9, 0.8]], [[0, 1]])) == [0]
    # A constant model gets no credit below the number of incorrect items.
    m = retrieval_metrics(np.zeros((4, 8)), [0, 0, 1, 1, 2, 2, 3, 3], ks=(1, 5, 6, 7))
    assert (m["i2t_R@1"], m["i2t_R@5"], m["i2t_R@6"], m["i2t_R@7"]) == (0.0, 0.0, 0.0, 100.0)  # 6 wrong texts
    assert (m["t2i_R@1"], m["t2i_R@5"]) == (0.0, 100.0)  # 3 wrong images


def _worst_case_rank(scores: list[float], correct: set[int]) -> int:
    """Independent reference: the position of the first correct item, over every ordering of the tied items."""
    worst = 0
    for order in itertools.permutations(range(len(scores))):
        if all(scores[a] >= scores[b] for a, b in itertools.pairwise(order)):
            worst = max(worst, next(pos for pos, item in enumerate(order) if item in correct))
    return worst


def test_tie_rule_is_the_worst_case_ordering() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        scores = rng.integers(0, 3, size=6).astype(float)  # many ties
        correct = set(rng.choice(6, size=int(rng.integers(1, 3)), replace=False).tolist())
        expected = _worst_case_rank(scores.tolist(), correct)
        assert first_correct_ranks(scores[None], [sorted(correct)])[0] == expected, (scores, correct)


def test_per_language_split() -> None:
    # Same 2-image gallery; English captions point at their image, German captions are swapped.
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[2.0, 0.1], [0.1, 3.0], [0.0, 1.0], [1.0, 0.0]])  # en0, en1, de0, de1 (unnormalised)
    m = retrieval_metrics_by_language(images, texts, [0, 1, 0, 1], ["en", "en", "de", "de"], ks=(1, 2))
    assert list(m) == ["en", "de"]
    assert m["en"]["i2t_R@1"] == m["en"]["t2i_R@1"] == 100.0
    assert m["de"]["i2t_R@1"] == m["de"]["t2i_R@1"] == 0.0
    assert m["de"]["i2t_R@2"] == m["de"]["t2i_R@2"] == 100.0
    assert m["en"]["mR"] == 100.0 and m["de"]["mR"] == 50.0
    assert m["de"]["num_texts"] == 2 and m["de"]["num_images"] == 2


def test_images_without_captions_are_left_out_of_image_to_text() -> None:
    sim = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.95, 0.95]]
    )  # image 2 has no caption (e.g. missing translation)
    m = retrieval_metrics(sim, [0, 1], ks=(1,))
    assert m["images_without_texts"] == 1
    assert m["i2t_R@1"] == 100.0  # over images 0 and 1 only
    assert m["t2i_R@1"] == 0.0  # image 2 stays in the gallery and beats both


def test_torch_inputs_and_bad_inputs() -> None:
    assert retrieval_metrics(torch.tensor(SIM), torch.tensor(TEXT_TO_IMAGE), ks=(1,))[
        "i2t_R@1"
    ] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="non-finite value at row 1, column 2"):
        retrieval_metrics(np.array([[0.0, 1.0, 1.0], [0.0, 1.0, np.nan]]), [0, 1, 1])
    with pytest.raises(ValueError, match="text 2 points to image 5"):
        retrieval_metrics(SIM, [0, 0, 5, 1, 2, 2])
    with pytest.raises(ValueError, match="query 0 has no correct gallery item"):
        first_correct_ranks([[0.1, 0.2]], np.zeros((1, 2), dtype=bool))


def test_zero_shot_hand_example() -> None:
    classes = ["field", "forest", "river"]
    logits = np.array(
        [
            [0.9, 0.1, 0.0],  # field -> field (rank 0)
            [0.2, 0.3, 0.5],  # field -> river (rank 2)
            [0.1, 0.8, 0.1],  # forest -> forest (rank 0)
            [0.6, 0.4, 0.0],  # forest -> field (rank 1)
            [0.5, 0.1, 0.5],  # river: tie with field at the top -> counted as field (rank 1)
            [0.0, 0.2, 0.7],  # river -> river (rank 0)
        ]
    )
    labels = [0, 0, 1, 1, 2, 2]
    m = zero_shot_metrics(logits, labels, classes, ks=(1, 2, 5))
    assert m["top1"] == pytest.approx(50.0)
    assert m["top2"] == pytest.approx(500 / 6)
    assert m["top5"] == 100.0  # K capped at the number of classes
    assert m["per_class_accuracy"] == {"field": 50.0, "forest": 50.0, "river": 50.0}
    assert m["mean_per_class_accuracy"] == 50.0
    assert m["confusion_matrix"] == [[1, 0, 1], [1, 1, 0], [1, 0, 1]]
    assert m["num_images"] == 6
    assert list(pessimistic_top1(logits, labels)) == [0, 2, 1, 0, 0, 2]


def test_zero_shot_per_class_accuracy_with_unequal_support() -> None:
    logits = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = zero_shot_metrics(logits, [0, 0, 0, 0], ["a", "b"])
    assert m["per_class_accuracy"] == {"a": 75.0, "b": None}  # class b has no image
    assert m["mean_per_class_accuracy"] == 75.0
    assert m["confusion_matrix"] == [[3, 1], [0, 0]]


def test_average_prompt_embeddings_and_classification() -> None:
    # Class 0: prompts [3, 4] and [1, 0] -> normalised [.6, .8], [1, 0] -> mean [.8, .4] -> [2, 1]/sqrt(5).
    # Class 1: prompts [0, -2] and [0, -5] -> [0, -1].
    prompts = np.array([[[3.0, 4.0], [1.0, 0.0]], [[0.0, -2.0], [0.0, -5.0]]])
    classes = average_prompt_embeddings(prompts)
    np.testing.assert_allclose(classes, [[2 / np.sqrt(5), 1 / np.sqrt(5)], [0.0, -1.0]])
    # Image [1, 0] scores 2/sqrt(5) vs 0 -> class 0; image [0, -1] scores -1/sqrt(5) vs 1 -> class 1;
    # image [-1, 0.1] scores about -0.85 vs -0.1 -> class 1, but it is labelled 0.
    images = np.array([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.1]])
    m = zero_shot_metrics(images @ classes.T, [0, 1, 0], ["a", "b"], ks=(1,))
    assert m["top1"] == pytest.approx(200 / 3)
    assert m["confusion_matrix"] == [[1, 1], [0, 1]]


def test_evaluate_metric_module_matches() -> None:
    evaluate = pytest.importorskip("evaluate")
    metric = evaluate.load(str(REPO / "eval" / "recall_at_k"))
    # Image->text of the hand-computed case: references are the captions of each image.
    refs = [[j for j, i in enumerate(TEXT_TO_IMAGE) if i == img] for img in range(3)]
    out = metric.compute(predictions=SIM.tolist(), references=refs, k=[1, 2, 3])
    assert out["recall@1"] == pytest.approx(100 / 3)
    assert out["recall@2"] == pytest.approx(200 / 3)
    assert out["recall@3"] == pytest.approx(200 / 3)
    assert out["mean_recall"] == pytest.approx(500 / 9)
    # The any-of and tie rules are the same as the library's.
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(20, 9)).astype(float)
    correct = [sorted(rng.choice(9, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(20)]
    expected = recall_at_k(scores, correct, ks=(1, 3, 5))
    out = metric.compute(predictions=scores.tolist(), references=correct, k=[1, 3, 5])
    assert [out[f"recall@{k}"] for k in (1, 3, 5)] == pytest.approx([expected[k] for k in (1, 3, 5)])


def test_tie_rules_bracket_duplicate_captions():
    from modeling_rsmclip.evaluation.metrics import first_correct_ranks, retrieval_metrics

    # Two images; the same sentence was written for both (texts 0 and 1 are identical, so they tie exactly).
    # Image 0's captions: texts 0 and 2; image 1's: texts 1 and 3.
    similarity = np.array([[0.9, 0.9, 0.1, 0.2], [0.5, 0.5, 0.3, 0.8]])
    text_to_image = [0, 1, 0, 1]
    pess = retrieval_metrics(similarity, text_to_image, ks=(1,), ties="pessimistic")
    opt = retrieval_metrics(similarity, text_to_image, ks=(1,), ties="optimistic")
    # image 0: its best caption (0.9) ties with image 1's copy -> rank 1 (pessimistic) or 0 (optimistic)
    # image 1: its best caption (0.8) is ahead of everything -> rank 0 either way
    assert pess["i2t_R@1"] == 50.0 and opt["i2t_R@1"] == 100.0
    # text 0 and text 1 (0.9 vs 0.5 / 0.9 vs 0.5): no ties in text->image
    assert pess["t2i_R@1"] == opt["t2i_R@1"]
    assert first_correct_ranks(
        [[1.0, 1.0, 1.0]], np.array([[True, False, False]]), ties="optimistic"
    ).tolist() == [0]
    assert first_correct_ranks([[1.0, 1.0, 1.0]], np.array([[True, False, False]])).tolist() == [2]
    with pytest.raises(ValueError, match="ties must be one of"):
        first_correct_ranks([[1.0]], [0], ties="random")
