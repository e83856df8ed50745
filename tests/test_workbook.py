"""The workbook runner executes numbered notebooks with papermill and passes parameters."""

import nbformat

from liftcam_utils import workbook


def _notebook(path, source_lines):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n_images = 2")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source_lines)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_runs_numbered_notebooks_in_order_with_overrides(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_second.ipynb", "print('second', n_images * 10)")
    _notebook(notebooks / "00_first.ipynb", "print('first', n_images)")
    _notebook(notebooks / "scratch.ipynb", "raise RuntimeError('unnumbered notebooks are not run')")
    assert workbook.main([str(notebooks), str(tmp_path / "out"), "-p", "n_images", "7"]) == 0
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["00_first.ipynb", "01_second.ipynb"]
    executed = nbformat.read(tmp_path / "out" / "01_second.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "second 70" in printed
