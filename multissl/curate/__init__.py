"""Curation with a pretrained encoder: embed a dataset (``embed``), index and search it by example
(``index``, ``search``), choose what to label next (``select``), label it in the browser (``server``), and
look at its shape (``atlas``). Nothing here knows which modality it serves: the modality folders say how
to read, embed and show an item. Importing this package loads nothing heavy."""
