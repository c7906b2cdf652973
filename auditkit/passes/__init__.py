"""The engine's requests beyond plain scoring, one module per kind of pass.

Each module holds a mixin of :class:`auditkit.models.ModelHandle`: its methods build on the handle's
one batch loop (:meth:`~auditkit.models.ModelHandle.map_batches`), so they are split across processes,
counted, cached (:meth:`~auditkit.models.ModelHandle.memo`) and bounded in memory by the batch.
Checks call these methods and never run the model themselves.
"""
