"""The workbook runner executes numbered notebooks with papermill, passes parameters, and
collects the tables the notebooks save into REPORT.md."""

from pathlib import Path

import nbformat
import pandas as pd
import pytest

from liftcam_utils.app import workbook
from liftcam_utils.evaluation import report


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n_images = 2\noutput_dir = 'nowhere'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runs_numbered_notebooks_in_order_with_overrides(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_second.ipynb",
              "import pandas as pd\nfrom liftcam_utils.evaluation.report import save_table\n"
              "print('second', n_images * 10)\n"
              "save_table(pd.DataFrame({'AD': [1.25]}, index=['liftcam']), '01_table', output_dir)")
    _notebook(notebooks / "00_first.ipynb", "print('first', n_images)")
    _notebook(notebooks / "scratch.ipynb", "raise RuntimeError('unnumbered notebooks are not run')")
    out = tmp_path / "out"
    assert workbook.main([str(notebooks), str(out), "-p", "n_images", "7"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00_first.ipynb", "01_second.ipynb", "01_table.csv", "REPORT.md"]
    executed = nbformat.read(out / "01_second.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "second 70" in printed
    text = (out / "REPORT.md").read_text()
    assert "## 01_second" in text and "| liftcam | 1.250 |" in text


def test_markdown_table():
    frame = pd.DataFrame({"IC": [25.2, 24.0], "n": [3, 4]}, index=pd.Index(["liftcam", "gradcam"], name="method"))
    assert report.markdown_table(frame, digits=1).splitlines() == [
        "| method | IC | n |", "|---|---|---|", "| liftcam | 25.2 | 3 |", "| gradcam | 24.0 | 4 |"]


def test_quick_copies_inject_the_small_parameters_and_keep_outputs(tmp_path):
    written = workbook.write_quick_copies(Path("notebooks"), tmp_path)
    assert [p.name for p in written] == [p.name for p in workbook.notebooks_in(Path("notebooks"))]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and "output_dir" in injected[0].source
        namespace = {}
        exec(injected[0].source, namespace)
        for name, value in workbook.QUICK_PARAMETERS.get(path.stem, {}).items():
            assert namespace[name] == value
        committed = nbformat.read(Path("notebooks") / path.name, as_version=4)
        assert [c.get("outputs") for c in committed.cells] == [c.get("outputs") for c in nb.cells if c not in injected]


def test_quick_parameters_must_be_declared(tmp_path, monkeypatch):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "02_x.ipynb", "print(n_images)")
    monkeypatch.setitem(workbook.QUICK_PARAMETERS, "02_x", {"n_grids": 3})
    with pytest.raises(ValueError, match="declares no parameter"):
        workbook.write_quick_copies(notebooks, tmp_path / "quick")


def test_report_opens_with_the_verdicts(tmp_path):
    from liftcam_utils.evaluation import verdicts

    rows = pd.DataFrame({"image": [f"i{k}" for k in range(8)] * 2, "method": ["a"] * 8 + ["b"] * 8,
                         "AD": [float(k) for k in range(8)] + [float(k) + 5 for k in range(8)]})
    claim = verdicts.Claim("a lowers AD", "Table 3", "AD", "a", ("b",), False)
    table = verdicts.verdict_table({"photos": rows}, [claim])
    report.save_verdicts(table, "04_faithfulness", tmp_path)
    report.save_table(pd.DataFrame({"AD": [1.0]}, index=["a"]), "04_faithfulness_table3", tmp_path)
    text = report.build_report(tmp_path).read_text()
    verdict_at, table_at = text.index("## Verdicts"), text.index("04_faithfulness_table3")
    assert verdict_at < table_at
    assert "| photos | a lowers AD | Table 3 | 3.5 vs 8.5 (b) | -5 [-5, -5] | 8 | 0.0078 | holds |" in text
