"""NCLlama: a LLaMA decoder whose interpreter heads call a compiled library inside the forward pass.

The data flow, one module per step: ``NCLlamaModel`` (here) runs LLaMA's layers and hands layer ``nc_layer``'s
hidden states to the interpreter; the heads (``heads.py``) choose at each position a library *call*, a program and
its operands among the numbers and lists the reader found before it, and whether the position continues the answer
of the position before it; the call table (``calls.py``) runs the top-k calls exactly and writes each result as
tokens, then the end of text; the mixture (``mixture.py``) mixes the library's proposal with the language model,

    p(next token) = (1 - g m) p_LM + g p_lib   (with 1 - g m at least 1e-6),

``p_lib`` the exactly marginalized proposal of token ``t - s`` of the call made at the site ``s`` each position
answers, ``m`` its mass, ``g`` the gate. Gradients reach every head through the likelihood, so calls are learned
from answers alone; the gate's scale starts at exactly 0, so a model converted from LLaMA gives that LLaMA's logits.
``InterpreterState`` keeps what the interpreter read with the KV cache, so generation reads each position once;
``tracing.py`` explains what it did.
"""

import inspect
import os
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import LlamaForCausalLM, LlamaModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, cached_file
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .calls import UNLIKELY, CallTable, _real, library_settings
from .configuration_nclama import NC_DESIGNS, NCLlamaConfig
from .heads import CONTINUES, WORDS_GATE_PRIOR, HeadsTraining, NCInterpreterHeads, OperandSites, WordsGateReader
from .library import LIBRARY_JSON, LIBRARY_TENSORS, Library, LibraryError
from .mixture import fuse, gate_target_loss, learning_floor_loss, proposed_answer
from .reader import OperandReader
from .tracing import RecordedCall, explain


@dataclass
class InterpreterState:
    """What the interpreter computed for the positions read so far, kept with the KV cache that holds the same
    positions (``interpreter_state``): generation continues it one token at a time, beam search reorders it with the
    cache, and when the cache is cropped (assisted decoding) or repeated per returned sequence it follows
    (``follow``)."""

    ids: torch.Tensor  # [B, T] token ids
    operand_keys: torch.Tensor  # [B, T, d] pointer keys of each position (an operand is keyed by its last token)
    tokens: torch.Tensor  # [B, T, K, W] result tokens of each position's top-k calls
    probs: torch.Tensor  # [B, T, K] their probabilities
    site_history: tuple  # chunks [B, n, t] of the site each position answers, over the sites before it
    # [B, T, C] what the call reader carries from each position to the next: the keyword reader's evidence [B, T, P],
    # the sentence reader's sums of word states and their count [B, T, d + 1], [B, T, 0] for the hidden reader
    keyword_history: torch.Tensor
    gates: torch.Tensor  # [B, T] each position's own gate (read by later positions that answer it, nc_gate_at="site")
    # [B, T, K] whether each site's calls' results agree with the text after it through the last position, so that
    # the next position extends it by one comparison per site (None after a crop: recomputed from the text)
    agreeing: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return self.ids.shape[1]

    @property
    def last_sites(self) -> torch.Tensor:
        """[B, T] the site the last position answers, over sites."""
        last = self.site_history[-1][:, -1]
        return torch.nn.functional.pad(last, (0, self.length - last.shape[1]))

    @property
    def keywords(self) -> torch.Tensor:
        """[B, C] what the call reader carries from the last position."""
        return self.keyword_history[:, -1]

    def _fields(self) -> tuple:
        return self.ids, self.operand_keys, self.tokens, self.probs, self.keyword_history, self.gates

    def _build(self, fields, site_history, agreeing: Optional[torch.Tensor]) -> "InterpreterState":
        ids, operand_keys, tokens, probs, keyword_history, gates = fields
        return InterpreterState(ids, operand_keys, tokens, probs, tuple(site_history), keyword_history, gates, agreeing)

    def select(self, index: torch.Tensor) -> "InterpreterState":
        """The rows ``index`` (beam search's reordering)."""
        return self._build([t.index_select(0, index) for t in self._fields()],
                           [c.index_select(0, index) for c in self.site_history],
                           None if self.agreeing is None else self.agreeing.index_select(0, index))

    def crop(self, length: int) -> "InterpreterState":
        """The state of the first ``length`` positions, as the interpreter had it after reading them."""
        history, kept = [], 0
        for chunk in self.site_history:
            if kept >= length:
                break
            history.append(chunk[:, : length - kept])
            kept += history[-1].shape[1]
        return self._build([t[:, :length] for t in self._fields()], history, None)  # (agreement through the end)

    def follow(self, cache_length: int, batch_size: int) -> "InterpreterState":
        """This state for a cache of ``cache_length`` positions and ``batch_size`` rows: cropped when the cache was
        cropped, each row repeated when the cache's rows were (``num_return_sequences``, beams from one prompt)."""
        state = self
        if cache_length < state.length:
            state = state.crop(cache_length)
        if batch_size != state.ids.shape[0] and batch_size % state.ids.shape[0] == 0:
            repeats = batch_size // state.ids.shape[0]
            state = state._build([t.repeat_interleave(repeats, 0) for t in state._fields()],
                                 [c.repeat_interleave(repeats, 0) for c in state.site_history],
                                 None if state.agreeing is None else state.agreeing.repeat_interleave(repeats, 0))
        if (state.length, state.ids.shape[0]) != (cache_length, batch_size):
            raise ValueError(f"the cache holds {cache_length} positions of {batch_size} rows, the interpreter's state "
                             f"{state.length} of {state.ids.shape[0]}: continue a cache with the model that filled it")
        return state


