"""Layer 1, data: corpora on disk -> one manifest schema -> speaker-independent splits.

corpora/<name>.py (one file per corpus), manifest (the schema), labels (label maps as
data), splits (protocols), metadata (the build-metadata stage), demo (synthetic corpora),
download (fetch and verify). Imports only the floor (ser.config, ser.errors, ser.fsutil).
"""
