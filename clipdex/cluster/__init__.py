"""Indexing on a Ray cluster: ``clipdex index SOURCE --engine ray``.

The driver (this machine, where the index lives) lists SOURCE and diffs it
against the index as local indexing does; a Ray Data pipeline reads, decodes
and preprocesses the files to encode in CPU tasks, encodes them in an actor
pool (one model load per actor) and writes clip-retrieval shards
(:mod:`clipdex.cluster.shards`) to an output folder; the driver adopts the
shards through :func:`clipdex.interchange.import_embeddings`, as ``clipdex
import`` does. Ray is an extra (``pip install 'clipdex[ray]'``): nothing here
imports it until a run starts.
"""
