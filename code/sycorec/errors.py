"""Errors that the CLI turns into one clear line and a non-zero exit."""


class SycorecError(Exception):
    """A user-facing failure: bad config, malformed data, missing input or hardware."""


class ConfigError(SycorecError):
    pass


class DataError(SycorecError):
    pass


class MissingInputError(SycorecError):
    pass


class HardwareError(SycorecError):
    """The profile needs hardware this machine does not have."""


class DiskFullError(SycorecError):
    """A write hit a full disk or quota; what was being written is named and nothing half-written is left."""
