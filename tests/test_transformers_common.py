"""transformers' own common model and config tests on RSMCLIPModel / RSMCLIPConfig.

`ModelTesterMixin` and `ConfigTester` come from the source distribution of the installed transformers release,
downloaded from PyPI at test time (`tests/_transformers_upstream.py`). The tester class sets only the flags and
skips that `CLIPModelTest` (transformers' tests/models/clip/test_modeling_clip.py) sets for CLIPModel:
`test_resize_embeddings = False`, `test_attention_outputs = False`, `_is_composite = True`,
`additional_model_inputs = ["pixel_values"]`, and skips `test_hidden_states_output`, `test_inputs_embeds`,
`test_retain_grad_hidden_states_attentions` and `test_model_get_set_embeddings` (the towers are transformers' own
CLIPVisionModel and XLMRobertaModel, tested upstream). CLIPModelTest's pipeline mixin needs tiny models from the
Hub; the zero-shot-image-classification pipeline's small-model tests run here on a tiny RSMCLIP instead.
"""

from __future__ import annotations

import tempfile
import unittest

import numpy as np
import torch
from _transformers_upstream import import_upstream
from huggingface_hub import ZeroShotImageClassificationOutputElement
from parameterized import parameterized
from PIL import Image
from transformers import pipeline
from transformers.testing_utils import compare_pipeline_output_to_hub_spec, is_flaky, nested_simplify, slow

from modeling_rsmclip import RSMCLIPConfig, RSMCLIPModel
from modeling_rsmclip.testing import make_processor, make_tiny_tokenizer, sample_dir

try:
    common = import_upstream("test_modeling_common")
    ConfigTester = import_upstream("test_configuration_common").ConfigTester
    ModelTesterMixin = common.ModelTesterMixin
    UPSTREAM_ERROR = None
except (
    RuntimeError
) as error:  # no PyPI: one failing test below, not a collection error stopping the whole run
    common = ConfigTester = ModelTesterMixin = None
    UPSTREAM_ERROR = error


def test_transformers_test_modules_are_available():
    assert UPSTREAM_ERROR is None, str(UPSTREAM_ERROR)


