"""Configuration of NCLlama: a LLaMA configuration plus the settings of the library and its interpreter heads.

Every NCLlama setting starts with ``nc_``. The library's own settings (value size, memory, stack depth, step limit)
are recorded here so that a model refuses a library that does not match it (``nc_library_fingerprint``).
"""
from __future__ import annotations

import json
import os

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig
from transformers.utils import cached_file

NC_MODES = ("hard", "soft")
# The reader's token table is saved beside config.json (by the model's save_pretrained), not in it: it is built from
# the tokenizer (``tokenization.reader_tokens``) and runs to a thousand entries.
READER_TOKENS = "reader_tokens.json"
# The names of the heads' variants (``heads.CALL_READERS``, ``OPERAND_READERS``, ``SITE_READERS``, ``GATE_READERS``,
# ``GATE_PLACES``, whose keys these are: the configuration validates a name without building the modules).
NC_OPERAND_READERS = ("pointer", "context")
NC_CALL_READERS = ("hidden", "keywords", "sentence")
NC_SITE_READERS = ("hidden", "tokens")
NC_GATE_READERS = ("hidden", "words")
NC_GATE_POSITIONS = ("position", "site")
NC_CHAT_ROLES = ("marker", "header", "break")
# Named designs of the heads and their execution. The defaults are the shipped design (nclama-tiny's); "paper" reads
# every decision from the hidden state, as the paper's heads do, and is what BENCHMARKS.md's soft/hard sort, CLRS
# and less-than rows measured (their recipes list it). ``NCLlamaForCausalLM.from_llama(..., design=...)``.
NC_DESIGNS = {
    "shipped": {},
    "paper": dict(nc_layer=-1, nc_residual_injection=False, nc_call_reader="hidden", nc_operand_reader="pointer",
                  nc_site_reader="hidden", nc_gate_reader="hidden", nc_gate_at="position", nc_answer_lead=False, nc_top_k=4,
                  nc_answer_window=64, nc_min_call_probability=0.0, nc_max_steps=20_000),
}


