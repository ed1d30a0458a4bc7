"""transformers' own common tests (ModelTesterMixin, ConfigTester, TrainingTesterMixin of the installed release,
fetched by tests/transformers_common.py) on three tiny models built by one tester:

- ``LlamaCommonTest``: LlamaForCausalLM, the reference: what passes there must pass on NCLlama;
- ``NCLlamaOpenGateTest``: NCLlama with the standard library attached and the gate open, so that the library's
  proposals reach the logits on the tester's prompts (arithmetic and lists, tokenized as users write them);
- ``NCLlamaClosedGateTest``: NCLlama as converted (gate closed), which is LLaMA in every output.

NCLlama's skips are LLaMA's (the suite's own reasons: no accelerator, deepspeed, flash attention, slow tests); fullgraph
compile is declared unsupported (``_can_compile_fullgraph``) and the export tests are not in the sdist.
"""
import unittest

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING, MODEL_MAPPING_NAMES

from modeling_nclama import standard_library
from modeling_nclama.calls import library_settings
from modeling_nclama.configuration_nclama import NCLlamaConfig
from modeling_nclama.modeling_nclama import NCLlamaForCausalLM, NCLlamaModel
from modeling_nclama.toolchain.tokenization import default_tokenizer, reader_tokens
from transformers_common import load

common = load("test_modeling_common")
config_common = load("test_configuration_common")
training_common = load("test_training_mixin")
generation_common = load("generation.test_utils")  # the empty stand-in: see tests/transformers_common.py

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENIZER = default_tokenizer()
LIBRARY = standard_library(256)
PROMPTS = ["81273+4406=", "Sort the list [5, 3, 9, 1].", "gcd(84, 36)=", "Is 7 less than 12?", "max([4, 19, 2])=",
           "What is 6 times 7?", "The sum of [3, 4, 5] is", "9-5="]


class Tester:
    """The common tests' ``model_tester``: a 2-layer, 32-wide LLaMA shape on the project's tokenizer, inputs made
    of prompts the library answers (padded on the left, as generation pads)."""

    __test__ = False  # not a test class of its own

    batch_size = 4
    seq_length = 16
    num_hidden_layers = 2
    num_attention_heads = 4
    hidden_size = 32
    is_training = True

    def __init__(self, parent, config_class, causal_lm_class, base_model_class, nc_settings=None):
        self.parent = parent
        self.config_class = config_class
        self.causal_lm_class = causal_lm_class
        self.base_model_class = base_model_class
        self.nc_settings = nc_settings
        self.vocab_size = len(TOKENIZER)

    def get_config(self):
        shape = dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=64,
                     num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                     num_key_value_heads=2, max_position_embeddings=512, bos_token_id=TOKENIZER.bos_token_id,
                     eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id)
        if self.nc_settings is None:
            return self.config_class(**shape)
        return self.config_class(**shape, **library_settings(LIBRARY, reader_tokens(TOKENIZER), **self.nc_settings))

    def prepare_config_and_inputs_for_common(self):
        start = torch.randint(len(PROMPTS), ()).item()
        prompts = [PROMPTS[(start + i) % len(PROMPTS)] for i in range(self.batch_size)]
        TOKENIZER.padding_side = "left"
        batch = TOKENIZER(prompts, padding="max_length", max_length=self.seq_length, truncation=True,
                          return_tensors="pt")
        return self.get_config(), {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _with_library(cls, gate_scale: float):
    """``cls`` whose models are built with the standard library attached and the gate's scale at ``gate_scale``
    (the common tests build models with ``model_class(config)``; from_pretrained attaches the library saved beside
    the weights)."""

    class WithLibrary(cls):
        def __init__(self, config):
            super().__init__(config)
            self.attach_library(LIBRARY)

        def _init_weights(self, module):
            super()._init_weights(module)
            if module is getattr(self, "nc_heads", None):
                torch.nn.init.constant_(module.gate_scale, gate_scale)

    WithLibrary.__name__ = WithLibrary.__qualname__ = cls.__name__
    return WithLibrary


class CommonTests(common.ModelTesterMixin, generation_common.GenerationTesterMixin,
                  training_common.TrainingTesterMixin):
    config_class = LlamaConfig
    causal_lm_class = LlamaForCausalLM
    base_model_class = LlamaModel
    nc_settings = None

    @classmethod
    def setUpClass(cls):
        # The common tests tell a base model from a head by transformers' in-tree name tables (a base model has no
        # loss to train, a causal LM gets labels); NCLlama is entered there as an in-tree model would be.
        if cls.config_class is NCLlamaConfig:
            MODEL_MAPPING_NAMES["nclama"] = NCLlamaModel.__name__
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["nclama"] = NCLlamaForCausalLM.__name__
            MODEL_MAPPING.register(NCLlamaConfig, NCLlamaModel, exist_ok=True)

    @classmethod
    def tearDownClass(cls):
        MODEL_MAPPING_NAMES.pop("nclama", None)
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.pop("nclama", None)
        MODEL_MAPPING._extra_content.pop(NCLlamaConfig, None)

    def setUp(self):
        self._model_tester = Tester(self, self.config_class, self.causal_lm_class, self.base_model_class,
                                    self.nc_settings)
        self.config_tester = config_common.ConfigTester(self, config_class=self.config_class, hidden_size=32,
                                                         num_attention_heads=4)

    @property
    def model_tester(self):
        return self._model_tester

    @property
    def all_model_classes(self):
        return (self.base_model_class, self.causal_lm_class)

    def test_config(self):
        self.config_tester.run_common_tests()


class LlamaCommonTest(CommonTests, unittest.TestCase):
    """The reference: LlamaForCausalLM under the same tester (the mixin's defaults are LLaMA's classes)."""


NC_SETTINGS = dict(nc_mode="hard", nc_max_steps=2000)


class NCLlamaOpenGateTest(CommonTests, unittest.TestCase):
    config_class = NCLlamaConfig
    causal_lm_class = _with_library(NCLlamaForCausalLM, gate_scale=4.0)
    base_model_class = NCLlamaModel
    nc_settings = NC_SETTINGS


class NCLlamaClosedGateTest(CommonTests, unittest.TestCase):
    config_class = NCLlamaConfig
    causal_lm_class = _with_library(NCLlamaForCausalLM, gate_scale=0.0)
    base_model_class = NCLlamaModel
    nc_settings = NC_SETTINGS


def test_the_open_gate_puts_the_library_in_the_logits():
    """The open-gate tester's models are not LLaMA in disguise: on the tester's prompts the library's proposals
    move the logits, where the closed gate leaves them exactly LLaMA's."""
    config, inputs = Tester(None, NCLlamaConfig, None, None, NC_SETTINGS).prepare_config_and_inputs_for_common()
    torch.manual_seed(0)
    opened = NCLlamaOpenGateTest.causal_lm_class(config).eval()
    closed = NCLlamaClosedGateTest.causal_lm_class(config).eval()
    closed.load_state_dict({**opened.state_dict(), "nc_heads.gate_scale": torch.tensor(0.0)})
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.to_dict().items() if not k.startswith("nc_")}))
    llama.load_state_dict(closed.state_dict(), strict=False)
    with torch.no_grad():
        open_logits, closed_logits = opened(**inputs).logits, closed(**inputs).logits
        llama_logits = llama.eval()(**inputs).logits
    assert torch.equal(closed_logits, llama_logits)
    moved = (open_logits - closed_logits).abs().amax(-1)  # [B, T]
    assert (moved > 1e-3).sum() >= 4, moved
