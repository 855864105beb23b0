"""Reference implementations that cannot be installed in CI, copied from their authors' code.

Each module names its source file and version; the code is theirs, changed only where a comment says.
"""
