"""The benchmark suite (``make bench``), apart from the pipelines it measures: :mod:`benchmarks.bench`
(command line), :mod:`benchmarks.measure` (sections, raw JSON) and :mod:`benchmarks.render` (plots,
Markdown report). Stand-alone benchmark scripts live beside them.
"""
