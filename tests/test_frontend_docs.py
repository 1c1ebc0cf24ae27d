"""docs/optimizers.md is generated from the registry and must be up to date."""

from __future__ import annotations

import pathlib

import polaris.optimizers as O
from polaris import docgen

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_optimizers_md_is_current():
    path = ROOT / "docs" / "optimizers.md"
    assert path.exists(), "docs/optimizers.md is missing: run `python -m polaris.docgen`"
    assert path.read_text() == docgen.render(), (
        "docs/optimizers.md is stale: run `python -m polaris.docgen`"
    )


def test_every_registered_optimizer_is_documented():
    text = (ROOT / "docs" / "optimizers.md").read_text()
    missing = [n for n in O.names() if f"## {n}\n" not in text or f"[`{n}`]" not in text]
    assert not missing, f"not in docs/optimizers.md: {missing}; run `python -m polaris.docgen`"


def test_every_optimizer_docstring_has_math_and_reference():
    for spec in O.specs():
        doc = spec.builder.__doc__ or ""
        assert ".. math::" in doc, f"{spec.name}: docstring needs a `.. math::` update rule"
        assert "References:" in doc, f"{spec.name}: docstring needs References"


def test_divergences_doc_mentions_every_fixed_bug():
    text = (ROOT / "docs" / "divergences.md").read_text()
    for word in ["radam", "belief", "add_noise", "noisy_sgd", "accumulate_gradients",
                 "eps_root", "yogi", "learning_rate", "state order"]:
        assert word in text, f"docs/divergences.md does not mention {word!r}"


def test_check_mode(tmp_path):
    out = tmp_path / "o.md"
    assert docgen.main(["--out", str(out), "--check"]) == 1
    assert docgen.main(["--out", str(out)]) == 0
    assert docgen.main(["--out", str(out), "--check"]) == 0
