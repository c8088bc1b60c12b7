"""Data sources: configs (``config``), one builder (``build_source``, ``check_source``, ``source_config``), the
readers (``tables``, ``folders``, ``shards``, ``synthetic``), decoding and bad-sample accounting (``decode``), and
the shard writer (``writer``)."""

from clipforge.data.sources import build_source, check_source, source_config, source_kind

__all__ = ["build_source", "check_source", "source_config", "source_kind"]
