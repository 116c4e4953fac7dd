"""Export of the chunk step: graphs with declared I/O (``graphs``), and the artifacts built from them.

Imports point down to ``arvid.runtime`` only. Engines built here register themselves as chunk
executors in the runtime (``arvid.runtime.register_executor``) when their module is imported.
"""
