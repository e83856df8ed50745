"""The course site: the executed notebooks and the course documents as static HTML pages that work offline.

    python -m liftcam_utils.app.site [--notebooks DIR] [--docs DIR] [--out DIR]

Every notebook of ``--notebooks`` (default ``notebooks/``), in the order of its file name, becomes one page, with its
code, its outputs and its figures as they were committed (nothing is executed); ``course.md`` and ``statistics.md``
of ``--docs`` (default ``docs/``) become pages too; ``index.html`` lists the notebooks with their titles and what
each teaches (the "What you will learn" lines of its first cell), then the documents. Each page links to the index
and to the pages before and after it.

The pages load nothing from anywhere: nbconvert's JupyterLab template inlines its styles and figures (data URIs),
and the scripts it would fetch from CDNs (require.js, MathJax, Mermaid, the widget renderer) are left out. Formulas
(``$...$``, ``$$...$$``) are written as MathML, which browsers render themselves. Every figure gets alt text: its
number in the notebook and the heading of its section. A widget needs a live kernel: an interactive one is replaced
by a note saying so, a progress bar is left out. Links between the notebooks and the documents point to their pages;
a relative link to a file outside the site keeps its text only.

The site is built in a temporary folder beside ``--out`` (default ``build/site/``), which then takes its place.
"""

from __future__ import annotations

import argparse
import base64
import copy
import html
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
from jinja2 import DictLoader, pass_context
from latex2mathml.converter import convert
from nbconvert import HTMLExporter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from nbformat.reader import NotJSONError

from ..files import write_directory_atomically

SITE_DOCS = ("course.md", "statistics.md")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
FIGURE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")
# a progress bar's text, as tqdm writes it: "images:  40%|####      | 8/20 [00:03<00:04, 2.5img/s]"
PROGRESS_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+ \[")
WIDGET_NOTE = ('<p class="site-widget"><em>An interactive widget was here: it needs a live kernel. Open this notebook '
               'in JupyterLab and run it to use the widget.</em></p>')

# nbconvert's JupyterLab template without a script from a CDN, with a navigation bar above and below each page
TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block extra_css %}
<style type="text/css">
  nav.site-nav { display: flex; gap: 2em; max-width: 1200px; margin: 0 auto; padding: 0.6em 1em;
                 font-family: var(--jp-ui-font-family); font-size: var(--jp-ui-font-size1); }
  nav.site-nav a { color: var(--jp-content-link-color); }
  .site-widget { color: var(--jp-content-font-color2); }
</style>
{% endblock extra_css %}
{% block body_header %}{{ super() }}{{ resources.site_navigation }}{% endblock body_header %}
{% block body_footer %}{{ resources.site_navigation }}{{ super() }}{% endblock body_footer %}
"""


class SiteError(ValueError):
    """Input the site cannot be built from: a missing folder or document, a file that is no notebook, ..."""


@dataclass(frozen=True)
class Page:
    """One page of the site, made from ``source`` (a notebook or a Markdown document; ``None`` for the index)."""

    name: str  # the page's file in the site, e.g. "00_quickstart.html"
    title: str
    source: Path | None
    notebook: nbformat.NotebookNode  # what it is exported from


def _first_heading(markdown: str) -> str | None:
    match = re.search(r"^#\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return match[1] if match else None


def _first_markdown(notebook) -> str:
    return next((cell.source for cell in notebook.cells if cell.cell_type == "markdown"), "")


def learning_goals(notebook) -> str:
    """The Markdown lines under "**What you will learn**" in the notebook's first Markdown cell (up to the next
    blank line), or "" where it has none."""
    match = re.search(r"^\*\*What you will learn\*\*:?[ \t]*\n((?:[ \t]*\S.*\n?)+)", _first_markdown(notebook),
                      flags=re.MULTILINE)
    return match[1].rstrip() if match else ""


def _plain(markdown: str) -> str:
    """A heading as plain text: no emphasis, code or math markers (a formula keeps its TeX, e.g. SHAP-CAM_P)."""
    return re.sub(r"[*`$\\]", "", markdown).strip()


def _read_notebook(path: Path):
    try:
        notebook = nbformat.read(path, as_version=4)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, NotJSONError) as error:
        raise SiteError(f"{path} is not a Jupyter notebook ({error})") from None
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if code and not any(cell.outputs for cell in code):
        raise SiteError(f"{path} has no outputs: the site shows executed notebooks, run it first (make notebooks)")
    return notebook


def _markdown_page(name: str, title: str, source: Path | None, markdown: str) -> Page:
    """A page made of one Markdown text (a document, the index), exported like a notebook of one Markdown cell."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(markdown)])
    return Page(name, title, source, notebook)


