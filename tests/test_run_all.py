"""run_all.py: notebook selection, argument checks before any notebook starts, where figures go."""

from __future__ import annotations

import importlib.util
import json
import re
import time

import pytest

from xanes_utils.profiles import FIGURES_DIR, ROOT, figures_dir

spec = importlib.util.spec_from_file_location("run_all", ROOT / "run_all.py")
run_all = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_all)

NOTEBOOKS = sorted(run_all.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_are_discovered_by_their_numbered_names(tmp_path):
    assert [nb.name[:2] for nb in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))]
    fake = [tmp_path / n for n in ("00_a.ipynb", "03_b.ipynb", "07_real_materials.ipynb")]
    assert run_all.select(fake, ["7"]) == [fake[2]]


@pytest.mark.parametrize("only, numbers", [(["3"], ["03"]), (["03", "1"], ["01", "03"]),
                                           (["04_neuron_responses"], ["04"]), (["05_homology.ipynb"], ["05"]),
                                           (None, None)])
def test_only_accepts_numbers_and_names(only, numbers):
    picked = [nb.name[:2] for nb in run_all.select(NOTEBOOKS, only)]
    assert picked == (numbers or [nb.name[:2] for nb in NOTEBOOKS])


@pytest.mark.parametrize("only", [["99"], ["04_wrong_name"], ["x"]])
def test_only_rejects_unknown_notebooks(only):
    with pytest.raises(ValueError, match=f"no notebook '{only[0]}'.*available: 00_"):
        run_all.select(NOTEBOOKS, only)


@pytest.mark.parametrize("argv, message", [(["--only", "99"], "no notebook '99'"),
                                           (["--jobs", "0"], "--jobs must be at least 1"),
                                           (["--data", "/nonexistent/dataset"], "/nonexistent/dataset: no such")])
def test_bad_arguments_fail_at_once_with_exit_code_2(argv, message, capsys):
    start = time.time()
    with pytest.raises(SystemExit) as exc:
        run_all.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err and time.time() - start < 2


def test_only_the_default_run_writes_the_committed_gallery(tmp_path):
    assert figures_dir("default") == FIGURES_DIR
    for other in (figures_dir("quick"), figures_dir("paper"), figures_dir("default", tmp_path / "mine.json")):
        assert other.parent == FIGURES_DIR and other != FIGURES_DIR
    assert figures_dir("default", tmp_path / "mine.json").name.startswith("default-mine-")


def test_every_notebook_figure_goes_to_its_runs_directory():
    for nb in NOTEBOOKS:
        source = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        calls = re.findall(r"save_figure\(([^)]*)\)", source)
        assert calls and all(c.rstrip().endswith(", FIGURES") for c in calls), nb.name
        assert "FIGURES = plotting.figures_dir(profile, data)" in source, nb.name


def test_jobs_reach_the_notebooks_that_declare_them(monkeypatch):
    import papermill

    seen = {}
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)  # main sets it for the kernels
    monkeypatch.setattr(papermill, "execute_notebook", lambda nb, out, parameters, **kw: seen.update(
        {nb.split("/")[-1][:2]: parameters}))
    assert run_all.main(["--only", "1", "2", "3", "5", "7", "--jobs", "3"]) == 0
    assert seen["01"] == {"profile": "default", "retrain": False, "data": None}
    assert seen["02"]["jobs"] == seen["03"]["jobs"] == seen["05"]["jobs"] == seen["07"]["jobs"] == 3
