"""Library files: save/load round trip, the contents of library.json, refusal of corrupted files, atomic saves,
no pickle anywhere; and compile_library with user programs."""
import hashlib
import json
import os
import pickle
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import modeling_nclama.library as library_module
from modeling_nclama import CompileError, Library, LibraryError, MachineError, compile_library, ops as ops_module, standard_library
from modeling_nclama.program import OPS, WEIGHT_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")

V = 256
JSON, TENSORS = "library.json", "library.safetensors"
PROBES = {"gcd": [(12, 18), (255, 85)], "fib": [(10,)], "insertion_sort": [([5, 3, 9, 1],)],
          "long_mul": [(99, -99)], "fib_tape": [(30,)], "sort_numbers": [([12, -5, 0],)]}


@pytest.fixture(scope="module")
def saved(std, tmp_path_factory):
    """The standard library saved once; tests copy the folder before corrupting it."""
    directory = tmp_path_factory.mktemp("std")
    std.save(directory)
    return directory


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "lib"
    shutil.copytree(saved, target)
    return target


def results(lib):
    return {name: lib.run_batch(name, batch).values for name, batch in PROBES.items()}


def read_meta(directory):
    return json.loads((directory / JSON).read_text())


def write_meta(directory, meta):
    (directory / JSON).write_text(json.dumps(meta, indent=1))


# ---------------------------------------------------------------------- round trip
def test_save_load_round_trip(std, saved):
    assert sorted(os.listdir(saved)) == [JSON, TENSORS]  # no temporary files left behind
    loaded = Library.load(saved)
    assert loaded.names == std.names
    assert loaded.fingerprint() == std.fingerprint()
    for a, b in zip(std.programs, loaded.programs):
        assert (a.name, a.params, a.returns, a.callees, a.source) == (b.name, b.params, b.returns, b.callees, b.source)
        assert a.assembly() == b.assembly()
        for field in WEIGHT_NAMES:
            assert torch.equal(a.weights[field], b.weights[field]), (a.name, field)
    m, n = std.machine, loaded.machine
    assert (m.memory_size, m.stack_depth, m.num_registers, m.num_args) == (
        n.memory_size, n.stack_depth, n.num_registers, n.num_args)
    assert loaded.max_steps == std.max_steps
    assert results(loaded) == results(std)
    assert results(loaded)["fib_tape"] == [832040] and results(loaded)["long_mul"] == [-9801]
    assert results(loaded)["sort_numbers"] == [[-5, 0, 12]]
    assert loaded["long_mul"].params == [("a", "tape"), ("b", "tape")] and loaded["sort_numbers"].returns == "numbers"
    assert loaded.run("gcd", 12, 18, mode="soft") == 6


def test_fingerprint_changes_with_the_programs(std):
    softened = std.with_programs([std["gcd"].soften(4.0)])
    assert softened.fingerprint() != std.fingerprint()
    assert standard_library(V).fingerprint() == std.fingerprint()  # deterministic compile


def test_round_trip_of_custom_settings_and_softened_programs(std, tmp_path):
    lib = Library(
        [p.soften(3.0) if p.name == "gcd" else p for p in std.programs], memory_size=128, stack_depth=40, max_steps=999
    )
    lib.save(tmp_path)
    loaded = Library.load(tmp_path)
    assert (loaded.machine.memory_size, loaded.machine.stack_depth, loaded.max_steps) == (128, 40, 999)
    assert loaded.fingerprint() == lib.fingerprint()
    assert torch.equal(loaded["gcd"].weights["op"], lib["gcd"].weights["op"])
    assert loaded.run("gcd", 12, 18) == 6


def test_saving_twice_overwrites_cleanly(std, user_lib, tmp_path):
    std.save(tmp_path)
    user_lib.save(tmp_path)
    loaded = Library.load(tmp_path)
    assert loaded.names == user_lib.names
    assert sorted(os.listdir(tmp_path)) == [JSON, TENSORS]