def site_pages(notebook_dir: Path, docs_dir: Path) -> list[Page]:
    """The index, then every notebook of ``notebook_dir`` in the order of its name, then :data:`SITE_DOCS`.

    Raises :class:`SiteError` on a missing folder or document, a folder with no notebook, or a notebook that
    cannot be read or was never executed."""
    if not notebook_dir.is_dir():
        raise SiteError(f"the notebooks folder {notebook_dir} does not exist (or is not a folder): the site is built "
                        "from the workbook's executed notebooks, e.g. --notebooks notebooks")
    paths = sorted(notebook_dir.glob("*.ipynb"))
    if not paths:
        raise SiteError(f"no notebooks (*.ipynb) in {notebook_dir}/")
    notebooks = []
    for path in paths:
        notebook = _read_notebook(path)
        title = _first_heading(_first_markdown(notebook)) or path.stem
        notebooks.append(Page(f"{path.stem}.html", title, path.resolve(), notebook))
    docs = []
    for name in SITE_DOCS:
        path = docs_dir / name
        if not path.is_file():
            raise SiteError(f"{path} is missing: the site shows the course documents {', '.join(SITE_DOCS)} of "
                            f"{docs_dir}/")
        text = path.read_text(encoding="utf-8")
        docs.append(_markdown_page(f"{path.stem}.html", _first_heading(text) or path.stem, path.resolve(), text))
    return [_index(notebooks, docs, notebook_dir), *notebooks, *docs]


def _index(notebooks: list[Page], docs: list[Page], notebook_dir: Path) -> Page:
    """The index page: its links name the sources, relative to ``notebook_dir``, as a notebook's own links do."""

    def link(page: Page) -> str:
        return os.path.relpath(page.source, notebook_dir.resolve()).replace(os.sep, "/")

    lines = ["# LIFT-CAM workbook: the course", "",
             "The notebooks of the workbook for *Towards Better Explanations of Class Activation Mapping* (Jung & Oh, "
             "ICCV 2021), as they were last executed: code, tables, figures and verdicts. To run them, or to use "
             "their widgets, open them in JupyterLab.", "", "## The notebooks", ""]
    for page in notebooks:
        lines += [f"### [{page.title}]({link(page)})", ""]
        goals = learning_goals(page.notebook)
        if goals:
            lines += ["What you will learn:", "", goals, ""]
    lines += ["## The course documents", ""]
    lines += [f"* [{page.title}]({link(page)})" for page in docs]
    return _markdown_page("index.html", "LIFT-CAM workbook: the course", None, "\n".join(lines) + "\n")


def _figure_html(mime: str, data: str, alt: str, metadata: dict) -> str:
    """An ``<img>`` of one figure output, embedded as a data URI, with ``alt`` and the output's width and height."""
    if mime == "image/svg+xml":
        data = base64.b64encode(data.encode("utf-8")).decode("ascii")
    size = "".join(f' {key}="{int(metadata[key])}"' for key in ("width", "height") if key in metadata)
    return f'<img src="data:{mime};base64,{"".join(data.split())}" alt="{html.escape(alt)}"{size}>'


def static_outputs(notebook, title: str):
    """A copy of ``notebook`` made for a static page: each figure output an ``<img>`` with alt text ("Figure n of
    “<title>”, under “<heading of its section>”"), each interactive widget a note, each progress bar left out."""
    notebook = copy.deepcopy(notebook)
    heading, figures = title, 0
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", cell.source, flags=re.MULTILINE)
            heading = _plain(headings[-1]) if headings else heading
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                if PROGRESS_BAR.search(data.get("text/plain", "")):
                    continue
                output.data = {"text/html": WIDGET_NOTE}
            elif any(mime in data for mime in FIGURE_TYPES):
                mime = next(mime for mime in FIGURE_TYPES if mime in data)
                figures += 1
                alt = f"Figure {figures} of “{_plain(title)}”, under “{heading}”"
                output.data = {"text/html": _figure_html(mime, data[mime], alt, output.metadata.get(mime, {}))}
            outputs.append(output)
        cell.outputs = outputs
    notebook.metadata.pop("widgets", None)
    return notebook


