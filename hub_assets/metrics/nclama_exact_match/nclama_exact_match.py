"""NCLlama exact match: the evaluation rule of the NCLlama project as an `evaluate` metric.

Self-contained on purpose: `evaluate.load` loads this file by path (offline, no Hub), so it cannot import the
`modeling_nclama` package. It implements the same rule as `modeling_nclama.toolchain.evaluation.exact_match`.
"""
import datasets
import evaluate

_CITATION = """\
@misc{saldyt2024algorithmic,
  title={Algorithmic Language Models with Neurally Compiled Libraries},
  author={Lucas Saldyt and Subbarao Kambhampati},
  year={2024},
  eprint={2407.04899},
  archivePrefix={arXiv},
}
"""

_DESCRIPTION = """\
The fraction of predictions whose answer equals the reference's answer. A text's answer is the text up to its first
newline or end-of-sequence marker (<|end_of_text|>, <|eot_id|>, </s>), stripped of surrounding whitespace, so a
generation such as " 85679\\nWhat is" or "85679<|end_of_text|>" matches the reference "85679".
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): generated texts (the new tokens after the prompt, decoded).
    references (list of str): the right answers.
Returns:
    exact_match (float): the fraction of predictions whose answer equals the reference's, in [0, 1].
Examples:
    >>> metric = evaluate.load("hub_assets/metrics/nclama_exact_match")
    >>> metric.compute(predictions=[" 85679\\n", "[1, 3, 5, 9]", "7"], references=["85679", "[1, 3, 5, 9]", "8"])
    {'exact_match': 0.6666666666666666}
"""

END_MARKERS = ("\n", "<|end_of_text|>", "<|eot_id|>", "</s>")


def answer_text(text):
    """The answer part of a text: up to the first newline or end-of-sequence marker, stripped."""
    for marker in END_MARKERS:
        text = text.split(marker, 1)[0]
    return text.strip()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NclamaExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2407.04899"],
        )

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("no predictions to score")
        right = sum(answer_text(p) == answer_text(r) for p, r in zip(predictions, references))
        return {"exact_match": right / len(references)}