# ---------------------------------------------------------------------- library.json contents
def test_library_json_describes_everything(std, saved):
    meta = read_meta(saved)
    assert meta["format_version"] == library_module.FORMAT_VERSION == 2
    assert meta["value_size"] == V
    assert meta["memory_size"] == std.machine.memory_size and meta["stack_depth"] == std.machine.stack_depth
    assert meta["num_registers"] == std.machine.num_registers and meta["num_args"] == std.machine.num_args
    assert meta["instruction_set"] == list(OPS)
    assert [e["name"] for e in meta["programs"]] == std.names
    with safe_open(str(saved / TENSORS), framework="pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    described_keys = set()
    for entry in meta["programs"]:
        program = std[entry["name"]]
        assert entry["params"] == [list(p) for p in program.params]
        assert len(entry["params"]) == program.arity
        assert entry["returns"] == program.returns and entry["callees"] == program.callees
        assert entry["source"] == program.source and entry["source"].startswith(f"def {program.name}(")
        assert entry["assembly"] == program.assembly()
        assert entry["assembly"].splitlines()[0].startswith(f"def {program.name}(")
        assert set(entry["tensors"]) == set(WEIGHT_NAMES)
        for field, described in entry["tensors"].items():
            assert described["name"] == f"{program.name}.{field}"
            tensor = stored[described["name"]]
            assert described["shape"] == list(program.weights[field].shape) == list(tensor.shape)
            assert described["sha256"] == hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
            assert torch.equal(tensor, program.weights[field].float())
            described_keys.add(described["name"])
    assert described_keys == set(stored)  # every stored tensor is described, and nothing else is stored
    assert not any(key.startswith("op.") for key in stored)  # op tables are rebuilt at load, not stored
    assert list(meta["ops"]) == std.machine.primitives_used and {"mod", "add", "lt"} <= set(meta["ops"])
    for name, recorded in meta["ops"].items():
        table = ops_module.hard_table([name], V)[0].to(torch.int32)  # the documented encoding: little-endian int32
        assert recorded == {"sha256": hashlib.sha256(table.numpy().astype("<i4").tobytes()).hexdigest()}
        assert recorded["sha256"] == library_module.op_table_sha256(name, V)
    assert library_module.op_table_sha256("add", V) != library_module.op_table_sha256("add", V + 1)


def test_library_files_hold_no_op_tables_and_stay_small(saved, tmp_path):
    """Only program weights are stored: at V = 1024 one op table alone would be 4 MB."""
    weights = sum(4 * t.numel() for t in load_file(str(saved / TENSORS)).values())
    assert (saved / TENSORS).stat().st_size < weights + 64 * 1024  # the weights plus the safetensors header
    source = "def f(a, b):\n    return max(a % b, a // b) + (a < b)\n"
    big = compile_library(source, value_size=1024)
    assert len(big.machine.primitives_used) >= 5
    big.save(tmp_path)
    assert (tmp_path / TENSORS).stat().st_size < 64 * 1024
    assert set(read_meta(tmp_path)["ops"]) == set(big.machine.primitives_used)
    assert Library.load(tmp_path).run("f", 1000, 7) == 142


def test_programs_from_source_keep_their_source(user_lib, user_source):
    for p in user_lib.programs:
        assert p.source in user_source and p.source.startswith(f"def {p.name}(")


# ---------------------------------------------------------------------- corrupted files are refused
def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_in_tensors_is_refused(copy):
    path = copy / TENSORS
    _flip_byte(path, path.stat().st_size - 3)
    with pytest.raises(LibraryError, match="sha256|corrupted"):
        Library.load(copy)


def test_flipped_byte_in_the_middle_of_the_tensors_is_refused(copy):
    path = copy / TENSORS
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    _flip_byte(path, 8 + header + (path.stat().st_size - 8 - header) // 2)
    with pytest.raises(LibraryError, match="sha256|corrupted|differs"):
        Library.load(copy)


def test_flipped_byte_in_the_safetensors_header_is_refused(copy):
    _flip_byte(copy / TENSORS, 9)
    with pytest.raises(LibraryError):
        Library.load(copy)


@pytest.mark.parametrize("keep", [0, 4, 100, 0.5, -1])
def test_truncated_tensors_are_refused(copy, keep):
    path = copy / TENSORS
    data = path.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:size])
    with pytest.raises(LibraryError, match="safetensors"):
        Library.load(copy)


def test_edited_sha256_is_refused(copy):
    meta = read_meta(copy)
    described = meta["programs"][0]["tensors"]["op"]
    described["sha256"] = "0" * 64
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match=r"gcd\.op does not match its sha256"):
        Library.load(copy)


def test_edited_shape_is_refused(copy):
    meta = read_meta(copy)
    meta["programs"][0]["tensors"]["a"]["shape"][0] += 1
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match=r"gcd\.a has shape"):
        Library.load(copy)


def test_missing_tensor_is_refused(copy):
    tensors = load_file(str(copy / TENSORS))
    del tensors["fib.target"]
    save_file(tensors, str(copy / TENSORS), metadata={"format": "pt"})
    with pytest.raises(LibraryError, match=r"fib\.target is missing"):
        Library.load(copy)


