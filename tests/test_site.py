"""The course site (``python -m liftcam_utils.app.site``), built from two small notebooks made here, one committed
notebook and the course documents: its index, figures, widgets, links and formulas, its pages in headless Chromium
(every image decoded and described, no request off the machine, no console error), its refusal of bad input, and
the atomic replacement of the site folder."""

from __future__ import annotations

import base64
import io
import re
import shutil

import nbformat
import pytest
from browser_servers import REPO, Watched
from bs4 import BeautifulSoup
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from liftcam_utils.app.site import SITE_DOCS, SiteError, build_site, learning_goals, main, site_pages
from liftcam_utils.files import write_directory_atomically

COMMITTED = "00_quickstart.ipynb"
PROGRESS_TEXT = "images:   0%|          | 0/24 [00:00<?, ?img/s]"


def picture(format_: str, size: tuple[int, int]) -> str:
    """A small image file of ``format_`` (PIL's name), base64-encoded as a notebook stores it."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format=format_)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def widget(model_id: str, text: str) -> dict:
    return new_output("display_data", data={"application/vnd.jupyter.widget-view+json":
                                            {"model_id": model_id, "version_major": 2, "version_minor": 0},
                                            "text/plain": text})


def small_notebooks(folder) -> None:
    """Two executed notebooks: figures (PNG, JPEG), an interactive widget, a progress bar (tqdm's), formulas and
    links to a page, a document, a file outside the site and the web."""
    first = new_notebook(cells=[
        new_markdown_cell("# 10 · First steps\n\nSee [the second](11_second.ipynb#a-section), "
                          "[the course](../docs/course.md), [the readme](../README.md) and "
                          "[the paper](https://example.org/paper).\n\n**What you will learn**\n"
                          "* how $\\alpha_k$ weights map $k$;\n* how to read a figure.\n\n**What you need**: nothing."),
        new_markdown_cell("## A *red* figure"),
        new_code_cell("show()", outputs=[new_output("display_data", data={"image/png": picture("PNG", (40, 30)),
                                                                            "text/plain": "<Figure>"})]),
        new_code_cell("explorer()", outputs=[widget("view", "VBox(children=(Dropdown(),))")]),
        new_code_cell("print('done')", outputs=[new_output("stream", name="stdout", text="done\n")]),
    ])
    second = new_notebook(cells=[
        new_markdown_cell("# 11 · Second\n\nNo list of goals here."),
        new_markdown_cell("## A section\n\n$$\\sum_k \\alpha_k A_k$$\n\n"
                          "\\begin{equation}e = s(u(L)) \\circ x\\end{equation}"),
        new_code_cell("evaluate()", outputs=[widget("bar", PROGRESS_TEXT),
                                             new_output("execute_result", execution_count=1,
                                                        data={"image/jpeg": picture("JPEG", (24, 16))})]),
    ])
    nbformat.write(first, folder / "10_first.ipynb")
    nbformat.write(second, folder / "11_second.ipynb")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A workbook folder: notebooks/ (one committed notebook and the two small ones) and docs/ (the course
    documents)."""
    root = tmp_path_factory.mktemp("workbook")
    (root / "notebooks").mkdir()
    (root / "docs").mkdir()
    shutil.copy(REPO / "notebooks" / COMMITTED, root / "notebooks")
    small_notebooks(root / "notebooks")
    for name in SITE_DOCS:
        shutil.copy(REPO / "docs" / name, root / "docs")
    return root


@pytest.fixture(scope="module")
def site(sources):
    out = sources / "build" / "site"
    build_site(sources / "notebooks", sources / "docs", out)
    return out


def soup(site, name: str) -> BeautifulSoup:
    return BeautifulSoup((site / name).read_text(encoding="utf-8"), "html.parser")


def test_the_site_has_a_page_per_notebook_and_document_and_an_index(site, sources):
    notebooks = sorted(p.stem for p in (sources / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in site.iterdir()) == sorted(
        ["index.html", *(f"{stem}.html" for stem in notebooks), *(name.replace(".md", ".html") for name in SITE_DOCS)])


def test_the_index_lists_the_notebooks_in_order_with_what_each_teaches(site, sources):
    index = soup(site, "index.html")
    entries = index.find_all("h3")
    paths = sorted((sources / "notebooks").glob("*.ipynb"))
    assert [entry.a["href"] for entry in entries] == [f"{path.stem}.html" for path in paths]
    for entry, path in zip(entries, paths, strict=True):
        notebook = nbformat.read(path, as_version=4)
        title = re.match(r"# (.+)", notebook.cells[0].source)[1]
        assert entry.get_text(strip=True).rstrip("¶") == title
        goals = learning_goals(notebook)
        listed = entry.find_next_sibling(["ul", "h3", "h2"])
        if goals:  # one list item per bullet of the notebook's "What you will learn"
            assert listed.name == "ul"
            assert len(listed.find_all("li")) == len(re.findall(r"^[*-] ", goals, flags=re.MULTILINE))
        else:
            assert listed.name != "ul"
    assert "how to read a figure." in index.get_text()
    heading = next(h2 for h2 in index.find_all("h2") if "documents" in h2.get_text())
    documents = [a["href"] for a in heading.find_next("ul").find_all("a")]
    assert documents == [name.replace(".md", ".html") for name in SITE_DOCS]


def test_figures_have_alt_text_and_widgets_are_replaced(site):
    first, second = soup(site, "10_first.html"), soup(site, "11_second.html")
    (figure,) = first.find_all("img")
    assert figure["alt"] == "Figure 1 of “10 · First steps”, under “A red figure”"
    assert figure["src"].startswith("data:image/png;base64,")
    assert "needs a live kernel" in first.get_text() and "VBox(children" not in first.get_text()
    assert "done" in first.get_text()
    (figure,) = second.find_all("img")
    assert figure["alt"] == "Figure 1 of “11 · Second”, under “A section”"
    assert figure["src"].startswith("data:image/jpeg;base64,")
    assert PROGRESS_TEXT not in second.get_text() and "live kernel" not in second.get_text()


def test_links_point_to_pages_and_formulas_are_mathml(site):
    first = soup(site, "10_first.html")
    links = {a.get_text(): a["href"] for a in first.select(".jp-RenderedMarkdown a") if a.get_text() != "¶"}
    assert links == {"the second": "11_second.html#a-section", "the course": "course.html",
                     "the paper": "https://example.org/paper"}
    assert "the readme" in first.get_text(), "a link outside the site keeps its text"
    assert [m["display"] for m in first.find_all("math")] == ["inline", "inline"]
    second = soup(site, "11_second.html")
    assert [m["display"] for m in second.find_all("math")] == ["block", "block"]
    assert "$" not in second.select_one(".jp-RenderedMarkdown").get_text()
    navigation = [a["href"] for a in second.find("nav").find_all("a")]
    assert navigation == ["index.html", "10_first.html", "course.html"]


@pytest.mark.e2e
def test_every_page_works_offline_in_the_browser(browser, site):
    """Each page loads from its file; every image decodes, has a size and alt text; every relative link reaches a
    page of the site; nothing is requested from another machine; the console shows no error."""
    pages = sorted(site.glob("*.html"))
    watched = Watched(browser)
    images = 0
    with watched.screenshot_on_failure("site.png"):
        for page in pages:
            watched.page.goto(page.as_uri(), wait_until="load")
            shown = watched.page.evaluate("""async () => Promise.all(Array.from(document.images).map(async image => {
                try { await image.decode(); } catch (error) { return [0, image.getAttribute('alt')]; }
                return [image.naturalWidth, image.getAttribute('alt')]; }))""")
            assert all(width > 0 for width, _ in shown), f"{page.name}: an image did not decode"
            assert all(alt and alt.strip() for _, alt in shown), f"{page.name}: an image has no alt text"
            images += len(shown)
            targets = watched.page.evaluate("() => Array.from(document.querySelectorAll('a[href]'),"
                                            " a => a.getAttribute('href'))")
            local = {target.split("#")[0] for target in targets if not re.match(r"\w+:|#", target)}
            assert all((site / target).is_file() for target in local), f"{page.name}: a link to a missing page"
    assert images >= 4  # the two small notebooks' figures and the committed notebook's
    assert watched.problems == []


def test_bad_input_is_refused_with_a_clear_message(sources, tmp_path, capsys):
    site = tmp_path / "site"
    with pytest.raises(SystemExit) as exit_:
        main(["--notebooks", str(tmp_path / "missing"), "--out", str(site)])
    assert exit_.value.code == 2
    assert f"the notebooks folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert not site.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiteError, match="no notebooks"):
        site_pages(tmp_path / "empty", sources / "docs")
    with pytest.raises(SiteError, match=r"docs/course\.md is missing"):
        site_pages(sources / "notebooks", tmp_path / "docs")
    unrun = tmp_path / "unrun"
    unrun.mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("1 + 1")]), unrun / "00_unrun.ipynb")
    with pytest.raises(SiteError, match="00_unrun.ipynb has no outputs: .* run it first"):
        site_pages(unrun, sources / "docs")
    (unrun / "00_unrun.ipynb").write_text("not a notebook")
    with pytest.raises(SiteError, match="00_unrun.ipynb is not a Jupyter notebook"):
        site_pages(unrun, sources / "docs")
    broken = new_notebook(cells=[new_markdown_cell("# A title\n\nThe square $x^$."), new_code_cell(
        "x", outputs=[new_output("stream", name="stdout", text="1\n")])])
    nbformat.write(broken, unrun / "00_unrun.ipynb")
    with pytest.raises(SiteError, match=r"00_unrun.ipynb: the formula 'x\^' cannot be written as MathML"):
        build_site(unrun, sources / "docs", site)
    assert not site.exists()


def test_the_site_folder_is_replaced_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "site"
    write_directory_atomically(folder, lambda new: (new / "old.html").write_text("old"))

    def half_then_fail(new):
        (new / "new.html").write_text("new")
        raise RuntimeError("the build failed")

    with pytest.raises(RuntimeError, match="the build failed"):
        write_directory_atomically(folder, half_then_fail)
    assert [p.name for p in folder.iterdir()] == ["old.html"]
    write_directory_atomically(folder, lambda new: (new / "new.html").write_text("new"))
    assert [p.name for p in folder.iterdir()] == ["new.html"]
    assert [p.name for p in tmp_path.iterdir()] == ["site"], "no temporary folder is left behind"
