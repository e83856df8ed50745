"""The workbook runner executes numbered notebooks with papermill, passes parameters, and
collects the tables the notebooks save into REPORT.md."""

import nbformat
import pandas as pd

from liftcam_utils import report, workbook


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
              "import pandas as pd\nfrom liftcam_utils.report import save_table\n"
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