class SiteRenderer(IPythonRenderer):
    """nbconvert's Markdown renderer, with formulas as MathML and relative links to a source of the site (resolved
    against the folder of the page's source, ``path``) pointing to its page; ``pages``: source -> page."""

    def __init__(self, pages: dict[Path, str], **options):
        super().__init__(**options)
        self.pages = pages

    def block_math(self, body: str) -> str:
        return self._mathml(body, "block")

    def inline_math(self, body: str) -> str:
        return self._mathml(body, "inline")

    def latex_environment(self, name: str, body: str) -> str:
        return self._mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")

    @staticmethod
    def _mathml(tex: str, display: str) -> str:
        try:
            return convert(tex, display=display)
        except Exception as error:  # latex2mathml's errors name the problem by their class only
            raise SiteError(f"the formula {tex!r} cannot be written as MathML ({type(error).__name__}): fix its "
                            "TeX") from None

    def link(self, text: str, url: str, title: str | None = None) -> str:
        address = urlsplit(url)
        if address.scheme or address.netloc or not address.path:  # a web address, or an anchor on this page
            return super().link(text, url, title)
        page = self.pages.get((Path(self.path) / address.path).resolve())
        if page is None:  # a file outside the site
            return text
        return super().link(text, page + (f"#{address.fragment}" if address.fragment else ""), title)


class SiteExporter(HTMLExporter):
    """nbconvert's HTML exporter with :data:`TEMPLATE` and :class:`SiteRenderer` for Markdown."""

    def __init__(self, pages: dict[Path, str]):
        super().__init__(template_name="lab", template_file="site.html.j2",
                         extra_loaders=[DictLoader({"site.html.j2": TEMPLATE})], embed_images=True)
        self.pages = pages

    @pass_context
    def markdown2html(self, context, source):
        cell = context.get("cell", {})
        path = context.get("resources", {}).get("metadata", {}).get("path", "")
        renderer = SiteRenderer(self.pages, escape=False, attachments=cell.get("attachments", {}), embed_images=True,
                                path=path, anchor_link_text=self.anchor_link_text)
        return MarkdownWithMath(renderer=renderer).render(source)


def _navigation(pages: list[Page], at: int) -> str:
    """The links of page ``at`` to the index and to the pages before and after it."""
    links = [("the course", pages[0].name)]
    if at > 0:
        links.append((f"previous: {pages[at - 1].title}", pages[at - 1].name))
    if at + 1 < len(pages):
        links.append((f"next: {pages[at + 1].title}", pages[at + 1].name))
    items = "".join(f'<a href="{name}">{html.escape(text)}</a>' for text, name in links)
    return f'<nav class="site-nav" aria-label="course pages">{items}</nav>'


def write_pages(pages: list[Page], notebook_dir: Path, out_dir: Path) -> None:
    """Export each page into ``out_dir``; relative links resolve against each source's folder (the index's:
    ``notebook_dir``)."""
    exporter = SiteExporter({page.source: page.name for page in pages if page.source is not None})
    for at, page in enumerate(pages):
        folder = page.source.parent if page.source is not None else notebook_dir.resolve()
        notebook = static_outputs(page.notebook, page.title)
        notebook.metadata["title"] = _plain(page.title)
        resources = {"metadata": {"name": Path(page.name).stem, "path": str(folder)},
                     "site_navigation": _navigation(pages, at)}
        try:
            body, _ = exporter.from_notebook_node(notebook, resources=resources)
        except SiteError as error:
            raise SiteError(f"{page.source or 'the index'}: {error}") from None
        (out_dir / page.name).write_text(body, encoding="utf-8")


def build_site(notebook_dir: Path, docs_dir: Path, out_dir: Path) -> list[Path]:
    """Build the site into ``out_dir`` (replaced as a whole once every page is written); the pages' paths."""
    pages = site_pages(notebook_dir, docs_dir)
    write_directory_atomically(out_dir, lambda folder: write_pages(pages, notebook_dir, folder))
    return [out_dir / page.name for page in pages]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"), help="the executed notebooks")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help=f"the folder of {', '.join(SITE_DOCS)}")
    parser.add_argument("--out", type=Path, default=Path("build/site"))
    args = parser.parse_args(argv)
    try:
        paths = build_site(args.notebooks, args.docs, args.out)
    except SiteError as error:
        parser.error(str(error))
    print(f"course site: {len(paths)} pages in {args.out}/; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
