"""The last stage, ``llmc package``: phone app bundles and the web page bundle.

``spec`` (CONFIG parsing), ``bundle`` (compile or reuse each model, write the folder), ``staticlib``
(one static archive of the models' objects), ``objfile`` (ELF / Mach-O symbol reading), ``app`` (app
projects rendered from the templates) and ``web`` (the browser bundle of a webgpu artifact).
"""
