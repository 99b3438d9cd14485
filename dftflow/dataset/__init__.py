"""The HDF5 charge-density dataset: sharded files, a manifest, and readers."""