class RSMCLIPVisionModelTester:
    """The vision tower's part of the config: CLIPVisionModelTester's widths, with a batch of 4 and 6-pixel
    patches (26 tokens) to keep the suite fast on a CPU."""

    def __init__(self, parent, batch_size=4, image_size=30, patch_size=6, num_hidden_layers=2):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_hidden_layers = num_hidden_layers
        self.seq_length = (image_size // patch_size) ** 2 + 1  # patches + CLS

    def get_config(self) -> dict:
        return {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": 4,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": 3,
            "dropout": 0.1,
            "attention_dropout": 0.1,
            "initializer_range": 0.02,
        }

    def prepare_config_and_inputs(self):
        pixel_values = common.floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class RSMCLIPTextModelTester:
    """The text tower's part of the config: CLIPTextModelTester's widths (batch of 4) on an XLM-R layout
    (pad id 1)."""

    def __init__(self, parent, batch_size=4, seq_length=7, vocab_size=99, num_hidden_layers=2):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.num_hidden_layers = num_hidden_layers

    def get_config(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": 4,
            "max_position_embeddings": 512,
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02,
        }

    def prepare_config_and_inputs(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        # Right padding of random length, at least one real token per text (as CLIPTextModelTester).
        attention_mask = common.random_attention_mask([self.batch_size, self.seq_length])
        ends = np.random.randint(1, self.seq_length - 1, size=(self.batch_size,))
        for row, end in enumerate(ends):
            attention_mask[row, :end] = 1
            attention_mask[row, end:] = 0
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class RSMCLIPModelTester:
    """A tiny RSMCLIP (a small distillation head too) and a batch of image-text pairs, as CLIPModelTester."""

    def __init__(self, parent, is_training=True):
        self.parent = parent
        self.text_model_tester = RSMCLIPTextModelTester(parent)
        self.vision_model_tester = RSMCLIPVisionModelTester(parent)
        self.batch_size = self.text_model_tester.batch_size  # for the batching-equivalence test
        self.is_training = is_training

    def get_config(self) -> RSMCLIPConfig:
        return RSMCLIPConfig(
            vision_config=self.vision_model_tester.get_config(),
            text_config=self.text_model_tester.get_config(),
            projection_dim=64,
            dino_out_dim=64,
            dino_hidden_dim=48,
            dino_bottleneck_dim=16,
        )

    def prepare_config_and_inputs(self):
        _, input_ids, attention_mask = self.text_model_tester.prepare_config_and_inputs()
        _, pixel_values = self.vision_model_tester.prepare_config_and_inputs()
        return self.get_config(), input_ids, attention_mask, pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, pixel_values = self.prepare_config_and_inputs()
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "return_loss": True,
        }
        return config, inputs

    def create_and_check_model(self, config, input_ids, attention_mask, pixel_values):
        model = RSMCLIPModel(config).eval()
        with torch.no_grad():
            result = model(input_ids, pixel_values, attention_mask)
        self.parent.assertEqual(result.logits_per_image.shape, (self.batch_size, self.batch_size))
        self.parent.assertEqual(result.logits_per_text.shape, (self.batch_size, self.batch_size))


if UPSTREAM_ERROR is None:

    class RSMCLIPModelTest(ModelTesterMixin, unittest.TestCase):
        all_model_classes = (RSMCLIPModel,)
        additional_model_inputs = ["pixel_values"]
        test_resize_embeddings = False
        test_attention_outputs = False
        _is_composite = True

        def setUp(self):
            self.model_tester = RSMCLIPModelTester(self)
            self.config_tester = ConfigTester(
                self,
                config_class=RSMCLIPConfig,
                has_text_modality=False,
                common_properties=["projection_dim", "logit_scale_init_value"],
            )

        def test_config(self):
            self.config_tester.run_common_tests()

        def test_model(self):
            self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

        @unittest.skip(reason="Hidden_states is tested in individual model tests")
        def test_hidden_states_output(self):
            pass

        @unittest.skip(reason="Inputs_embeds is tested in individual model tests")
        def test_inputs_embeds(self):
            pass

        @unittest.skip(reason="Retain_grad is tested in individual model tests")
        def test_retain_grad_hidden_states_attentions(self):
            pass

        @unittest.skip(reason="RSMCLIPModel does not have input/output embeddings")
        def test_model_get_set_embeddings(self):
            pass

        @parameterized.expand(common.TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
        @slow
        @is_flaky()
        def test_eager_matches_sdpa_inference(self, *args):
            # As CLIPModelTest: slow (RUN_SLOW=1) and flaky-retried, the mixin's test itself.
            return getattr(ModelTesterMixin, self._testMethodName)(self)


# ------------------------------------------------------------------ zero-shot-image-classification, small model
class ZeroShotImageClassificationSmallModelTest(unittest.TestCase):
    """The zero-shot-image-classification pipeline's small-model tests (single image, then 5 images in batches
    of 2, in float32 and float16), on a tiny random RSMCLIP saved to a folder, loaded by `pipeline()`."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        config = RSMCLIPConfig.from_preset("tiny")
        tokenizer = make_tiny_tokenizer(f"{cls.tmp.name}/tokenizer", vocab_size=config.text_config.vocab_size)
        torch.manual_seed(0)
        model = RSMCLIPModel(config).eval()
        cls.folder = f"{cls.tmp.name}/model"
        model.save_pretrained(cls.folder)
        make_processor(tokenizer, config.vision_config.image_size).save_pretrained(cls.folder)
        cls.image = Image.open(sample_dir() / "ucm" / "images" / "1091.jpg").convert("RGB")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def reference_scores(self, labels: list[str], template: str, dtype: torch.dtype) -> list[float]:
        """softmax over labels of the model's logits_per_image, computed without the pipeline."""
        from modeling_rsmclip import RSMCLIPProcessor

        processor = RSMCLIPProcessor.from_pretrained(self.folder)
        inputs = processor(
            images=[self.image], text=[template.format(x) for x in labels], padding=True, return_tensors="pt"
        )
        # A copy in `dtype`: casting the shared float32 model down and back would round its weights.
        model = RSMCLIPModel.from_pretrained(self.folder, dtype=dtype).eval()
        with torch.no_grad():
            logits = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                pixel_values=inputs["pixel_values"].to(dtype),
            ).logits_per_image
        return logits[0].float().softmax(-1).tolist()

    def test_small_model_pt(self, dtype: str = "float32"):
        torch_dtype = getattr(torch, dtype)
        classifier = pipeline("zero-shot-image-classification", model=self.folder, dtype=torch_dtype)
        self.assertIsInstance(classifier.model, RSMCLIPModel)
        self.assertEqual(classifier.model.dtype, torch_dtype)
        labels = ["a", "b", "c"]
        output = classifier(self.image, candidate_labels=labels)
        expected = self.reference_scores(labels, "This is a photo of {}.", torch_dtype)
        atol = 1e-5 if dtype == "float32" else 5e-3
        self.assertEqual(len(output), 3)
        self.assertEqual(sorted(o["label"] for o in output), labels)
        by_label = {o["label"]: o["score"] for o in output}
        for label, score in zip(labels, expected):
            self.assertAlmostEqual(by_label[label], score, delta=atol)
        self.assertAlmostEqual(sum(by_label.values()), 1.0, delta=1e-3)
        scores = [o["score"] for o in output]
        self.assertEqual(scores, sorted(scores, reverse=True))
        for element in output:
            compare_pipeline_output_to_hub_spec(element, ZeroShotImageClassificationOutputElement)

        # Five copies in batches of two: five equal results, each the single image's.
        batched = classifier([self.image] * 5, candidate_labels=["A", "B", "C"], batch_size=2)
        self.assertEqual(len(batched), 5)
        single = classifier(self.image, candidate_labels=["A", "B", "C"])
        for result in batched:
            self.assertEqual(nested_simplify(result, decimals=3), nested_simplify(single, decimals=3))
            for element in result:
                compare_pipeline_output_to_hub_spec(element, ZeroShotImageClassificationOutputElement)

    def test_small_model_pt_fp16(self):
        self.test_small_model_pt(dtype="float16")