def interpreter_state(cache: Optional[Cache]) -> Optional[InterpreterState]:
    """The interpreter's state kept with ``cache`` (None: the cache holds nothing the interpreter read)."""
    return getattr(cache, "nc_state", None) if cache is not None else None


class NCLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = NCLlamaConfig
    config: NCLlamaConfig

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, NCInterpreterHeads):
            init.zeros_(module.gate_scale)
            if hasattr(module, "inject"):
                init.zeros_(module.inject.weight)
            if hasattr(module, "answer_lead"):
                init.zeros_(module.answer_lead.weight)
        if isinstance(module, WordsGateReader):  # a word the training never showed is no evidence either way
            init.zeros_(module.words.weight)
            init.constant_(module.bias, WORDS_GATE_PRIOR)


class NCLlamaModel(NCLlamaPreTrainedModel, LlamaModel):
    """The decoder: LLaMA's layers and weights, in a loop that hands the hidden states of layer ``nc_layer`` to the
    interpreter (``at_layer``, given by ``NCLlamaForCausalLM``) and goes on from what it returns (the same states,
    or with the library's proposal injected: ``nc_residual_injection``). The last layer is handed over after the
    final norm, as the LM head reads it. Without ``at_layer`` it is LLaMA's decoder."""

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        at_layer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens).unsqueeze(0)
        causal_mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         cache=cache, position_ids=position_ids)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        layers = self.config.num_hidden_layers
        read_at = self.config.nc_layer % layers
        call_at = read_at if self.config.nc_call_layer is None else self.config.nc_call_layer % layers
        call_states = None  # the call reader's layer, where it is another than the interpreter's
        for index, decoder_layer in enumerate(self.layers[:layers]):
            hidden_states = decoder_layer(hidden_states, attention_mask=causal_mask, position_embeddings=position_embeddings,
                                          position_ids=position_ids, cache=cache, use_cache=use_cache, **kwargs)
            if at_layer is not None and index == call_at != read_at:
                call_states = hidden_states
            if at_layer is not None and index == read_at < layers - 1:
                hidden_states = at_layer(hidden_states, call_states)
        hidden_states = self.norm(hidden_states)
        if at_layer is not None and read_at == layers - 1:
            hidden_states = at_layer(hidden_states, call_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class NCLlamaForCausalLM(NCLlamaPreTrainedModel, LlamaForCausalLM, GenerationMixin):
    # The interpreter reads token ids on the CPU and branches on what it finds (which numbers the reader found,
    # which calls fit them, their cached results): no single graph holds it, so fullgraph compile and torch.export
    # are not offered.
    _can_compile_fullgraph = False

    def __init__(self, config: NCLlamaConfig):
        NCLlamaPreTrainedModel.__init__(self, config)
        self.model = NCLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.nc_heads = NCInterpreterHeads(config)
        self.calls = CallTable(config)
        self.heads_training = HeadsTraining()  # how the heads learn; set by training, never saved
        self.post_init()

    # ------------------------------------------------------------------ library
    def attach_library(self, library: Library, program_sharpness: float = 20.0) -> None:
        """Use ``library`` for calls; it must be the one the configuration was made for. In soft mode the programs'
        weights become parameters that train with the model (freeze them with
        ``model.nc_program_weights.requires_grad_(False)``); a compiled program's impossible choices (logit -inf)
        start ``program_sharpness`` below their row's best, so that they have a gradient (probability e^-20: the
        program still computes exactly to float precision)."""
        if isinstance(program_sharpness, bool) or not isinstance(program_sharpness, (int, float)) or not (
                0 < program_sharpness < float("inf")):
            raise ValueError(f"program_sharpness must be a positive finite number, got {program_sharpness!r}")
        c = self.config
        if library.value_size != c.nc_value_size or library.machine.memory_size != c.nc_memory_size:
            raise LibraryError(
                f"library has value_size {library.value_size} and memory_size {library.machine.memory_size}; "
                f"the model was configured for {c.nc_value_size} and {c.nc_memory_size}"
            )
        missing = [name for name in c.nc_programs if name not in library]
        if missing:
            raise LibraryError(f"the library lacks programs the model calls: {missing}")
        if c.nc_library_fingerprint and library.fingerprint() != c.nc_library_fingerprint:
            raise LibraryError("the library's fingerprint differs from the model's nc_library_fingerprint")
        if c.nc_mode == "soft":
            # The programs' weights become parameters (saved in the library files, not in model.safetensors).
            self.nc_program_weights = nn.ModuleDict({
                name: nn.ParameterDict({
                    field: nn.Parameter(_trainable(w, program_sharpness))
                    for field, w in library[name].weights.items() if w.numel()
                })
                for name in c.nc_programs
            })
            self._keys_to_ignore_on_save = set(self._keys_to_ignore_on_save or ()) | {
                f"nc_program_weights.{name}" for name, _ in self.nc_program_weights.named_parameters()
            }
            library = library.with_programs(
                [library[name].with_weights({**library[name].weights, **self.nc_program_weights[name]}) for name in c.nc_programs]
            )
        self.calls.library = library
        self.calls.clear()

    @property
    def library(self) -> Optional[Library]:
        """The attached library (``attach_library``), or None; ``model.library = None`` detaches it (the model is
        then its LLaMA), ``model.library = lib`` attaches ``lib``."""
        return self.calls.library

    @library.setter
    def library(self, library: Optional[Library]) -> None:
        if library is not None:
            self.attach_library(library)
        else:
            self.calls.library = None
            self.calls.clear()

    @property
    def reader(self) -> OperandReader:
        """The operand reader: the numbers and lists in token ids, and results written back as tokens."""
        return self.calls.reader

    @property
    def _shared(self) -> list[list[int]]:
        """Bracket token groups whose proposed mass the LM shares out (``nc_openers_from_lm``,
        ``nc_closers_from_lm``), read from the reader; ids, not tensors: from_pretrained builds the model on the meta
        device, where a tensor made at construction would hold no data."""
        config = self.config
        brackets = [(config.nc_openers_from_lm, self.reader.openers), (config.nc_closers_from_lm, self.reader.closers)]
        return [sorted(group) for on, group in brackets if on and group]

    def trained_library(self) -> Optional[Library]:
        """The attached library with the programs' current weights (in soft mode they train with the model)."""
        if self.library is None or self.config.nc_mode != "soft":
            return self.library
        return self.library.with_programs([
            self.library[name].with_weights({k: w.detach().clone() for k, w in self.library[name].weights.items()})
            for name in self.config.nc_programs
        ])

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights and config as usual, plus the library files (``library.safetensors``, ``library.json``); the
        configuration's fingerprint names the library saved (in soft mode, with the programs as trained)."""
        library = self.trained_library()
        if library is not None:
            self.config.nc_library_fingerprint = library.fingerprint()
        super().save_pretrained(save_directory, *args, **kwargs)
        if library is not None:
            library.save(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, library: Optional[Library] = None, **kwargs):
        """Load as usual, then attach the library: ``library`` if given (it must be the one the configuration names),
        else the library files saved beside the weights (local folder, Hub cache or Hub). A model configured with
        programs refuses to load without its library; ``output_loading_info=True`` returns (model, info) as usual."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if library is not None:
            model.attach_library(library)
        elif model.config.nc_programs and model.library is None:
            if pretrained_model_name_or_path is None:
                raise LibraryError("from_pretrained(None, config=..., state_dict=...): pass the model's library "
                                   "(library=Library.load(folder)): there is no folder to load it from")
            options = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            hub = {k: kwargs[k] for k in options if k in kwargs}
            try:
                folder = os.path.dirname(cached_file(pretrained_model_name_or_path, LIBRARY_JSON, **hub))
                cached_file(pretrained_model_name_or_path, LIBRARY_TENSORS, **hub)
            except OSError as error:
                raise LibraryError(f"{pretrained_model_name_or_path}: the model's library files are missing ({error}); "
                                   "pass library= to load the weights with a library of your own") from None
            model.attach_library(Library.load(folder))
        return loaded

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """LLaMA's resize, and the interpreter follows: the reader forgets tokens that no longer exist (their
        numbers cannot be read or written), the heads' token tables are resized, and no cached result stays."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.num_embeddings
        config = self.config
        config.nc_reader_tokens = {t: text for t, text in config.nc_reader_tokens.items() if int(t) < size}
        config.nc_chat_tokens = {t: role for t, role in config.nc_chat_tokens.items() if int(t) < size}
        self.calls.reader = OperandReader(config.nc_reader_tokens, config.nc_decimal_places)
        self.nc_heads.resize_token_tables(size)
        self.calls.clear()
        return embeddings

    @classmethod
    def from_llama(
        cls, model_or_path: Union[str, LlamaForCausalLM], library: Library, *, reader_tokens: dict,
        design: str = "shipped", **nc_settings
    ) -> "NCLlamaForCausalLM":
        """Augment a LLaMA checkpoint (a model or a path/Hub id) with ``library``, keeping every pretrained weight.

        ``reader_tokens``: the operand reader's table for the checkpoint's tokenizer (``tokenization.reader_tokens``).
        Other ``nc_*`` settings go to the configuration; programs default to the whole library, digit tapes follow
        the standard library's naming (see ``library_settings``).
        """
        if design not in NC_DESIGNS:
            raise ValueError(f"design must be one of {sorted(NC_DESIGNS)}, got {design!r}")
        nc_settings = {**NC_DESIGNS[design], **nc_settings}
        llama = model_or_path if isinstance(model_or_path, nn.Module) else LlamaForCausalLM.from_pretrained(model_or_path)
        settings = {k: v for k, v in llama.config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
        if isinstance(model_or_path, str):
            nc_settings.setdefault("nc_base_model", model_or_path)
        config = NCLlamaConfig(**settings, **library_settings(library, reader_tokens, **nc_settings))
        model = cls(config)
        missing, unexpected = model.load_state_dict(llama.state_dict(), strict=False)
        if unexpected or any(not key.startswith("nc_heads.") for key in missing):
            raise ValueError(f"not a LLaMA state dict: unexpected {unexpected}, missing {missing}")
        model.attach_library(library)
        return model.to(next(llama.parameters()).dtype)

    # ------------------------------------------------------------------ forward
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        ids = input_ids
        if ids is None and inputs_embeds is not None and self.library is not None:
            ids = self.ids_of_embeddings(inputs_embeds)
        active = self.library is not None and ids is not None and ids.shape[1] > 0 and bool(self.config.nc_programs)
        state = None
        if active and cache is not None and cache.get_seq_length() > 0:  # read before the decoder extends the cache
            state = interpreter_state(cache)
            if state is None:
                raise ValueError(f"the cache holds {cache.get_seq_length()} positions that NCLlama's interpreter has "
                                 "not read (filled by another model, or from packed sequences): pass the whole "
                                 "sequence, or a cache this model filled")
            state = state.follow(cache.get_seq_length(), ids.shape[0])
        packed = None
        if active and position_ids is not None and attention_mask is None and cache is None and not (
                use_cache if use_cache is not None else self.config.use_cache):
            # where the decoder reads packed sequences apart (position ids restarting, no mask, no cache), so does
            # the interpreter
            packed = find_packed_sequence_indices(position_ids.expand(ids.shape[0], -1))
        outputs, interpreted = self._run_decoder(
            active,
            state,
            ids=ids,
            packed=packed,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states)
        heads_losses = []  # the interpreter's own training terms (HeadsTraining)
        if active:
            if outputs.cache is not None and interpreted.state is not None:  # kept for the next steps
                outputs.cache.nc_state = interpreted.state
            shared = [torch.tensor(group, dtype=torch.long, device=logits.device) for group in self._shared]
            lm_logits, logits = logits, fuse(logits, interpreted, shared)
            floor, target_weight = self.heads_training.gate_learning_floor, self.heads_training.gate_target_weight
            if labels is not None and self.training and (floor > 0 or target_weight > 0):
                q = proposed_answer(lm_logits, interpreted, shared, labels)
                if floor > 0:
                    heads_losses.append(learning_floor_loss(q, interpreted, labels, floor,
                                                                  kwargs.get("num_items_in_batch")))
                if target_weight > 0:
                    heads_losses.append(target_weight * gate_target_loss(q, lm_logits, interpreted, labels))
        logits = slice_logits_to_keep(logits, logits_to_keep)  # after fusion: the interpreter needs every position
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = loss + sum(heads_losses)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def ids_of_embeddings(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """[B, T] the token whose embedding each vector of ``inputs_embeds`` is (the interpreter reads tokens); a
        vector that is no token's embedding (a soft prompt) reads as the BOS token: no number, no word."""
        table = self.get_input_embeddings().weight
        vectors = inputs_embeds.detach().to(table.dtype)
        nearest = torch.cdist(vectors.reshape(-1, vectors.shape[-1]).float(), table.detach().float()).argmin(-1)
        exact = (table[nearest].detach() == vectors.reshape(-1, vectors.shape[-1])).all(-1)
        none = self.config.bos_token_id if self.config.bos_token_id is not None else 0
        return torch.where(exact, nearest, torch.full_like(nearest, none)).view(vectors.shape[:-1])

    def _run_decoder(self, active: bool, state: Optional[InterpreterState], record: Optional[dict] = None,
                     ids: Optional[torch.Tensor] = None, packed: Optional[torch.Tensor] = None, **inputs):
        """The decoder's outputs and, when ``active``, the interpreter's output on the hidden states of layer
        ``nc_layer`` (the decoder hands them over in its loop, so that residual injection reaches later layers)."""
        ids = inputs.get("input_ids") if ids is None else ids
        found: list[Interpreted] = []

        def at_layer(hidden: torch.Tensor, call_states: Optional[torch.Tensor] = None) -> torch.Tensor:
            found[:] = [self._interpret(ids, hidden, state, record, packed, call_states)]
            if not self.config.nc_residual_injection:
                return hidden
            return hidden + self.nc_heads.injection(found[0], self.get_input_embeddings().weight)

        outputs = self.model(**inputs, at_layer=at_layer if active else None)
        return outputs, found[0] if found else None

    def _interpret(self, ids: torch.Tensor, hidden: torch.Tensor, state: Optional[InterpreterState],
                   record: Optional[dict], packed: Optional[torch.Tensor],
                   call_states: Optional[torch.Tensor] = None) -> "Interpreted":
        """``interpret``, each packed sequence read alone (``packed`` [B, T]: the sequence each position belongs to,
        or None): the sequences are read as one right-padded batch and their outputs put back in place. A packed
        row keeps no state: it continues no cache."""
        if packed is None:
            return self.interpret(ids, hidden, state, record, call_states)
        B, T = ids.shape
        pieces = []
        for b, row in enumerate(packed.tolist()):
            bounds = [0, *(t for t in range(1, T) if row[t] != row[t - 1]), T]
            pieces += [(b, begin, end) for begin, end in zip(bounds, bounds[1:])]
        L = max(end - begin for _, begin, end in pieces)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        sub_ids = ids.new_full((len(pieces), L), pad)
        sub_hidden = hidden.new_zeros(len(pieces), L, hidden.shape[-1])
        sub_calls = None if call_states is None else call_states.new_zeros(len(pieces), L, call_states.shape[-1])
        for i, (b, begin, end) in enumerate(pieces):
            sub_ids[i, : end - begin], sub_hidden[i, : end - begin] = ids[b, begin:end], hidden[b, begin:end]
            if sub_calls is not None:
                sub_calls[i, : end - begin] = call_states[b, begin:end]
        read = self.interpret(sub_ids, sub_hidden, None, None, sub_calls)

        def place(tensor: Optional[torch.Tensor], fill=0, square: bool = False, width: Optional[int] = None):
            if tensor is None:
                return None
            if square:  # [S, L, L] over positions and sites
                out = tensor.new_full((B, T, T), fill)
            else:
                out = tensor.new_full((B, T, *tensor.shape[2:-1], width or tensor.shape[-1]) if tensor.dim() > 2
                                      else (B, T), fill)
            for i, (b, begin, end) in enumerate(pieces):
                n = end - begin
                if square:
                    out[b, begin:end, begin:end] = tensor[i, :n, :n]
                elif tensor.dim() == 2:
                    out[b, begin:end] = tensor[i, :n]
                else:
                    out[b, begin:end, ..., : tensor.shape[-1]] = tensor[i, :n]
            return out

        return Interpreted(place(read.proposal), place(read.proposed_tokens), place(read.mass), place(read.gate),
                           None, place(read.own_tokens, -1), place(read.own_probs),
                           place(read.site_probs, width=min(self.config.nc_answer_window, T)),
                           place(read.gate_logits), place(read.sites, square=True))

    @torch.no_grad()
    def generate_with_trace(self, input_ids: torch.LongTensor, max_trace_rows: int = 200, **generate_kwargs):
        """``generate`` for one prompt, plus its trace: per generated token, the gate, the call site answered (and
        its probability), the top calls there with their probabilities, operands (token positions and values),
        results and machine steps, and the machine's step table for the most likely call."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"generate_with_trace takes one prompt, got a batch of {input_ids.shape[0]}")
        sequence = self.generate(input_ids=input_ids, **generate_kwargs)
        return sequence, self.explain(sequence[0], input_ids.shape[1], max_trace_rows=max_trace_rows)

    def explain(self, sequence: torch.LongTensor, prompt_length: int, max_trace_rows: int = 200) -> list[dict]:
        """What the interpreter did for each token of ``sequence`` after the first ``prompt_length`` (see
        ``generate_with_trace`` and ``tracing.explain``)."""
        return explain(self, sequence, prompt_length, max_trace_rows)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search: reorder the KV cache and the interpreter's state together."""
        cache.reorder_cache(beam_idx)
        state = getattr(cache, "nc_state", None)
        if state is not None:
            cache.nc_state = state.select(beam_idx)
        return cache

    # ------------------------------------------------------------------ the interpreter
    def interpret(
        self, input_ids: torch.Tensor, hidden: torch.Tensor, state: Optional[InterpreterState] = None,
        record: Optional[dict] = None, call_states: Optional[torch.Tensor] = None
    ) -> "Interpreted":
        """For the positions of ``input_ids`` (following those in ``state``, if any): the unnormalized library
        proposal for the next token [B, N, vocab], the gate [B, N], and the state including them. ``record``, if
        given, receives the chosen calls of every position (``explain``); ``call_states``: the hidden states of
        layer ``nc_call_layer`` where the call reader reads another layer than ``hidden``'s."""
        heads, config = self.nc_heads, self.config
        self.calls.check_budget()
        B, N = input_ids.shape
        W = config.nc_answer_window
        if state is None:
            ids, start = input_ids, 0
        else:
            ids, start = torch.cat([state.ids, input_ids], 1), state.ids.shape[1]
        T = ids.shape[1]
        calls, keywords = heads.call(input_ids, hidden if call_states is None else call_states, state)  # [B, N, P]
        continuation = heads.continuation_logits(hidden, ids, start)  # [B, N]
        # A call's proposal weighs at most its probability times 1 - c, its own site's share wherever it is answered
        # (a position that continues an answer makes calls that hardly matter): that product is what
        # nc_min_call_probability is compared with.
        own_site = 1.0 - torch.sigmoid(continuation.detach())
        operand_keys = heads.operands.keys(hidden, state)  # [B, T, d]
        tokens, probs, skipped = self._top_calls(ids, start, calls, hidden, operand_keys, record, own_site)
        if not self.training:
            # A position none of whose calls was worth running starts no answer: inside a long answer every separator
            # keeps a little new-site mass whose calls are too unlikely to run, and that mass, proposing nothing,
            # would drain the answer's site (to about half after 64 list items). Training runs every call.
            continuation = continuation.masked_fill(skipped.to(continuation.device), CONTINUES)
        silent = heads.sentences.silent_positions(ids)
        if silent is not None:  # the chat template's markers and headers make no call
            probs = probs.masked_fill(silent[:, start:, None], 0.0)
        first_tokens, first_probs = tokens[..., 0], probs  # the first result token of each call made here
        if state is not None:
            tokens, probs = torch.cat([state.tokens, tokens], 1), torch.cat([state.probs, probs], 1)
        # Sites: position t answers the call made at t - j, j in [0, W), with token j of its result (j < T: a short
        # sequence needs no more of the window).
        offsets = torch.arange(min(W, T))
        sites = torch.arange(start, T).unsqueeze(1) - offsets  # [N, W]
        valid = sites >= 0
        sites = sites.clamp(min=0)
        last_sites = self._continued_sites(continuation, T, state)  # [B, N, T] over sites
        if not self.training:
            last_sites = self._answers_run_to_their_end(ids, start, last_sites, continuation, tokens, probs,
                                                         state.last_sites if state is not None else None)
        site_probs = last_sites.gather(2, sites.expand(B, -1, -1)) * valid  # [B, N, W] over offsets
        at_site = tokens[:, sites, :, offsets.expand_as(sites)].permute(2, 0, 1, 3)  # [N, W, B, K] -> [B, N, W, K]
        # A call goes on answering only while the text after its site agrees with its result: a call whose first
        # tokens fall where the text says something else (inside the prompt, where nothing is scored) cannot be
        # continued into the answer, so every call pays for each token it proposes.
        agreed, agreeing = self._agreed(ids, start, tokens, sites, offsets, state)
        weight = site_probs.unsqueeze(-1) * probs[:, sites] * (at_site >= 0) * agreed * valid.unsqueeze(-1)
        proposed = at_site.clamp(min=0).reshape(B, N, -1)
        weight = weight.reshape(B, N, -1)
        proposal = hidden.new_zeros(B, N, config.vocab_size, dtype=torch.float32).scatter_add(2, proposed, weight)
        gate_logits = heads.gate_logits(hidden, ids, start)  # [B, N]
        own_gates = heads.gate_probability(gate_logits, self.heads_training.gate_learning_floor)
        gates = own_gates if state is None else torch.cat([state.gates, own_gates], 1)  # [B, T]
        gate, gate_sites = heads.place_gate(own_gates, gates, last_sites)
        history = (*state.site_history, last_sites.detach()) if state is not None else (last_sites.detach(),)
        if state is not None:
            keywords = torch.cat([state.keyword_history, keywords], 1)
        new_state = InterpreterState(ids, operand_keys.detach(), tokens, probs.detach(), history, keywords, gates.detach(),
                                     agreeing)
        return Interpreted(proposal, proposed, weight.sum(-1), gate, new_state, first_tokens, first_probs, site_probs,
                           gate_logits, gate_sites)

    def _agreed(self, ids: torch.Tensor, start: int, tokens: torch.Tensor, sites: torch.Tensor, offsets: torch.Tensor,
                state: Optional[InterpreterState]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N, W, K] whether the call at the site each new position reads at each offset still agrees with the
        text (``_agreement``), and [B, T, K] each site's agreement through the last position (the state's). With a
        state that holds it, each new position extends it by one comparison per site of its window, instead of
        comparing every site's whole result again."""
        B, T, K, W = tokens.shape
        if state is None or state.agreeing is None:
            full = self._agreement(ids, tokens)  # [B, T, K, W]
            through = (T - 1 - torch.arange(T)).clamp(max=W - 1)  # (sites further back are read no more)
            agreeing = full.gather(3, through.view(1, T, 1, 1).expand(B, T, K, 1)).squeeze(3)
            return full[:, sites, :, offsets.expand_as(sites)].permute(2, 0, 1, 3), agreeing
        agreeing = torch.cat([state.agreeing, state.agreeing.new_ones(B, T - start, K)], 1)
        rows = []
        for n, t in enumerate(range(start, T)):
            window = torch.arange(max(0, t - W + 1), t)  # the sites whose result token t - s - 1 meets ids[t]
            if len(window):
                at = (t - 1 - window).view(1, -1, 1, 1).expand(B, -1, K, 1)
                written = self._canonical(tokens[:, window].gather(3, at).squeeze(3))  # [B, S, K]
                agreeing[:, window] &= written == self._canonical(ids[:, t]).view(B, 1, 1)
            rows.append(agreeing[:, sites[n]])  # [B, W', K]
        return torch.stack(rows, 1), agreeing

    def _agreement(self, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T, K, W] whether the text after each site agrees with tokens 0 .. j - 1 of each of its calls' results
        (always at j = 0, and where the text does not reach yet); a bracket of a group the LM shares out agrees with
        any bracket of its group."""
        B, T, K, W = tokens.shape
        following = torch.nn.functional.pad(ids[:, 1:], (0, W), value=-2).unfold(1, W, 1)[:, :T]  # [B, T, W]
        same = self._canonical(tokens) == self._canonical(following).unsqueeze(2)
        same = same | (following == -2).unsqueeze(2)
        return torch.cat([same.new_ones(B, T, K, 1), same[..., :-1].cummin(-1).values], -1)

    def _canonical(self, tokens: torch.Tensor) -> torch.Tensor:
        for group in self._shared:
            members = torch.tensor(group, dtype=tokens.dtype, device=tokens.device)
            tokens = torch.where(torch.isin(tokens, members), members[0], tokens)
        return tokens

    def _answers_run_to_their_end(self, ids: torch.Tensor, start: int, last_sites: torch.Tensor,
                                  continuation: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor,
                                  previous: Optional[torch.Tensor]) -> torch.Tensor:
        """An answer runs to its end (at inference): where the text after the site that the position before answers
        holds the first tokens of the result of that site's calls (most of their probability) and the result has a
        next token (or its end), the position goes on answering that site instead of starting a new call. Inside
        a long answer every separator keeps a little new-site mass (a 64-item sort's site fell to about half by its
        last items, and the LM's guess won); at an answer's last token a new call would append its digits (" no"
        read as the site of factorial_tape(15)). Later positions read as usual: what follows an answer's end is new
        text, a new question, or a prompt that goes on past tokens that happen to equal a call's result ("1+2=": the
        call at "+" reads 1 + 1). The positions after one the rule holds continue from what it holds, as they do
        token by token. ``continuation`` [B, N]: the continuation logits; ``previous`` [B, T']: the site
        distribution of the position before ``start`` (none at a sequence's start)."""
        B, N, T = last_sites.shape
        W = tokens.shape[-1]
        rows = ids.tolist()
        cont = torch.sigmoid(continuation)
        out = last_sites.clone()
        for b in range(B):
            changed = False
            for n in range(N):
                t = start + n
                if n > 0:
                    before = out[b, n - 1]
                elif previous is not None:
                    before = torch.nn.functional.pad(previous[b], (0, T - previous.shape[1]))
                else:
                    continue
                if changed:  # from what the rule held before, as the recursion of _continued_sites goes
                    out[b, n] = cont[b, n] * before
                    out[b, n, t] += 1.0 - cont[b, n]
                s = int(before.argmax())
                o = t - s
                if not 0 < o < W:
                    continue
                written = rows[b][s + 1 : t + 1]
                weights = probs[b, s].tolist()
                going_on = sum(w for w, result in zip(weights, tokens[b, s, :, : o + 1].tolist())
                               if result[o] >= 0 and result[:o] == written)
                if going_on > 0 and 2 * going_on >= sum(weights):
                    out[b, n] = before
                    changed = True
        return out

    @staticmethod
    def _continued_sites(continuation: torch.Tensor, T: int, state: Optional[InterpreterState]) -> torch.Tensor:
        """The call site each position answers, over sites [B, N, T]: with probability c_t the site of the previous
        position (the answer goes on, one offset further into the same result), otherwise the position itself (a
        new answer starts with the first token of the call made here),

            P[t] = c_t P[t - 1] + (1 - c_t) e_t,

        computed for all positions at once: P[t] = sum_t' exp(L[t] - L[t']) (1 - c_t') e_t' + exp(L[t]) P[start - 1],
        with L the cumulative sum of log c. No site is chosen by distance or content, so an answer stays on its call
        however far past the training lengths it runs."""
        B, N = continuation.shape
        start = T - N
        cont = torch.sigmoid(continuation)  # [B, N], from the continuation logits
        L = torch.cumsum(torch.log(cont.clamp_min(1e-30)), dim=1)  # [B, N]
        causal = torch.ones(N, N, dtype=torch.bool).tril()
        decay = torch.exp((L.unsqueeze(2) - L.unsqueeze(1)).masked_fill(~causal, float("-inf")))  # [B, N, N]
        out = cont.new_zeros(B, N, T)
        out[:, :, start:] = decay * (1.0 - cont).unsqueeze(1)
        if state is not None:
            carried = torch.nn.functional.pad(state.last_sites, (0, T - state.last_sites.shape[1]))
            out = out + torch.exp(L).unsqueeze(2) * carried.unsqueeze(1)
        return out

    def _top_calls(
        self, ids: torch.Tensor, start: int, calls: torch.Tensor, hidden: torch.Tensor, operand_keys: torch.Tensor,
        record: Optional[dict], own_site: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Result tokens [B, N, K, W] and probabilities [B, N, K] of the top-k calls at positions ``start`` onward,
        operands chosen by the operand reader among the numbers and lists the reader of tokens found in each
        position's prefix (never after it: a position's call must not depend on what follows), programs by the call
        logits ``calls`` [B, N, P] normalized over those that fit the operands. All positions are scored together.
        Third: [B, N] the positions that offered calls of which none was worth running (``nc_min_call_probability``)."""
        heads, config = self.nc_heads, self.config
        B, N, _ = calls.shape
        K, W, S = config.nc_top_k, config.nc_answer_window, config.nc_max_operands
        variants = self.calls.variants
        silent = heads.sentences.silent_positions(ids)
        silent = silent.tolist() if silent is not None else None
        site_b, site_n, site_operands, site_menu, menus, menu_index = [], [], [], [], [], {}
        for b in range(B):
            row = ids[b].tolist()
            menu = None
            for s in range(start, len(row)):
                if s == start or row[s] in self.reader.triggers:  # other tokens never change what the prefix holds
                    operands = self.calls.operands(row[: s + 1])
                    menu = self.calls.menu(operands)
                if menu is None or silent is not None and silent[b][s]:
                    continue
                if id(menu) not in menu_index:
                    menu_index[id(menu)] = len(menus)
                    menus.append(menu)
                site_b.append(b), site_n.append(s - start), site_operands.append(operands), site_menu.append(menu_index[id(menu)])
        tokens = torch.full((B, N, K * variants, W), -1, dtype=torch.long)
        probs = calls.new_zeros(B, N, K * variants)
        skipped = torch.zeros(B, N, dtype=torch.bool)
        if not site_b:
            return tokens, probs, skipped
        bi, ni, mi = torch.tensor(site_b), torch.tensor(site_n), torch.tensor(site_menu)
        width = max(map(len, site_operands))
        where = torch.tensor([[o.end - 1 for o in ops] + [-1] * (width - len(ops)) for ops in site_operands])  # [G, O]
        if len(menus) == 1:  # (the usual case while generating: one position, or positions seeing the same operands)
            programs, slots = menus[0].programs.expand(len(site_b), -1), menus[0].slots.expand(len(site_b), -1, -1)
            fits = menus[0].fits.expand(len(site_b), -1)
        else:
            programs = pad_sequence([m.programs for m in menus], batch_first=True)[mi]  # [G, C]
            slots = pad_sequence([m.slots for m in menus], batch_first=True, padding_value=-2)[mi]  # [G, C, S]
            fits = torch.stack([m.fits for m in menus])[mi]  # [G, P]
        logits = heads.operands(OperandSites(ids, start, operand_keys, hidden, bi, ni, site_operands, where, programs))
        pointer = torch.softmax(logits.masked_fill((where < 0)[:, None, None], float("-inf")), dim=-1)  # [G, 1 | C, S, O]
        p = torch.softmax(calls[bi, ni].masked_fill(~fits, float("-inf")), -1).gather(1, programs)  # [G, C]
        for slot in range(S):
            chosen = slots[:, :, slot]
            at = pointer[:, :, slot].expand(-1, chosen.shape[1], -1).gather(2, chosen.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            p = p * torch.where(chosen >= 0, at, (chosen == -1).to(p.dtype))
        top = p.detach().topk(min(K, p.shape[1]), dim=-1).indices  # [G, k]; padding combos have p = 0
        chosen_p = p.gather(1, top)
        worth = chosen_p.detach() if own_site is None else chosen_p.detach() * own_site[bi, ni].unsqueeze(1)
        # the calls whose proposal can weigh that much (training runs every call: its marginalization is exact)
        run = (worth >= (0.0 if self.training else config.nc_min_call_probability)).tolist()
        skipped[bi, ni] = torch.tensor([not any(go) for go in run])
        if config.nc_mode == "hard":
            self.calls.fill_menus(menus, site_menu, top.tolist(), run)
            if len(menus) == 1:
                chosen_tokens = menus[0].tokens[top]  # [G, k, variants, W]
            else:
                table = pad_sequence([m.tokens for m in menus], batch_first=True, padding_value=-1)  # [E, C, variants, W]
                chosen_tokens = table[mi.unsqueeze(1), top]
        if config.nc_mode == "soft" or record is not None:
            picked = [[menus[e].choices[c] if c < len(menus[e].choices) else None for c in cs] for e, cs in zip(site_menu, top.tolist())]
        if config.nc_mode == "soft":
            chosen_tokens, factor = self.calls.soft_results([[c.call if c and go else None for c, go in zip(row, ok)] for row, ok in zip(picked, run)])
            chosen_p = chosen_p * factor
        if record is not None:
            for g, row in enumerate(picked):
                operands = site_operands[g]
                record[(site_b[g], start + site_n[g])] = [
                    RecordedCall(c.call, [operands[i] for i in c.operands], float(chosen_p[g, k]), _real(chosen_tokens[g, k, 0]),
                                 c.problem or (None if run[g][k] else UNLIKELY))
                    for k, c in enumerate(row) if c is not None
                ]
        k = top.shape[1]
        if variants == 2:  # each call with and without the space before its result, as the call site's token says
            lead = heads.lead_probability(ids[bi, start + ni]).unsqueeze(1)  # [G, 1]
            chosen_p = torch.stack([chosen_p * (1 - lead), chosen_p * lead], -1)  # [G, k, 2]
        tokens[bi, ni, : k * variants] = chosen_tokens.reshape(len(site_b), k * variants, W)
        chosen_p = chosen_p.reshape(len(site_b), k * variants)
        probs = probs.index_put((bi, ni), torch.cat([chosen_p, chosen_p.new_zeros(len(site_b), (K - k) * variants)], 1))
        return tokens, probs, skipped


@dataclass
class Interpreted:
    """The interpreter's output for the positions of one forward pass."""

    proposal: torch.Tensor  # [B, N, vocab] unnormalized library proposal
    proposed_tokens: torch.Tensor  # [B, N, E] every token the proposal may hold (the others have 0)
    mass: torch.Tensor  # [B, N] the proposal's total
    gate: torch.Tensor  # [B, N]
    state: InterpreterState
    own_tokens: torch.Tensor  # [B, N, K] first result token of each call made at the position (-1: none)
    own_probs: torch.Tensor  # [B, N, K] those calls' probabilities
    site_probs: torch.Tensor  # [B, N, W] the site answered, by offset (0: the position itself)
    gate_logits: Optional[torch.Tensor] = None  # [B, N] each position's own gate logit
    sites: Optional[torch.Tensor] = None  # [B, N, T] the site each position answers (nc_gate_at="site"; else itself)


def _trainable(logits: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Logits with their -inf entries raised to ``sharpness`` below the row's best (finite ones are kept, so that
    trained weights load unchanged)."""
    floor = logits.amax(-1, keepdim=True) - sharpness
    return torch.where(torch.isinf(logits), floor, logits).detach().clone()


# generate() inspects the forward signature of a remote-code model at every step: give it the answer at once.
NCLlamaForCausalLM.forward.__signature__ = inspect.signature(NCLlamaForCausalLM.forward)

# save_pretrained writes these files and the auto_map into the folder, so that the Auto classes load it with
# trust_remote_code=True wherever it goes (a local folder, the Hub).
NCLlamaConfig.register_for_auto_class()
NCLlamaModel.register_for_auto_class("AutoModel")
NCLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["NCLlamaForCausalLM", "NCLlamaModel", "NCLlamaPreTrainedModel"]
