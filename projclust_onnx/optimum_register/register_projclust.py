"""Registers `optimum-cli projclust ...`; optimum-cli imports this at every start, so it stays light."""

from projclust_onnx.cli.optimum import ProjClustCommand

REGISTER_COMMANDS = [ProjClustCommand]
