"""Optional packages: imported only when a feature needs them, with a one-line install hint.

    require("gguf", "exporting to GGUF")     the module, or a MissingPackageError saying how to install it
"""

import importlib

# How pip installs each optional package (the extra of nanollm that brings it, where there is one).
INSTALL = {"safetensors": 'pip install safetensors (or nanollm\'s "hf" extra)',
           "gguf": 'pip install gguf (or nanollm\'s "gguf" extra)',
           "tensorboardX": 'pip install tensorboardX (or nanollm\'s "tensorboard" extra)',
           "wandb": 'pip install wandb (or nanollm\'s "wandb" extra)'}


class MissingPackageError(ImportError, ValueError):
    """An optional package is not installed. An ImportError, and a ValueError too, so that callers
    that print ValueErrors as one line (the CLI) show the install command, not a traceback."""


def require(module, verb):
    """The imported ``module`` (e.g. "safetensors.numpy"), or a one-line MissingPackageError
    saying that ``verb`` needs it and how to install it."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"{verb} needs the {package} package: "
                                  f"{INSTALL.get(package, f'pip install {package}')}") from None
