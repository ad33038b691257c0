"""The exceptions that mean "the user asked for something that can't be done".

The entry points catch these and print ``error: <message>`` on one line, with no
traceback: the message names the bad value and what is allowed instead.
"""


class CnnlabError(Exception):
    """A user-facing error; its message is the whole story."""


class ConfigError(CnnlabError):
    """A config value is out of range or not one of the allowed choices."""


class DataError(CnnlabError):
    """A dataset cannot be found, read or downloaded."""


class ModelError(CnnlabError):
    """A model name is unknown, or weights don't fit the model."""


class CheckpointError(CnnlabError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another model."""


class DeviceError(CnnlabError):
    """The requested device is not available."""
