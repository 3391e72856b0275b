"""Bisection: the first bad kernel between a good and a bad one, over Debian packages or a git tree.

Pure: ``signature`` (what a failure is), ``steps`` (a step's runs, decided), ``search``
(the next candidate of an ordered list), ``debian`` (the candidates between two
packages), ``record`` (the whole bisect as data, text and JSON), ``html``. Edges:
``gittree`` (a clone of the user's repository, driven by ``git bisect``), ``runner``
(a step's runs, each ``patchscope run`` in a process group of its own), ``commands``.
"""
