"""The workbook runner executes numbered notebooks with papermill, passes parameters, and
collects the tables the notebooks save into REPORT.md."""

import ast
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from liftcam_utils.app import workbook
from liftcam_utils.evaluation import report


def _notebook(path, source, parameters="n_images = 2\noutput_dir = 'nowhere'"):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
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
    (tmp_path / "04_faithfulness_bars.png").write_bytes(b"")
    text = report.build_report(tmp_path).read_text()
    verdict_at, table_at = text.index("## Verdicts"), text.index("04_faithfulness_table3")
    assert verdict_at < table_at
    # figures are not committed (.gitignore): named, never linked, so the committed report has no broken link
    assert "`04_faithfulness_bars.png`, written beside this report by `make workbook`" in text
    assert "](04_faithfulness_bars.png)" not in text
    # 8 units all 5 points better: the exact one-sided sign-flip p is 2^-8; the margin is the practical 1 point of AD
    assert ("| photos | a lowers AD | Table 3 | 3.5 vs 8.5 (b) | -5 [-5, -5] |  | 1 (practical) | 8 (8) | 8/8 | 0.0039 "
            "| holds |" in text)
    assert "| paper | 1 | 0 | 0 | 0 | 0 |" in text  # the tally


def _injected(tmp_path, parameters):
    """The parameters cell papermill writes for ``parameters`` into a tiny notebook (no kernel runs)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    path = tmp_path / "tiny.ipynb"
    _notebook(path, "print(n)", parameters="n = 1")
    nb = parameterize_notebook(load_notebook_node(str(path)), parameters)
    cells = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0].source


def test_an_injection_exploit_arrives_as_an_inert_list_of_strings(tmp_path):
    marker = tmp_path / "pwned"
    text = '("\\"+str(__import__(\\"os\\").system(\\"touch ' + str(marker) + '\\"))+\\"",)'
    payload = ast.literal_eval(text)[0]
    assert payload == '"+str(__import__("os").system("touch ' + str(marker) + '"))+"'
    # the test sees the exploit: the tuple itself, as papermill writes it, runs the shell command
    exec(_injected(tmp_path, {"n": ast.literal_eval(text)}), {})
    assert marker.exists()
    marker.unlink()
    value = workbook.parse_parameter("n", text)
    assert value == [payload]
    namespace = {}
    exec(_injected(tmp_path, {"n": value}), namespace)
    assert namespace["n"] == [payload] and not marker.exists()


ADVERSARIAL = ['"', "'", '\\', '\\"', '\\\\"', '"""', "'''", '"; import os; os.system("true"); "', "a\nb = 1\n#",
               "\r\x00\x0b\x0c\x1b", "\u2028\u2029\x85", "é \U0001f600 \\u0041 \\N{BULLET}", "\udcff", "{x}", "%s",
               "\\x41", '" + __import__("os").getcwd() + "', "\t#", "\\\n"]


@pytest.mark.parametrize("payload", ADVERSARIAL)
def test_a_string_cannot_break_out_of_the_injected_cell(tmp_path, payload):
    """papermill escapes a str (unicode_escape, then every double quote), so the injected assignment reads back
    (ast.literal_eval, which runs no code) as exactly the string, alone or inside lists and dict keys and values."""
    from papermill.translators import PythonTranslator

    assert ast.literal_eval(PythonTranslator.translate(payload)) == payload
    for value in (payload, [payload, {"k" + payload: payload}]):
        assert workbook.injectable("n", value) == value
        source = _injected(tmp_path, {"n": value})
        assigns = [node for node in ast.parse(source).body if isinstance(node, ast.Assign)]
        assert [a.targets[0].id for a in assigns] == ["n"]
        assert ast.literal_eval(assigns[0].value) == value
    try:
        ast.literal_eval(payload)
    except (ValueError, SyntaxError):  # no Python literal: the command line passes it on as itself
        assert workbook.parse_parameter("n", payload) == payload


