from phinetune.config.load import dump_config, load_config, validate_config
from phinetune.config.schema import RunConfig

__all__ = ["RunConfig", "load_config", "validate_config", "dump_config"]
