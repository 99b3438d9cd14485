"""dftflow: high-throughput DFT workflows and charge-density datasets."""

__version__ = "0.1.0"