@pytest.mark.parametrize(("text", "value"), [
    ("(1, 10, 100)", [1, 10, 100]), ("{1, 2}", [1, 2]), ("{3, 1, 2}", [1, 2, 3]),
    ("((1, 2), {'a': (3,)})", [[1, 2], {"a": [3]}]), ("{(2, 1), (0, 5)}", [[0, 5], [2, 1]]),
    ("photos", "photos"), ("cuda", "cuda"), ("'1'", "1"), ("7", 7), ("-2.5", -2.5),
    ("True", True), ("None", None), ("[1, 2", "[1, 2"), ("{'photos': 3, 'scenes': 12}", {"photos": 3, "scenes": 12}),
])
def test_parameters_are_json_like(tmp_path, text, value):
    parsed = workbook.parse_parameter("n", text)
    assert parsed == value and type(parsed) is type(value)
    namespace = {}
    exec(_injected(tmp_path, {"n": parsed}), namespace)
    assert namespace["n"] == value and type(namespace["n"]) is type(value)


@pytest.mark.parametrize(("text", "why"), [
    ("b'x'", "of type bytes"), ("1j", "of type complex"), ("(1, 1j)", "of type complex"), ("...", "of type ellipsis"),
    ("{1: 2}", "key 1"), ("{1, 'a'}", "cannot be sorted"), ("1e999", "not a finite float"), ("{[1]: 2}", "unhashable"),
])
def test_other_literals_are_refused_naming_the_parameter_the_value_and_the_valid_types(text, why):
    with pytest.raises(workbook.ParameterError) as refused:
        workbook.parse_parameter("n_permutations", text)
    message = str(refused.value)
    assert "'n_permutations'" in message and repr(text) in message and why in message
    if why != "unhashable":
        assert workbook.VALID_TYPES in message


def _two_notebooks(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "00_a.ipynb", "raise RuntimeError('must not run')")
    _notebook(notebooks / "01_b.ipynb", "raise RuntimeError('must not run')",
              parameters="n_permutations = 4\ndevice = 'cpu'")
    return notebooks


def test_an_unknown_parameter_is_refused_before_any_notebook_runs(tmp_path, capsys):
    notebooks, out = _two_notebooks(tmp_path), tmp_path / "out"
    valid = "valid names: device, n_images, n_permutations, output_dir"
    with pytest.raises(workbook.ParameterError, match=f"n_imagse; {valid}"):
        workbook.run(notebooks, out, {"n_images": 3, "n_imagse": 3})
    assert not out.exists()
    with pytest.raises(SystemExit) as exited:
        workbook.main([str(notebooks), str(out), "-p", "n_permutation", "10"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"n_permutation; {valid}" in err and "Traceback" not in err
    assert not out.exists()


def test_the_command_line_refuses_a_bad_value_or_a_parameter_it_would_ignore(tmp_path, capsys):
    notebooks, out = _two_notebooks(tmp_path), tmp_path / "out"
    for argv in ([str(notebooks), str(out), "-p", "n_permutations", "b'x'"],
                 ["--quick-copies", str(tmp_path / "quick"), "-p", "n_images", "3"],
                 ["--in-place", str(notebooks / "00_a.ipynb"), "-p", "n_images", "3"]):
        with pytest.raises(SystemExit) as exited:
            workbook.main(argv)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "parameter 'n_permutations': the value \"b'x'\" is of type bytes" in err and "-p applies to" in err
    assert not out.exists() and not (tmp_path / "quick").exists()


def test_report_leaves_out_a_verdict_file_of_an_older_procedure(tmp_path):
    pd.DataFrame({"setup": ["photos"], "claim": ["a lowers AD"], "verdict": ["holds"]}).to_csv(
        tmp_path / "04_faithfulness_verdicts.csv", index=False)
    with pytest.warns(UserWarning, match="written by an older version"):
        text = report.build_report(tmp_path).read_text()
    assert "## Verdicts" not in text
