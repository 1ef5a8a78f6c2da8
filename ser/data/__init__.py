"""Layer 1, data: corpora on disk -> one manifest schema -> speaker-independent splits.

corpora/<name>.py (one file per corpus: adapter, label map, download source, complete-copy
check, demo plan), manifest (the schema), splits (protocols), metadata (the build-metadata
stage), synth (the demo voices and channels), demo (writes a corpus's demo plan), download
(fetch and verify). Imports only the floor (ser.config, ser.errors, ser.fsutil).
"""
