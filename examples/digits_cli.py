"""The digits example through LightningCLI, configured by YAML:

    python examples/digits_cli.py fit --config examples/digits.yaml
"""

from digits import DigitsCNN, DigitsDataModule
from lightning.pytorch.cli import LightningCLI

if __name__ == "__main__":
    LightningCLI(DigitsCNN, DigitsDataModule)
