class ModelFileError(ValueError):
    """A model file that cannot be used: names the file, what it looks like, what was expected."""