def test_consistently_replaced_tensor_is_refused_by_the_assembly_check(copy):
    """A tensor changed together with its sha256 (so the file checks pass) still must match the assembly."""
    tensors = load_file(str(copy / TENSORS))
    op = tensors["gcd.op"].clone()
    op[1] = op[1].roll(1)  # line 1 becomes another instruction
    tensors["gcd.op"] = op
    save_file(tensors, str(copy / TENSORS), metadata={"format": "pt"})
    meta = read_meta(copy)
    meta["programs"][0]["tensors"]["op"]["sha256"] = hashlib.sha256(op.numpy().tobytes()).hexdigest()
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="gcd: its tensors do not match its recorded assembly"):
        Library.load(copy)


def test_edited_op_sha256_is_refused(copy):
    meta = read_meta(copy)
    table = ops_module.hard_table(["add"], V)[0].to(torch.int32).clone()
    table[0] = 1  # the hash of an add table where 0 + 0 = 1
    meta["ops"]["add"]["sha256"] = hashlib.sha256(table.numpy().tobytes()).hexdigest()
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="op 'add'.*does not match its sha256.*another definition"):
        Library.load(copy)


def test_library_of_another_primitive_definition_is_refused(copy, monkeypatch):
    """The library was made by primitives that differ from this runtime's: its recorded table hashes tell."""
    monkeypatch.setitem(ops_module.PRIMITIVES, "mod", (lambda a, b: a % b if b else 0, 2))  # another x % 0
    ops_module._table.cache_clear()
    try:
        with pytest.raises(LibraryError, match="op 'mod'.*V = 256.*another definition"):
            Library.load(copy)
    finally:
        monkeypatch.undo()
        ops_module._table.cache_clear()
        ops_module._device_table.cache_clear()
    assert Library.load(copy).run("gcd", 12, 18) == 6


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["ops"].pop("mod"), "'ops' records"),
        (lambda m: m["ops"].update(min={"sha256": library_module.op_table_sha256("min", V)}), "'ops' records"),
        (lambda m: m["ops"].update(frobnicate={"sha256": "0" * 64}), "primitive 'frobnicate'"),
        (lambda m: m.update(ops=["add"]), "'ops' must map"),
        (lambda m: m.pop("ops"), "malformed"),
        (lambda m: m["ops"].update(add="0" * 64), "malformed"),
    ],
    ids=["missing-op", "unused-op", "unknown-op", "not-a-dict", "no-ops", "bare-hash"],
)
def test_inconsistent_op_records_are_refused(copy, edit, message):
    meta = read_meta(copy)
    edit(meta)
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match=message):
        Library.load(copy)


def test_undescribed_tensors_are_refused(copy):
    """E.g. a format-1 op table left in the file: everything stored must be described in library.json."""
    tensors = load_file(str(copy / TENSORS))
    tensors["op.add"] = ops_module.hard_table(["add"], V)[0].to(torch.int32)
    save_file(tensors, str(copy / TENSORS), metadata={"format": "pt"})
    with pytest.raises(LibraryError, match="does not describe: op.add"):
        Library.load(copy)


def test_format_1_library_is_refused_naming_both_versions(copy):
    """A library saved by the previous format (op tables as op.<name> tensors, described in library.json)."""
    meta = read_meta(copy)
    tensors = load_file(str(copy / TENSORS))
    for name in meta["ops"]:
        tensors[f"op.{name}"] = ops_module.hard_table([name], V)[0].to(torch.int32)
        meta["ops"][name] = {"name": f"op.{name}", "shape": [V * V], "dtype": "int32", "sha256": "0" * 64}
    meta["format_version"] = 1
    save_file(tensors, str(copy / TENSORS), metadata={"format": "pt"})
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="format_version 1 was written by an older nclama.*reads format_version 2"):
        Library.load(copy)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", "\xff\xfe"])
def test_invalid_json_is_refused(copy, text):
    (copy / JSON).write_bytes(text.encode("latin-1"))
    with pytest.raises(LibraryError, match="JSON|library description"):
        Library.load(copy)


@pytest.mark.parametrize("version", [0, 1, 3, "2", 2.5, True, None])
def test_wrong_format_version_is_refused(copy, version):
    meta = read_meta(copy)
    meta["format_version"] = version
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="format_version"):
        Library.load(copy)


def test_missing_format_version_is_refused(copy):
    meta = read_meta(copy)
    del meta["format_version"]
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="format_version"):
        Library.load(copy)


