"""The README's tour runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_tour_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the tour saves a library under out/
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    lib, mine = namespace["lib"], namespace["mine"]
    # the values the tour's comments promise
    assert lib.run("gcd", 12, 18) == 6 and lib.run("gcd", 12, 18, mode="soft") == 6
    assert lib.run("insertion_sort", [5, 3, 9]) == [3, 5, 9]
    assert mine.run("triangle", 10) == 55
    assert namespace["value"] == 8 and len(namespace["trace"].steps) > 0
    assert (tmp_path / "out" / "stdlib" / "library.json").is_file()