@strict
class NCLlamaConfig(LlamaConfig):
    r"""
    nc_layer (`int`, defaults to -2):
        Decoder layer whose output the interpreter heads read (0-based, or negative from the end; -1: the last
        layer, whose output the heads read after the final norm, as the LM head does).
    nc_call_layer (`int`, optional):
        Decoder layer whose output the call reader reads, at or before `nc_layer` (None: `nc_layer`). A pretrained
        LM's middle layers tell what a question's words mean better than its last one (SmolLM2-135M: the mean of
        layer 15's word states names the task of wordings never trained on 94% of the time, the last layer's state
        at the call site 70%; `nclama probe-calls`).
    nc_mode (`str`, defaults to `"hard"`):
        How the top-k (call, operands) choices of a position are executed. `"hard"`: exactly (results cached), each
        choice's probability is that of the heads. `"soft"`: by the differentiable machine, each choice proposing its
        most likely result with the heads' probability times the machine's probability of that result; the programs'
        weights are then parameters of the model (`nc_program_weights`) and train with it.
    nc_top_k (`int`, defaults to 6):
        Number of (call, operands) combinations executed and marginalized per position.
    nc_min_call_probability (`float`, defaults to 0.01):
        At inference, a top-k call whose probability at its position is below this is not executed and proposes
        nothing (in training every top-k call runs: the exact marginalization training needs). A trained model
        answers with calls of probability near 1; skipping the unlikely ones (which may run to ``nc_max_steps``)
        makes inference fast, changing no probability by more than this.
    nc_value_size, nc_memory_size, nc_stack_depth:
        The machine the library was compiled for (`nc_memory_size` at most `nc_value_size - 1`).
    nc_max_steps (`int`, defaults to 200000):
        The most steps one call made by the model may run. Each call's own budget scales with its operands (see
        ``modeling_nclama.call_budget``: a 5-digit sum gets about a thousand steps, a 64-item sort about fifty
        thousand), capped here; a call that runs out proposes nothing and its trace says so.
    nc_programs (`list[str]`):
        The library programs the call head chooses among, in order.
    nc_library_fingerprint (`str`, optional):
        sha256 of the library's tensors and settings (`Library.fingerprint()`); a different library is refused.
    nc_operand_reader (`str`, defaults to `"context"`):
        The operand head, by name in ``heads.OPERAND_READERS``: `"pointer"`, pointer attention from the position's
        hidden state to the candidates; `"context"`, learned scores of the tokens around each candidate and of its
        rank, per program and slot ("Subtract B from A." gives `long_sub`'s first slot the number after " from"
        whatever its length). Either way the candidates are the numbers and lists the reader found before the
        position.
    nc_call_reader (`str`, defaults to `"keywords"`):
        The call head, by name in ``heads.CALL_READERS``: `"hidden"` (the paper's), a linear map of the position's
        hidden state; `"keywords"`, a learned score per (token, program), max-pooled over the position's sentence,
        the same at any operand length; `"sentence"`, a linear map of the mean of the (normalized) hidden states of
        the words of the position's sentence (layer `nc_call_layer`): what a pretrained LM understands of the
        question, whatever the operands' length. Either way the call's distribution is over the programs that fit the
        position's operands (a program that cannot run takes no mass).
    nc_site_reader (`str`, defaults to `"tokens"`):
        What decides whether a position continues the answer of the position before it or starts a new one, by name
        in ``heads.SITE_READERS``: `"hidden"`, a linear map of the hidden state; `"tokens"`, the position's token and
        the token before it alone (a separator after a digit continues a list, the space after "?" starts an
        answer), so that answers far longer than the training ones stay on their call.
    nc_gate_reader (`str`, defaults to `"words"`):
        What opens the gate, by name in ``heads.GATE_READERS``: `"hidden"`, a linear map of the hidden state;
        `"words"`, that and, multiplied, a learned score per token max-pooled over the position's sentence (words
        the training never showed score 0), so that a sentence that asks nothing keeps the gate closed however a
        small LM reads its unknown words.
    nc_gate_at (`str`, defaults to `"site"`):
        Where the gate is read, by name in ``heads.GATE_PLACES``: `"position"`, from each position's hidden state;
        `"site"`, the gate of the call site a position answers, so that the decision to answer from the library is
        taken once, where the call is made, and holds for the whole answer, however long it runs.
    nc_max_candidates (`int`, defaults to 8):
        How many of the latest numbers and lists before a position its call may read (pointer and context readers).
    nc_max_operands (`int`, defaults to 2):
        Operand slots of the heads (at most the library's argument registers).
    nc_pointer_dim (`int`, defaults to 64):
        Width of the pointer attention's queries and keys.
    nc_reader_tokens (`dict[str, str]`):
        Token id (as a string, JSON keys are strings) -> its text, for digit tokens (1-3 digits, LLaMA 3 style) and
        list punctuation: the operand reader's table (``reader.py``), built from the tokenizer by
        ``tokenization.reader_tokens``. Not written to config.json: the model's ``save_pretrained`` writes it to
        ``reader_tokens.json`` beside it and ``from_pretrained`` reads it back.
    nc_result_words (`dict[str, list[str]]`, optional):
        Programs whose int result is written as a word: program -> the word (one token's text, in
        `nc_reader_tokens`) of each result value; `{"long_cmp": [" yes", " no", " no"]}` answers "Is a less than
        b?" (`long_cmp` returns 0, 1, 2 for a < b, a = b, a > b). A value without a word proposes only the end.
        With `nc_answer_lead`, a word whose text without its leading space is a token of `nc_reader_tokens` too
        ("no" beside " no") is written without the space where the call site's lead says so: the assistant's turn
        of a chat template starts its answer "no" on a new line.
    nc_chat_tokens (`dict[str, str]`, optional):
        The tokens a chat template writes around the messages (token id as a string -> its role), built from the
        tokenizer by ``training.chat_tokens``: `"marker"`, the special tokens that open and close a turn
        (`<|im_start|>`, `<|im_end|>`); `"header"`, the other text of a turn's header (role names: "user", "ass"
        "istant"); `"break"`, the whitespace that ends a header ("\n"). From a marker up to the first token that is
        not one of these, the positions are the template's: the keyword call reader reads no words there and a
        sentence neither ends nor starts there (the content after a template starts a new one, and the call at the
        assistant's turn reads the user's last sentence); markers and headers make no calls (a break does: the
        "\n" that opens the assistant's turn is where its answer's call is made); a marker, like the
        beginning-of-sequence token, lets a new answer start after one that was written out. Empty (the default):
        no template.
    nc_decimal_places (`int`, defaults to 0):
        With 1-3, the reader reads a decimal like "0.549" as one number in fixed point (549 thousandths with 3
        places; needs the "." token in `nc_reader_tokens`) and writes results read from decimals back as decimals.
        With 0, "0.549" is two numbers.
    nc_closers_from_lm (`bool`, defaults to `False`):
        The library proposes that a list ends; the language model chooses which closing token ends it ("]", "]\n",
        "]."): the proposal's mass on the reader's closing tokens is shared among them as the LM prefers them. For
        formats where what follows a list merges into its bracket's token (CLRS-Text's "]\n").
    nc_openers_from_lm (`bool`, defaults to `False`):
        The same for the opening bracket: the library proposes that a list starts, the language model chooses which
        opening token starts it ("[" or " ["). After a prompt ending in "]." the answer's " [" carries its space, so
        the whole answer, bracket included, comes from the call made at the prompt's last token.
    nc_answer_lead (`bool`, defaults to `True`):
        A result may be written with the space before it, as the tokenizer merges it ("? -76867" is "?" " -" ...,
        "? 85679" is "?" " " ...): each call proposes its result with and without that space, weighted by a learned
        probability per call-site token, so the call made at the prompt's last token writes the whole answer, sign
        and separator included. Without it a negative result cannot follow a space.
    nc_answer_window (`int`, defaults to 256):
        How many positions after a call its result may be emitted over.
    nc_residual_injection (`bool`, defaults to `True`):
        Add the expected embedding of the first result token of the call made at each position, through a
        zero-initialized linear map, to the output of layer `nc_layer`, so that later layers can use results the
        output does not copy (needs `nc_layer` below the last layer).
    nc_base_model (`str`, optional):
        The LLaMA checkpoint this model was converted from (`from_llama` with a path or Hub id), for the model card.
    """

    model_type = "nclama"

    # The library and its machine (set from the library by `library_settings`; a different library is refused)
    nc_programs: list | None = None  # what the call head chooses among: more programs, more calls to score per position
    nc_value_size: int = 1024  # V, one machine value in [0, V): larger V, larger soft-mode tensors (hard mode: free)
    nc_memory_size: int | None = None  # cells (default V - 1): bounds the longest list or tape a call can take
    nc_stack_depth: int = 32  # call depth: deeper recursion, larger soft-mode stack distributions
    nc_library_fingerprint: str | None = None  # sha256 of the library: refuses a library the heads were not trained on
    # Execution of the calls
    nc_mode: str = "hard"  # hard: exact, fast, programs fixed; soft: programs train, slow, drifts with depth
    nc_top_k: int = 6  # calls run per position: more, the exact marginal over more calls, more machine runs
    nc_min_call_probability: float = 0.01  # inference skips calls below it: faster, each probability off by at most it
    nc_max_steps: int = 200_000  # a call's step cap (its budget scales with its operands): larger, slower misses
    nc_answer_window: int = 256  # how many tokens a result may run: longer answers, a larger per-position menu
    # The heads (what each decision reads)
    nc_layer: int = -2  # the layer the heads read: the last needs no decoder backward, an inner one allows injection
    nc_call_layer: int | None = None  # the call reader's layer (None: nc_layer); a middle one knows words better
    nc_call_reader: str = "keywords"  # hidden: reads meaning, drifts with length; keywords: length-proof, a word table
    nc_operand_reader: str = "context"  # pointer: attention from the hidden state; context: tokens around, length-proof
    nc_site_reader: str = "tokens"  # hidden state, or the position's and previous tokens (length-proof)
    nc_gate_reader: str = "words"  # hidden: the LM's reading alone; words: also a word table that must see a question
    nc_gate_at: str = "site"  # position: each token's own gate; site: the call site's, held for the whole answer
    nc_max_operands: int = 2  # operand slots: programs of more parameters are never called
    nc_max_candidates: int = 8  # the latest numbers and lists a call may read: more, larger menus
    nc_pointer_dim: int = 64  # pointer attention's width (pointer reader only)
    nc_residual_injection: bool = True  # the proposal added to layer nc_layer's output: later layers see results
    nc_answer_lead: bool = True  # results written with or without the space before them: twice the proposals
    # The reader and writer of tokens (built from the tokenizer by `tokenization.reader_tokens` / `chat_tokens`)
    nc_reader_tokens: dict | None = None  # token id -> text for digits and list punctuation
    nc_result_words: dict | None = None  # program -> the word of each int result (" yes"/" no")
    nc_chat_tokens: dict | None = None  # the chat template's tokens: never operands or call sites
    nc_decimal_places: int = 0  # 1-3: "0.549" is one fixed-point number; 0: two numbers
    nc_closers_from_lm: bool = False  # the LM picks which closing bracket token ends a list the library ends
    nc_openers_from_lm: bool = False  # the same for the opening bracket
    # Provenance
    nc_base_model: str | None = None  # the LLaMA converted, for the model card

    def __post_init__(self, **kwargs):
        if self.nc_memory_size is None:
            self.nc_memory_size = self.nc_value_size - 1
        if self.nc_programs is None:
            self.nc_programs = []
        if self.nc_reader_tokens is None:
            self.nc_reader_tokens = {}
        if self.nc_result_words is None:
            self.nc_result_words = {}
        if self.nc_chat_tokens is None:
            self.nc_chat_tokens = {}
        if not getattr(self, "auto_map", None):
            self.auto_map = {
                "AutoConfig": "configuration_nclama.NCLlamaConfig",
                "AutoModel": "modeling_nclama.NCLlamaModel",
                "AutoModelForCausalLM": "modeling_nclama.NCLlamaForCausalLM",
            }
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict:
        """The configuration as config.json holds it: without the reader's token table (``READER_TOKENS`` does)."""
        out = super().to_dict()
        out.pop("nc_reader_tokens", None)
        return out

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """config.json, and the reader's token table beside it in ``READER_TOKENS``."""
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if self.nc_reader_tokens:
            with open(os.path.join(save_directory, READER_TOKENS), "w", encoding="utf-8") as f:
                json.dump(self.nc_reader_tokens, f, indent=0, ensure_ascii=False)
                f.write("\n")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """config.json, with the reader's token table read from ``READER_TOKENS`` beside it (a local folder, the Hub
        cache or the Hub), where there is one."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        where = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(where):  # the path of a config file itself
            where = os.path.dirname(where) or "."
        if "nc_reader_tokens" not in config_dict:
            options = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            path = cached_file(where, READER_TOKENS, _raise_exceptions_for_missing_entries=False,
                               **{k: kwargs[k] for k in options if k in kwargs})
            if path is not None:
                with open(path, encoding="utf-8") as f:
                    config_dict["nc_reader_tokens"] = json.load(f)
        return config_dict, kwargs

    def validate_architecture(self):
        """Part of `@strict` validation: every NCLlama setting must make sense on its own and with the LLaMA ones."""
        super().validate_architecture()
        layers = self.num_hidden_layers
        if not -layers <= self.nc_layer < layers:
            raise ValueError(f"nc_layer must be in [{-layers}, {layers - 1}] for {layers} layers, got {self.nc_layer}")
        if self.nc_call_layer is not None and not (
                -layers <= self.nc_call_layer < layers and self.nc_call_layer % layers <= self.nc_layer % layers):
            raise ValueError(f"nc_call_layer must be a layer at or before nc_layer ({self.nc_layer % layers}) of "
                             f"{layers}, got {self.nc_call_layer}")
        choices = {"nc_mode": NC_MODES, "nc_operand_reader": NC_OPERAND_READERS, "nc_call_reader": NC_CALL_READERS,
                   "nc_site_reader": NC_SITE_READERS, "nc_gate_reader": NC_GATE_READERS,
                   "nc_gate_at": NC_GATE_POSITIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = ("nc_top_k", "nc_stack_depth", "nc_max_steps", "nc_max_operands", "nc_max_candidates", "nc_pointer_dim", "nc_answer_window")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.nc_min_call_probability, bool) or not isinstance(self.nc_min_call_probability, (int, float)) or not 0 <= self.nc_min_call_probability < 1:
            raise ValueError(f"nc_min_call_probability must be in [0, 1), got {self.nc_min_call_probability!r}")
        texts = set(self.nc_reader_tokens.values())
        for name, words in self.nc_result_words.items():
            if name not in self.nc_programs:
                raise ValueError(f"nc_result_words: {name!r} is not in nc_programs")
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError(f"nc_result_words[{name!r}] must be a list of words, got {words!r}")
            missing = [w for w in words if w not in texts]
            if missing:
                raise ValueError(f"nc_result_words[{name!r}]: {missing[0]!r} is not a token of nc_reader_tokens "
                                 "(build it with tokenization.reader_tokens(tokenizer, words=...))")
        if isinstance(self.nc_decimal_places, bool) or self.nc_decimal_places not in (0, 1, 2, 3):
            raise ValueError(f"nc_decimal_places must be 0, 1, 2 or 3, got {self.nc_decimal_places!r}")
        if self.nc_decimal_places and "." not in self.nc_reader_tokens.values():
            raise ValueError("nc_decimal_places needs the '.' token in nc_reader_tokens: rebuild it with tokenization.reader_tokens")
        if self.nc_residual_injection and self.nc_layer % layers == layers - 1:
            raise ValueError(f"nc_residual_injection needs nc_layer below the last layer ({layers - 1}): there is no later layer to inject into")
        if self.nc_value_size < 3:
            raise ValueError(f"nc_value_size must be at least 3, got {self.nc_value_size}")
        if not 2 <= self.nc_memory_size < self.nc_value_size:
            raise ValueError(f"nc_memory_size must be in [2, nc_value_size - 1 = {self.nc_value_size - 1}], got {self.nc_memory_size}")
        if len(set(self.nc_programs)) != len(self.nc_programs) or not all(isinstance(p, str) for p in self.nc_programs):
            raise ValueError(f"nc_programs must be distinct program names, got {self.nc_programs!r}")
        for token, role in self.nc_chat_tokens.items():
            if not str(token).isdigit() or int(token) >= self.vocab_size:
                raise ValueError(f"nc_chat_tokens: {token!r} is not a token id below vocab_size {self.vocab_size}")
            if role not in NC_CHAT_ROLES:
                raise ValueError(f"nc_chat_tokens: token {token} has role {role!r}, not one of {NC_CHAT_ROLES}")
        for token, text in self.nc_reader_tokens.items():
            if not str(token).isdigit() or int(token) >= self.vocab_size:
                raise ValueError(f"nc_reader_tokens: {token!r} is not a token id below vocab_size {self.vocab_size}")
            if not isinstance(text, str) or text.isdigit() and len(text) > 3:
                raise ValueError(f"nc_reader_tokens: token {token} maps to {text!r}, not a text or a string of 1-3 digits")


__all__ = ["NCLlamaConfig"]