@pytest.mark.parametrize("missing", [JSON, TENSORS])
def test_missing_files_are_refused(copy, missing):
    (copy / missing).unlink()
    with pytest.raises(LibraryError, match=f"{missing} does not exist"):
        Library.load(copy)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(LibraryError, match="does not exist"):
        Library.load(tmp_path / "nowhere")


def test_edited_assembly_text_is_refused(copy):
    meta = read_meta(copy)
    entry = next(e for e in meta["programs"] if e["name"] == "gcd")
    assert "mod x2, x0, x1" in entry["assembly"]
    entry["assembly"] = entry["assembly"].replace("mod x2, x0, x1", "add x2, x0, x1")
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="gcd: its tensors do not match its recorded assembly"):
        Library.load(copy)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("programs"),
        lambda m: m["programs"][1].pop("tensors"),
        lambda m: m["programs"][1]["tensors"].pop("branch"),
        lambda m: m.update(value_size=128),
        lambda m: m.update(num_registers=m["num_registers"] + 1),
        lambda m: m.update(memory_size=10_000),
        lambda m: m.update(stack_depth=0),
        lambda m: m.update(instruction_set=m["instruction_set"][:-1]),
        lambda m: m["programs"][0].update(returns="list"),
        lambda m: m["programs"][0].update(params=[["a", "int"]]),
        lambda m: m["programs"][0].update(name="gcd2"),
        lambda m: m["programs"][3].update(callees=["gcd"]),
        lambda m: m.update(programs=[]),
        lambda m: m.update(programs=m["programs"] + m["programs"][:1]),
    ],
    ids=["no-programs", "no-tensors", "no-field", "value-size", "registers", "memory-size", "stack-depth",
         "instruction-set", "returns", "params", "name", "callees", "empty", "duplicate"],
)
def test_inconsistent_json_is_refused(copy, edit):
    meta = read_meta(copy)
    edit(meta)
    write_meta(copy, meta)
    with pytest.raises(LibraryError):
        Library.load(copy)


def test_unknown_kinds_are_refused(copy):
    meta = read_meta(copy)
    entry = next(e for e in meta["programs"] if e["name"] == "long_add")
    assert entry["params"] == [["a", "tape"], ["b", "tape"]] and entry["returns"] == "tape"
    assert entry["assembly"].startswith("def long_add(a: tape, b: tape) -> tape\n")
    entry["params"][1][1] = "digits"
    entry["assembly"] = entry["assembly"].replace("b: tape", "b: digits", 1)
    write_meta(copy, meta)
    with pytest.raises(LibraryError, match="long_add: unknown parameter or result kind"):
        Library.load(copy)


def test_library_error_is_a_value_error():
    assert issubclass(LibraryError, ValueError)


# ---------------------------------------------------------------------- failed saves keep the old library
def _assert_is_the_standard_library(directory, std):
    loaded = Library.load(directory)
    assert loaded.fingerprint() == std.fingerprint()
    assert loaded.run("gcd", 12, 18) == 6
    assert sorted(os.listdir(directory)) == [JSON, TENSORS]  # and no temporary files left behind


