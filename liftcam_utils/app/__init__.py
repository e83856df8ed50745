"""The application layer: what a reader touches. The explorer's step logic (:mod:`.explore`: pure functions,
testable without a browser), its ipywidgets front ends (:mod:`.widgets`), the checks on uploaded images
(:mod:`.uploads`), and the headless workbook runner (:mod:`.workbook`, ``python -m liftcam_utils.app.workbook``)
that executes the notebooks with papermill and builds ``results/REPORT.md``; the course edition of notebooks 00
and 01 (:mod:`.course`, ``python -m liftcam_utils.app.course``: the student edition and grading, with otter-grader)
and the checks of its exercises (:mod:`.exercises`); the course site (:mod:`.site`, ``python -m
liftcam_utils.app.site``: the executed notebooks and course documents as offline HTML). Nothing below imports it.
"""
