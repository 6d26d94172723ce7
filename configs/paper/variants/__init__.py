"""Our own choices next to the paper rows (configs/paper/*.py build the authors' models).

Each variant changes one thing of its row on purpose and keeps the row's `paper_row`, so
its results print next to the same published numbers; docs/results.md says why.
"""
