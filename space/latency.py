"""How long the running Space takes to answer, end to end through its API (``make demo`` in another shell first):

    .venv/bin/python space/latency.py                      # against http://127.0.0.1:7860/
    .venv/bin/python space/latency.py --url URL --repeats 5

Asks the Generate endpoint for a 64-item sort and a sum of two 40-digit numbers (random, seeded), once to warm up,
then ``--repeats`` times each; prints each answer's median seconds and whether the answer is right. A measurement,
not a test: the machine's load changes it (BENCHMARKS.md records it with this command).
"""
import argparse
import random
import statistics
import time


def prompts(seed: int) -> dict[str, tuple[str, str]]:
    """label -> (prompt, the right answer), in the shipped model's training wordings."""
    rng = random.Random(seed)
    items = [rng.randrange(1000) for _ in range(64)]
    a, b = rng.randrange(10**39, 10**40), rng.randrange(10**39, 10**40)
    return {
        "sort, 64 items": (f"Sort the list [{', '.join(map(str, items))}].", f"[{', '.join(map(str, sorted(items)))}]"),
        "sum, 40 digits": (f"What is {a} plus {b}?", str(a + b)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    args = parser.parse_args()
    from gradio_client import Client

    client = Client(args.url, verbose=False)
    print(f"| prompt | median seconds (of {args.repeats}, after one warm-up) | answer right |")
    print("|---|---:|---|")
    for label, (prompt, right) in prompts(args.seed).items():
        client.predict(prompt, args.max_new_tokens, api_name="/generate")  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            answer, _ = client.predict(prompt, args.max_new_tokens, api_name="/generate")
            times.append(time.perf_counter() - start)
        print(f"| {label} | {statistics.median(times):.2f} | {'yes' if answer.strip().startswith(right) else 'no: ' + answer[:60]} |")


if __name__ == "__main__":
    main()
