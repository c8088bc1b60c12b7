"""Embed a collection, index it, search it and serve it: ``clipforge embed`` → ``index`` → ``search`` → ``serve``.

- ``collection``: the on-disk layout (clip-retrieval's, plus a manifest and part markers) and its reader.
- ``embed``: embedding any data source into a collection, resumable and torchrun-parallel.
- ``index``: faiss indices (exact, IVF, HNSW, IVF-PQ; ``auto`` chooses), memory-mapped at load.
- ``searcher``: text / image / vector queries against a collection and its index.
- ``server`` and ``static/``: the HTTP service and its web page.

Optional stacks load lazily: pyarrow and faiss (``pip install 'clipforge[search]'``), FastAPI and uvicorn
(``pip install 'clipforge[server]'``).
"""
