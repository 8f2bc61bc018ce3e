"""experiments/generate_configs.py: the committed configs are the table's output."""

from __future__ import annotations

import shutil

import pytest
import yaml

from experiments import generate_configs as gen
from experiments.table import BASELINE_NAME, EXPERIMENTS, GROUPS, PAPER, STUDY, dataset_path, datasets


def test_committed_files_match_the_table():
    assert gen.stale() == [], "run: python experiments/generate_configs.py"
    assert gen.main(["--check"]) == 0


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The generator pointed at a copy of the tree, so the test may damage it."""
    shutil.copytree(gen.CONFIG_DIR, tmp_path / "configs" / "experiments")
    (tmp_path / "docs").mkdir()
    shutil.copy(gen.DOC, tmp_path / "docs" / gen.DOC.name)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "CONFIG_DIR", tmp_path / "configs" / "experiments")
    monkeypatch.setattr(gen, "DOC", tmp_path / "docs" / gen.DOC.name)
    return tmp_path


def test_check_reports_edits_strays_and_missing_files(scratch, capsys):
    cfg_dir = scratch / "configs" / "experiments"
    (cfg_dir / "exp05_a.yaml").write_text((cfg_dir / "exp05_a.yaml").read_text() + "lr: 1.0\n")
    (cfg_dir / "exp99.yaml").write_text("defaults: [baseline, _self_]\n")
    (cfg_dir / "exp10e.yaml").unlink()
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "exp05_a.yaml" in err and "exp99.yaml" in err and "exp10e.yaml" in err

    gen.main([])  # regenerating repairs the edited and missing files; the stray stays flagged
    assert [p for p in gen.stale() if "exp99" not in p] == []


def test_doc_block_is_replaced_in_place(scratch):
    doc = scratch / "docs" / gen.DOC.name
    text = doc.read_text()
    doc.write_text(text.replace("| `exp01a` |", "| `exp01a-edited` |"))
    assert any(p.endswith(gen.DOC.name) for p in gen.stale())
    gen.main([])
    assert doc.read_text() == text


def test_every_config_names_itself_and_its_run_command():
    for exp in EXPERIMENTS:
        text = (gen.CONFIG_DIR / f"{exp.name}.yaml").read_text()
        assert f"python pretrain_jax.py --config-name {exp.name}" in text
        assert f"python experiments/run_experiment.py {exp.name}" in text
        body = yaml.safe_load(text)
        expected_parent = "/cfg_pretrain" if exp.name == BASELINE_NAME or exp.standalone else BASELINE_NAME
        assert body["defaults"] == [expected_parent, "_self_"]
        assert (body["experiment_name"], body["experiment_group"]) == (exp.name, exp.group)


def test_study_size_and_groups():
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    assert len(STUDY) == 68 and STUDY[0].name == BASELINE_NAME  # the baseline and its 67 variations
    assert EXPERIMENTS == STUDY + PAPER and all(e.standalone and e.group == "paper" for e in PAPER)
    assert set(GROUPS) == {
        "baseline",
        "exp01",
        "exp02a",
        "exp02b",
        "exp03",
        "exp04a",
        "exp04b",
        "exp05",
        "exp06",
        "exp07",
        "exp08",
        "exp09",
        "exp10",
        "contrib01",
        "contrib02",
        "paper",
    }


def test_docs_show_how_to_build_every_dataset():
    doc = gen.DOC.read_text()
    used = {p for e in STUDY for p in e.changes.get("data_paths", [])}
    assert used >= {dataset_path(100, 1000), dataset_path(1000, 10)}
    for puzzles, aug in datasets():
        path = dataset_path(puzzles, aug)
        assert f"--output-dir {path} --subsample-size {puzzles} --num-aug {aug}" in doc
    assert used <= {dataset_path(n, k) for n, k in datasets()}


def test_docs_list_the_paper_recipes_with_their_reported_accuracy():
    doc = gen.DOC.read_text()
    for exp in PAPER:
        reported = next(n for n in exp.notes if "reports: " in n).split("reports: ", 1)[1]
        assert f"| `{exp.name}` | {exp.description} | {reported} |" in doc