def test_failed_tensor_write_keeps_the_old_library(std, user_lib, copy, monkeypatch):
    def failing_save_file(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(library_module, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        user_lib.save(copy)
    _assert_is_the_standard_library(copy, std)


def test_failed_json_write_keeps_the_old_library(std, user_lib, copy, monkeypatch):
    def failing_dumps(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(library_module.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        user_lib.save(copy)
    monkeypatch.undo()
    _assert_is_the_standard_library(copy, std)


def test_bug_save_interrupted_between_the_two_renames_keeps_a_loadable_library(std, user_lib, copy, monkeypatch):
    """library._write_together renames the two files one after the other: if the second os.replace fails (or the
    process dies between them), the folder holds the new tensors with the old library.json, and neither library
    loads. A save should switch both files at once (e.g. write a new versioned folder, or name the tensors file by
    its content hash in library.json and rename library.json last)."""
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("interrupted")
        return real_replace(src, dst)

    monkeypatch.setattr(library_module.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="interrupted"):
        user_lib.save(copy)
    monkeypatch.undo()
    loaded = Library.load(copy)  # either the old library or the new one, never neither
    assert loaded.fingerprint() in (std.fingerprint(), user_lib.fingerprint())


# ---------------------------------------------------------------------- no pickle
def test_saved_files_contain_no_pickle(saved):
    tensors = (saved / TENSORS).read_bytes()
    header_size = struct.unpack("<Q", tensors[:8])[0]
    header = json.loads(tensors[8 : 8 + header_size])  # a safetensors file: a JSON header, then raw bytes
    assert header["__metadata__"] == {"format": "pt"}
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} <= {"F32", "I32"}
    assert len(tensors) == 8 + header_size + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert not tensors.startswith(b"PK")  # not a torch.save zip
    assert b"\x80\x04\x95" not in tensors[: 8 + header_size] and b"\x80\x02" not in tensors[:8]
    json.loads((saved / JSON).read_text())  # plain JSON
    assert not (saved / JSON).read_bytes().startswith(b"\x80")


def test_loading_never_unpickles(std, saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during Library.load")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    loaded = Library.load(saved)
    assert loaded.fingerprint() == std.fingerprint()
    assert loaded.run("gcd", 12, 18) == 6


# ---------------------------------------------------------------------- user programs
def test_from_source_mutual_recursion_in_both_modes(user_lib):
    assert user_lib.names == ["is_even", "is_odd", "add", "double_all"]
    assert user_lib["is_even"].callees == ["is_odd"] and user_lib["is_odd"].callees == ["is_even"]
    batch = [(n,) for n in range(30)]
    result = user_lib.run_batch("is_even", batch)
    assert result.values == [int(n % 2 == 0) for n in range(30)] and result.status == ["ok"] * 30
    assert user_lib.run_batch("is_odd", batch).values == [n % 2 for n in range(30)]
    for n in (0, 3, 6):
        assert user_lib.run("is_even", n, mode="soft") == user_lib.run("is_even", n) == int(n % 2 == 0)
    assert user_lib.run("is_odd", 5, mode="soft") == 1
    with pytest.raises(MachineError, match="stack"):  # 40 nested calls > stack depth 32
        user_lib.run("is_even", 40)


def test_from_source_other_programs_in_both_modes(user_lib):
    assert user_lib.run("add", 200, 100) == user_lib.run("add", 200, 100, mode="soft") == 44
    assert user_lib.run("double_all", [1, 2, 200]) == user_lib.run("double_all", [1, 2, 200], mode="soft") == [2, 4, 144]
    assert user_lib.run("double_all", []) == []


def test_from_source_round_trip_and_small_value_size(tmp_path):
    lib = compile_library("def twice(n):\n    return n + n\n", value_size=16)
    assert lib.value_size == 16 and lib.machine.memory_size == 15
    assert lib.run_batch("twice", [(n,) for n in range(16)]).values == [(2 * n) % 16 for n in range(16)]
    assert lib.run("twice", 9, mode="soft") == 2
    with pytest.raises(ValueError, match="outside"):
        lib.run("twice", 16)
    lib.save(tmp_path)
    loaded = Library.load(tmp_path)
    assert loaded.value_size == 16 and loaded.run("twice", 7) == 14 and loaded.fingerprint() == lib.fingerprint()


def test_from_source_refuses_unsupported_code():
    with pytest.raises(CompileError, match="line 2"):
        compile_library("def f(n):\n    return lambda: n\n", value_size=V)
    with pytest.raises(CompileError, match="does not fit"):
        compile_library("def f(n):\n    return n + 300\n", value_size=V)


def test_from_source_never_executes_the_source(tmp_path):
    marker = tmp_path / "executed"
    source = f"open({str(marker)!r}, 'w')\n\ndef f(n):\n    return n\n"
    with pytest.raises(CompileError):
        compile_library(source, value_size=V)
    assert not marker.exists()


def test_library_construction_checks(std):
    with pytest.raises(ValueError, match="at least one program"):
        Library([])
    with pytest.raises(ValueError, match="duplicate"):
        Library([std["gcd"], std["gcd"]])
    with pytest.raises(ValueError, match="calls mul_small"):
        Library([std["factorial_tape"]])
    with pytest.raises(ValueError, match="memory_size"):
        Library([std["gcd"]], memory_size=V + 1)


def test_calls_of_different_programs_run_as_one_machine(std):
    calls = [("gcd", (84, 36)), ("insertion_sort", ([5, 3, 9, 1],)), ("fib_recursive", (200,)),
             ("max_list", ([4, 250, 7],)), ("gcd", (7, 5)), ("long_add", (99, 1)), ("max_number", ([],))]
    together = std.run_calls(calls, max_steps=500)
    alone = [std.run_batch(name, [args], max_steps=500) for name, args in calls]
    assert together.values == [r.values[0] for r in alone] == [12, [1, 3, 5, 9], None, 250, 1, 100, None]
    assert together.status[-1] == "bad_result"
    assert together.status == [r.status[0] for r in alone] and together.status[2] == "stack_overflow"
    assert together.steps == [r.steps[0] for r in alone]
